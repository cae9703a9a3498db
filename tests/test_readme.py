"""Every command of README.md's fenced blocks is a promise: each is listed here, either run as written (in a folder
that mirrors the repository, the data paths holding small data sets, a few short arguments appended) or with the
reason it cannot run on this machine.  The fast test fails when the README gains or changes a command this list does
not have; the slow one runs the runnable ones in the README's order (later ones use the files earlier ones write) and
checks the sample output the README shows under them."""
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import pytest
from PIL import Image

from src.demo_data import digit_images, split_indices
from src.model_utils.config import ROOT_DIR
from tests.test_convert import write_source_file
from tests.test_distributed import write_cifar10

COMMAND_START = re.compile(r"^([A-Z_]+=\S+ )*(python|bash|git) ")
TRAIN_IMAGES, TEST_IMAGES = 64, 32
# a short run: one epoch without warm-up (the configs warm up for 4-5 epochs)
SHORT = "--epoch_size 1 --warmup_epochs 0"
CHECKPOINT = f"mobilenet_v1-1_{TRAIN_IMAGES // 32}.ckpt"  # one epoch of default_config.yaml's batches of 32


@dataclass
class Run:
    """Run the command as written, `extra` appended; `sample`: how many comment lines under it in the README show its
    output (their text between '...' must be in it); `prepare(folder)` first."""
    extra: str = ""
    sample: int = 0
    prepare: Optional[Callable] = None


def copy_newest_checkpoint(source: str, target: str) -> Callable:
    def prepare(folder):
        ckpts = sorted((os.path.join(folder, source, "ckpt_0", name) for name in
                        os.listdir(os.path.join(folder, source, "ckpt_0")) if name.endswith(".ckpt")),
                       key=os.path.getmtime)
        shutil.copy(ckpts[-1], os.path.join(folder, target))
    return prepare


def link_runs(folder):
    os.symlink("OUT", os.path.join(folder, "OUT_A"))
    os.symlink("output", os.path.join(folder, "OUT_B"))


NOT_HERE = "needs a GPU or an Ascend device"
TWO_MACHINES = "needs two machines"
BENCHMARK = ("minutes of measurement on four models (the benchmark's options and output are tested on a small model in "
             "tests/test_benchmark.py)")
