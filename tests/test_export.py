"""export.py writes MINDIR and ONNX for every model family; reloaded outputs match the checkpoint's network."""
import os
import re
import subprocess
import sys

import mindspore as ms
import pytest

from src.model_utils.config import ROOT_DIR
from src.models import create_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name,width", [("mobilenet_v1", 0.25), ("mobilenet_v3_small", 1.0),
                                        ("mobilenet_v3_large", 0.75)])
@pytest.mark.parametrize("file_format", ["MINDIR", "ONNX"])
def test_export_and_reload(tmp_path, name, width, file_format):
    checkpoint = str(tmp_path / "weights.ckpt")
    ms.save_checkpoint(create_model(name, class_num=10, width_mult=width), checkpoint)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT_DIR, "export.py"), "--config_path", os.path.join(ROOT_DIR, "demo_config.yaml"),
         "--model", name, "--width_mult", str(width), "--ckpt_file", checkpoint, "--file_format", file_format,
         "--file_name", str(tmp_path / "net"), "--batch_size", "2", "--height", "64", "--width", "48"],
        cwd=ROOT_DIR, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.getsize(tmp_path / f"net.{file_format.lower()}") > 100_000
    assert "input 2x3x64x48" in proc.stdout
    difference = re.search(r"max abs difference from the checkpoint's network ([\d.e+-]+)", proc.stdout)
    assert difference and float(difference.group(1)) < 1e-4
