"""Device and context setup."""
import subprocess
import sys

import pytest

from src.errors import UserError
from src.model_utils.config import ROOT_DIR, get_config
from src.model_utils.device import setup_device, target_available


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT_DIR, capture_output=True, text=True, timeout=300)


def test_cpu_setup_sets_mode_device_threads_and_seed():
    # a fresh process, as in an entry script: the device can only be chosen before any kernel runs
    proc = run_python(
        "import mindspore as ms, numpy as np\n"
        "from src.model_utils.config import get_config\n"
        "from src.model_utils.device import setup_device\n"
        "setup_device(get_config(['--device_target', 'CPU', '--mode', 'pynative', '--seed', '7',"
        " '--runtime_num_threads', '1']))\n"
        "print(ms.get_context('mode') == ms.PYNATIVE_MODE, ms.get_current_device().device_target,"
        " ms.get_seed(), ms.dataset.config.get_seed(), np.random.get_state()[1][0])\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "CPU", "7", "7", "7"]


@pytest.mark.skipif(target_available("GPU"), reason="this machine has a GPU")
def test_unavailable_target_is_one_line_error():
    with pytest.raises(UserError) as err:
        setup_device(get_config(["--device_target", "GPU"]))
    message = str(err.value)
    assert message == ("device_target GPU is not available on this machine (no GPU device or driver found); "
                       "use --device_target CPU")


@pytest.mark.skipif(target_available("Ascend"), reason="this machine has an Ascend NPU")
def test_unavailable_target_prints_nothing_else():
    code = ("from src.model_utils.config import get_config\n"
            "from src.model_utils.device import setup_device\n"
            "setup_device(get_config(['--device_target', 'Ascend']))\n")
    proc = run_python(code)
    assert proc.returncode != 0
    assert "device_target Ascend is not available" in proc.stderr
    assert "libge_runner" not in proc.stderr  # MindSpore's plugin-loading warnings are kept out


@pytest.mark.skipif(target_available("GPU"), reason="this machine has a GPU")
def test_target_of_a_config_file_falls_back_to_cpu_with_a_warning():
    """mobilenetv3_config.yaml asks for GPU: on a machine without one the run goes on on CPU and says so (the saved
    config then says CPU); asked for on the command line, the missing GPU stays an error (above)."""
    proc = run_python(
        "import mindspore as ms\n"
        "from src.model_utils.config import get_config\n"
        "from src.model_utils.device import setup_device\n"
        "config = get_config([], config_path='mobilenetv3_config.yaml')\n"
        "setup_device(config)\n"
        "print(config.device_target, ms.get_current_device().device_target)\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["CPU", "CPU"]
    assert ("WARNING: device_target GPU (mobilenetv3_config.yaml) is not available on this machine (no GPU device or "
            "driver found): running on CPU") in proc.stderr