COMMANDS = {
    # Quick start
    "bash scripts/run_demo.sh": "the main job (about 2 minutes; writes demo_data/ and demo_run/ into the repository): "
                                "its train, eval, export and predict steps are the commands run below",
    "bash scripts/setup_env.sh && .venv/bin/python -m pytest -q tests": "this test suite itself (CI runs it: .ci/run)",
    # Training, evaluation, export
    "python train.py --config_path default_config.yaml --dataset_path /data/cifar10/cifar-10-batches-bin "
    "--device_target CPU": Run(f"{SHORT} --save_checkpoint_path OUT"),
    "python train.py --config_path default_config_imagenet.yaml --dataset_path /data/ImageNet_Original "
    "--device_target Ascend": NOT_HERE,
    "python train.py --config_path default_config_gpu_imagenet.yaml --dataset_path /data/ImageNet_Original "
    "--device_target GPU": NOT_HERE,
    # the config's GPU falls back to CPU with a warning; its output goes to the config's ./output
    "python train.py --config_path mobilenetv3_config.yaml --dataset_path /data/ImageNet_Original "
    "--model mobilenet_v3_large": Run(f"{SHORT} --batch_size 250 --image_size 64"),
    "python train.py --config_path default_config.yaml --dataset_path DATA --pre_trained imagenet.ckpt":
        Run(f"{SHORT} --image_size 64 --save_checkpoint_path OUT_FINE_TUNED",
            prepare=copy_newest_checkpoint("output", "imagenet.ckpt")),
    # OUT's run is finished: the resume says so and stops
    "python train.py --config_path ... --dataset_path DATA --save_checkpoint_path OUT --resume auto": Run(SHORT),
    "python eval.py --config_path default_config.yaml --dataset_path /data/cifar10/cifar-10-verify-bin "
    "--checkpoint_path OUT/ckpt_0/mobilenet_v1-90_1562.ckpt --device_target CPU": Run(sample=1),
    "python eval.py --config_path default_config.yaml --dataset_path DATA --checkpoint_path CKPT "
    "--result_file result.json --confusion_matrix confusion.png": Run(),
    "python export.py --config_path default_config.yaml --ckpt_file OUT --file_name mobilenet_v1 --file_format MINDIR":
        Run(),
    "python export.py --config_path default_config.yaml --ckpt_file OUT --file_name mobilenet_v1_int8 "
    "--file_format ONNX --quantize int8 --dataset_path DATA": Run(),
    "python eval.py --config_path default_config.yaml --dataset_path DATA --model_file mobilenet_v1_int8.onnx": Run(),
    "bash scripts/run_infer.sh mobilenet_v1.mindir DATA": Run(),
    "python predict.py --config_path default_config.yaml --checkpoint_path CKPT --image photos/ --top_k 3": Run(),
    "python predict.py --config_path default_config.yaml --model_file mobilenet_v1.mindir --image photos/ "
    "--result_file out.csv": Run(),
    "python plot_metrics.py OUT_A OUT_B --output compare.png": Run(prepare=link_runs),
    # Start from ImageNet weights
    "python convert_weights.py --input mobilenetv3_large_100/model.safetensors --output mobilenet_v3_large_timm.ckpt":
        Run(sample=2),
    "python convert_weights.py --input mobilenet_v1_100-91c7b206.ckpt --output mobilenet_v1_mindcv.ckpt "
    "--class_num 1000": Run(sample=1),
    "python eval.py --config_path mobilenetv3_config.yaml --dataset_path /data/ImageNet_Original "
    "--checkpoint_path mobilenet_v3_large_timm.ckpt --batch_size 100": Run(),
    "python predict.py --config_path mobilenetv3_config.yaml --checkpoint_path mobilenet_v3_large_timm.ckpt "
    "--image photos/": Run(),
    "python train.py --config_path mobilenetv3_config.yaml --dataset_path /data/flowers --class_num 5 "
    "--pre_trained mobilenet_v3_large_timm.ckpt --epoch_size 30 --lr_max 0.01":
        Run(f"{SHORT} --batch_size 20 --image_size 64 --save_checkpoint_path OUT_FLOWERS"),
    "python convert_weights.py --input mobilenet_v1_mindcv.ckpt --output for_mindcv.ckpt --to mindcv": Run(),
    # Launch scripts
    "bash scripts/run_distribute_train_cpu.sh cifar10 /data/cifar10 2 -- --epoch_size 2 --warmup_epochs 0":
        "2 ranks for two epochs: tests/test_distributed.py runs this launcher the same way (2 ranks, cifar10, "
        "arguments after --) on a smaller set and checks its outputs",
    "FOREGROUND=1 CONFIG_PATH=mobilenetv3_config.yaml bash scripts/run_standalone_train_gpu.sh imagenet2012 "
    "/data/ImageNet 0": NOT_HERE,
    "NODE_NUM=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 bash scripts/run_distribute_train_cpu.sh "
    "imagenet2012 /shared/ImageNet 8": TWO_MACHINES + " (tests/test_distributed.py runs two on this one)",
    "NODE_NUM=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 bash scripts/run_distribute_train_cpu.sh "
    "imagenet2012 /shared/ImageNet 8": TWO_MACHINES + " (tests/test_distributed.py runs two on this one)",
    "NODE_NUM=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 DEVICE_NUM=8 "
    "bash scripts/run_distribute_train_gpu.sh imagenet2012 default_config_gpu_imagenet.yaml /shared/ImageNet":
        TWO_MACHINES + " with GPUs",
    "NODE_NUM=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 bash scripts/run_distribute_train_msrun.sh "
    "imagenet2012 /shared/ImageNet": TWO_MACHINES + " with Ascend devices",
    # Speed on CPU, and the benchmark
    "python -m src.benchmark": BENCHMARK,
    "python -m src.benchmark --models mobilenet_v3_small:1.0 --batch_size 64 --image_size 160 --output out/bench.json":
        BENCHMARK,
    "python -m src.benchmark --compare torch --torch_python /path/to/venv-with-torch/bin/python":
        BENCHMARK + "; and a virtual environment with PyTorch",
    "git worktree add ../before HEAD~3 && python -m src.benchmark --baseline ../before --rounds 2":
        BENCHMARK + ", twice",
}


def readme_commands() -> list:
    """[(command, comment lines right under it)] for every command of README.md's fenced blocks: continuation lines
    joined, a trailing comment dropped."""
    with open(os.path.join(ROOT_DIR, "README.md"), encoding="utf-8") as src:
        blocks = re.findall(r"^```\w*\n(.*?)^```", src.read(), re.DOTALL | re.MULTILINE)
    commands = []
    for block in blocks:
        lines, pending = [], ""
        for line in block.splitlines():
            if pending or not line.startswith("#"):
                line = pending + line.strip()
                pending = line[:-1] if line.endswith("\\") else ""
                if pending:
                    continue
            lines.append(line)
        for number, line in enumerate(lines):
            if COMMAND_START.match(line):
                comments = []
                for after in lines[number + 1:]:
                    if not after.startswith("# "):
                        break
                    comments.append(after[2:])
                commands.append((re.sub(r"\s+#\s.*$", "", line).strip(), comments))
    return commands


def test_every_readme_command_is_run_here_or_says_why_not():
    written = [command for command, _ in readme_commands()]
    assert len(written) == len(set(written)) and len(written) >= 30
    missing, stale = [c for c in written if c not in COMMANDS], [c for c in COMMANDS if c not in written]
    assert not missing and not stale, f"README commands without an entry: {missing}; entries for no command: {stale}"


def write_images(folder, images, labels, names):
    for index, (image, label) in enumerate(zip(images, labels)):
        os.makedirs(os.path.join(folder, names[label]), exist_ok=True)
        Image.fromarray(image, "RGB").save(os.path.join(folder, names[label], f"{index:05d}.jpg"), "JPEG")


def mirror_with_data(folder):
    """`folder`: the repository's files as links, the README's data paths (data/... for /data/..., DATA) and its
    inputs (photos/, the downloaded weights: the test fixtures' networks with ImageNet's 1000 outputs, mindcv's 1001)
    with small data sets."""
    for name in os.listdir(ROOT_DIR):
        if name not in (".git", "output", "demo_data", "demo_run"):
            os.symlink(os.path.join(ROOT_DIR, name), os.path.join(folder, name))
    images, labels = digit_images()
    train, test = split_indices(labels)
    train, test = train[:TRAIN_IMAGES], test[:TEST_IMAGES]
    data = os.path.join(folder, "data")
    cifar = write_cifar10(os.path.join(data, "cifar10", "cifar-10-batches-bin"), images[train], labels[train],
                          images[test], labels[test])
    os.symlink(cifar, os.path.join(data, "cifar10", "cifar-10-verify-bin"))
    os.symlink(cifar, os.path.join(folder, "DATA"))
    # ImageNet: 1000 class folders, one image each in train/ and val/
    rng = np.random.default_rng(0)
    names = [f"n{number:08d}" for number in range(1000)]
    for split in ("train", "val"):
        picks = rng.choice(len(labels), 1000)
        write_images(os.path.join(data, "ImageNet_Original", split), images[picks], np.arange(1000), names)
    five = np.flatnonzero(labels < 5)[:100]
    write_images(os.path.join(data, "flowers"), images[five], labels[five], [f"flower_{d}" for d in range(5)])
    write_images(os.path.join(folder, "photos"), images[test[:3]], [0, 1, 2], ["", "", ""])
    timm = write_source_file("timm_mobilenetv3_large_100", folder, classes=1000)
    os.rename(os.path.dirname(timm), os.path.join(folder, "mobilenetv3_large_100"))
    os.rename(write_source_file("mindcv_mobilenet_v1_100", folder, classes=1001),
              os.path.join(folder, "mobilenet_v1_100-91c7b206.ckpt"))


def as_run_here(command: str) -> str:
    """The command with the README's placeholders for files this test has: /data/ -> data/, CKPT -> OUT's first
    epoch, the configuration of `--config_path ...` -> default_config.yaml, the 90-epoch checkpoint's name -> the
    one-epoch one."""
    return (command.replace("/data/", "data/").replace("--config_path ...", "--config_path default_config.yaml")
            .replace("mobilenet_v1-90_1562.ckpt", CHECKPOINT).replace(" CKPT ", f" OUT/ckpt_0/{CHECKPOINT} "))


def shown_output_missing(comments, output: str) -> list:
    """The parts (between '...') of the README's sample output lines not in `output` (spaces normalised)."""
    flat = " ".join(output.split())
    parts = [part.strip() for line in comments for part in as_run_here(line).split("...")]
    return [part for part in parts if part and " ".join(part.split()) not in flat]


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path):
    mirror_with_data(str(tmp_path))
    ran = []
    for command, comments in readme_commands():
        how = COMMANDS[command]
        if not isinstance(how, Run):
            continue
        if how.prepare:
            how.prepare(str(tmp_path))
        words = shlex.split(as_run_here(command)) + shlex.split(how.extra)
        variables = {}
        while "=" in words[0]:
            key, value = words.pop(0).split("=", 1)
            variables[key] = value
        if words[0] == "python":
            words[0] = sys.executable
        start = time.time()
        proc = subprocess.run(words, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**os.environ, **variables})
        print(f"{time.time() - start:5.1f} s  {command}")
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        missing = shown_output_missing(comments[:how.sample], proc.stdout + proc.stderr)
        assert not missing, f"{command}: the README's sample output {missing} is not in its output:\n{proc.stdout}"
        ran.append(command)
    assert len(ran) == sum(isinstance(how, Run) for how in COMMANDS.values())
    assert (tmp_path / "acc.log").read_text().startswith("'top1 acc': ")
    assert {"mobilenet_v1.mindir", "mobilenet_v1_int8.onnx", "compare.png", "out.csv", "result.json",
            "confusion.png", "mobilenet_v3_large_timm.ckpt", "for_mindcv.ckpt"} <= set(os.listdir(tmp_path))
