"""Reliability: every user mistake is one line and exit 2; kills, stops and divergence lose nothing."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
import pytest

from src.demo_data import cifar10_records
from src.model_utils.config import ROOT_DIR
from src.models import create_model

DEMO = os.path.join(ROOT_DIR, "demo_config.yaml")
TINY = ["--config_path", DEMO, "--width_mult", "0.25", "--num_parallel_workers", "2", "--log_interval", "1",
        "--warmup_epochs", "0"]


def command(script, *args):
    return [sys.executable, os.path.join(ROOT_DIR, script), *map(str, args)]


def run_script(script, *args, cwd=ROOT_DIR, timeout=600):
    return subprocess.run(command(script, *args), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def assert_user_error(proc, message):
    """Exit 2, no traceback, and the last stderr line is `ERROR: ...` containing `message` (a regex)."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: ") and re.search(message, last), last


@pytest.fixture(scope="module")
def checkpoint_v1(tmp_path_factory):
    """Weights of an untrained MobileNetV1-0.25 with 10 classes."""
    path = str(tmp_path_factory.mktemp("ckpt") / "v1_10.ckpt")
    ms.save_checkpoint(create_model("mobilenet_v1", class_num=10, width_mult=0.25), path)
    return path


@pytest.fixture()
def jpeg_tree(tmp_path):
    """An ImageNet-style folder: 2 classes of 8 real JPEGs each in train/ and val/."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(8):
                Image.new("RGB", (40, 40), (30 * i, 100 if label == "a" else 200, 50)).save(folder / f"{i}.jpg")
    return root


IMAGENET = ["--dataset", "imagenet2012", "--class_num", 2, "--batch_size", 4, "--epoch_size", 1]


# ---- the bad-input matrix: one case per row, each must print one line and exit 2 ----

def test_missing_dataset_path(tmp_path):
    proc = run_script("train.py", *TINY, "--dataset_path", tmp_path / "nowhere", "--save_checkpoint_path", tmp_path)
    assert_user_error(proc, f"dataset_path '{tmp_path / 'nowhere'}' does not exist")


def test_wrong_layout_dataset_path(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "readme.txt").write_text("not a data set")
    proc = run_script("train.py", *TINY, "--dataset_path", tmp_path / "data", "--save_checkpoint_path", tmp_path)
    assert_user_error(proc, f"dataset_path '{tmp_path / 'data'}' holds no CIFAR-10 binary training files")


def test_truncated_cifar_file(demo_data, tmp_path):
    data = tmp_path / "cifar"
    shutil.copytree(demo_data["cifar10"], data)
    (data / "data_batch_3.bin").write_bytes((data / "data_batch_3.bin").read_bytes()[:-100])
    proc = run_script("train.py", *TINY, "--dataset_path", data, "--save_checkpoint_path", tmp_path / "out")
    assert_user_error(proc, f"{data / 'data_batch_3.bin'}: \\d+ bytes is not a whole number of 3073-byte")


def test_undecodable_jpeg(jpeg_tree, tmp_path):
    (jpeg_tree / "train" / "b" / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    proc = run_script("train.py", *TINY, *IMAGENET, "--dataset_path", jpeg_tree, "--image_size", 32,
                      "--save_checkpoint_path", tmp_path / "out", cwd=tmp_path)
    assert_user_error(proc, f"{jpeg_tree / 'train' / 'b' / '3.jpg'}: cannot decode this image")


def test_empty_class_folder(jpeg_tree, tmp_path):
    for image in (jpeg_tree / "train" / "a").iterdir():
        image.unlink()
    proc = run_script("train.py", *TINY, *IMAGENET, "--dataset_path", jpeg_tree, "--image_size", 32,
                      "--save_checkpoint_path", tmp_path / "out")
    assert_user_error(proc, f"{jpeg_tree / 'train' / 'a'}: no images")


@pytest.mark.parametrize("args,message", [
    (["--learning_rate", "0.1"], "command line: unknown key 'learning_rate'"),
    (["--batch_size", "thirty-two"], "key 'batch_size' expects int, got 'thirty-two'"),
    (["--batch_size", "0"], "key 'batch_size' must be >= 1; got 0"),
    (["--lr_max", "-0.5"], "key 'lr_max' must be >= 0; got -0.5"),
    (["--width_mult", "0"], "key 'width_mult' must be > 0; got 0.0"),
    (["--epoch_size", "0"], "key 'epoch_size' must be >= 1; got 0"),
    (["--epoch_size", "2", "--warmup_epochs", "3"], r"warmup_epochs \(3\) is longer than training \(epoch_size 2\)"),
    (["--sink_size", "0"], r"key 'sink_size' must be -1 \(sized for stop_seconds\) or a number of steps >= 1; got 0"),
    (["--sync_bn", "True", "--device_target", "GPU", "--run_distribute", "True"],
     r"key 'sync_bn' needs device_target Ascend and run_distribute true .*; got device_target GPU, run_distribute True"),
], ids=["unknown-key", "wrong-type", "batch-0", "negative-lr", "width-0", "epochs-0", "warmup-too-long", "sink-size-0",
        "sync-bn-off-ascend"])
def test_config_mistakes(args, message):
    assert_user_error(run_script("train.py", "--config_path", DEMO, *args), message)


def test_unknown_yaml_key(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("model: mobilenet_v1\nlearning_rate: 0.1\n")
    assert_user_error(run_script("train.py", "--config_path", config), f"{config}: unknown key 'learning_rate'")


def test_missing_checkpoint(demo_data, tmp_path):
    proc = run_script("eval.py", *TINY, "--dataset_path", demo_data["cifar10"], "--checkpoint_path", tmp_path / "x.ckpt")
    assert_user_error(proc, f"checkpoint_path not found: {tmp_path / 'x.ckpt'}")


def test_checkpoint_of_another_architecture(demo_data, checkpoint_v1):
    proc = run_script("eval.py", *TINY, "--model", "mobilenet_v3_small", "--width_mult", "1.0",
                      "--dataset_path", demo_data["cifar10"], "--checkpoint_path", checkpoint_v1)
    assert_user_error(proc, f"checkpoint_path {checkpoint_v1} does not fit this network .* another --model or "
                            f"--width_mult")


def test_class_count_mismatch_in_eval(demo_data, checkpoint_v1):
    proc = run_script("eval.py", *TINY, "--class_num", 5, "--dataset_path", demo_data["cifar10"],
                      "--checkpoint_path", checkpoint_v1)
    assert_user_error(proc, f"checkpoint_path {checkpoint_v1} has 10 classes but class_num is 5")


def test_output_directory_not_writable(demo_data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run_script("train.py", *TINY, "--dataset_path", demo_data["cifar10"],
                      "--save_checkpoint_path", blocker / "out")
    assert_user_error(proc, f"save_checkpoint_path '{blocker / 'out'}' is not writable")


def test_export_unknown_format(checkpoint_v1, tmp_path):
    proc = run_script("export.py", *TINY, "--ckpt_file", checkpoint_v1, "--file_format", "PNG",
                      "--file_name", tmp_path / "m")
    assert_user_error(proc, "key 'file_format' must be one of MINDIR, AIR, ONNX; got 'PNG'")


def test_air_export_needs_ascend_target(checkpoint_v1, tmp_path):
    """AIR is compiled by Ascend's graph engine (`_save_air`, mindspore/train/serialization.py): the device target
    must be Ascend, not only an installed Ascend plugin."""
    proc = run_script("export.py", *TINY, "--ckpt_file", checkpoint_v1, "--file_format", "AIR",
                      "--file_name", tmp_path / "m")
    assert_user_error(proc, r"file_format AIR needs --device_target Ascend \(got CPU\)")
    assert not os.path.exists(tmp_path / "m.air")


def test_air_export_needs_ascend_device(checkpoint_v1, tmp_path):
    proc = run_script("export.py", *TINY, "--ckpt_file", checkpoint_v1, "--file_format", "AIR",
                      "--device_target", "Ascend", "--file_name", tmp_path / "m")
    assert_user_error(proc, r"file_format AIR needs an Ascend device \(none here\)")


# ---- interrupted runs ----

def final_weights(out_dir, epochs, steps):
    path = os.path.join(out_dir, "ckpt_0", f"mobilenet_v3_small-{epochs}_{steps}.ckpt")
    return {name: p.asnumpy() for name, p in ms.load_checkpoint(path).items()}


def assert_same_weights(a, b):
    """Every entry (weights, BN statistics, moments, EMA, step, LR, dropout counters) equal bit for bit."""
    assert a.keys() == b.keys()
    assert [k for k in a if not np.array_equal(a[k], b[k])] == []


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, demo_data):
    """The first 320 training digits (10 steps of 32) and the test split, as CIFAR-10 files."""
    root = tmp_path_factory.mktemp("small")
    raw = b"".join(open(os.path.join(demo_data["cifar10"], f"data_batch_{i}.bin"), "rb").read() for i in (1, 2))
    (root / "data_batch_1.bin").write_bytes(raw[:320 * 3073])
    shutil.copy(os.path.join(demo_data["cifar10"], "test_batch.bin"), root)
    return str(root)


V3 = ["--model", "mobilenet_v3_small", "--width_mult", "0.75", "--dropout", "0.2", "--epoch_size", "3",
      "--lr_max", "0.05", "--optimizer", "rmsprop", "--run_eval", "False",
      # every training option on: EMA, RandAugment, random erasing, mixup + CutMix, label smoothing
      "--ema", "True", "--ema_decay", "0.9", "--ema_warmup", "True", "--auto_augment", "randaugment", "--re_prob", "0.5",
      "--mixup_alpha", "0.2", "--cutmix_alpha", "1.0", "--mixup_prob", "0.9", "--label_smooth_factor", "0.1",
      "--wd_depthwise", "False"]


@pytest.fixture(scope="module")
def uninterrupted(small_data, tmp_path_factory):
    """A 3-epoch MobileNetV3-small run (dropout, RMSProp and every augmentation and EMA option on) that nothing
    interrupts."""
    out = str(tmp_path_factory.mktemp("uninterrupted"))
    proc = run_script("train.py", *TINY, *V3, "--dataset_path", small_data, "--save_checkpoint_path", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "log": proc.stdout}


def start_training(out, small_data, log_path, env):
    log = open(log_path, "w", encoding="utf-8")  # pylint: disable=consider-using-with
    return subprocess.Popen(command("train.py", *TINY, *V3, "--dataset_path", small_data,
                                    "--save_checkpoint_path", out), cwd=ROOT_DIR, stdout=log,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})


def loss_lines(log):
    return re.findall(r"^epoch: \d+ step: \d+, loss is [\d.]+", log, re.MULTILINE)


@pytest.mark.slow
def test_same_seed_gives_same_loss_sequence(small_data, uninterrupted, tmp_path):
    proc = run_script("train.py", *TINY, *V3, "--dataset_path", small_data, "--save_checkpoint_path", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(loss_lines(proc.stdout)) == 30
    assert loss_lines(proc.stdout) == loss_lines(uninterrupted["log"])
    assert_same_weights(final_weights(str(tmp_path), 3, 10), final_weights(uninterrupted["out"], 3, 10))


@pytest.mark.slow
def test_kill_9_during_epoch_2_then_resume_matches_uninterrupted(small_data, uninterrupted, tmp_path, hold):
    """SIGKILL while held at epoch 2 step 4: only the epoch-1 checkpoint exists; the resumed run logs the
    uninterrupted run's losses and ends bit-identical to it."""
    out, log_path = str(tmp_path / "out"), str(tmp_path / "train.log")
    held = hold(14)
    proc = start_training(out, small_data, log_path, held.env)
    held.wait(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert os.listdir(os.path.join(out, "ckpt_0")) == ["mobilenet_v3_small-1_10.ckpt"]
    resumed = run_script("train.py", *TINY, *V3, "--dataset_path", small_data, "--save_checkpoint_path", out,
                         "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1 epochs and 0 steps done, global step 10" in resumed.stdout
    assert loss_lines(resumed.stdout) == loss_lines(uninterrupted["log"])[10:]
    assert_same_weights(final_weights(out, 3, 10), final_weights(uninterrupted["out"], 3, 10))
    with open(os.path.join(out, "metrics.csv"), encoding="utf-8") as metrics, \
            open(os.path.join(uninterrupted["out"], "metrics.csv"), encoding="utf-8") as reference:
        ours, theirs = list(metrics)[1:], list(reference)[1:]
    assert [row.split(",")[:4] for row in ours] == [row.split(",")[:4] for row in theirs]  # epoch, step, loss, lr


@pytest.mark.slow
def test_sigterm_saves_at_the_current_step_and_resume_finishes_identically(small_data, uninterrupted, tmp_path, hold):
    """SIGTERM while held at the end of epoch 2 step 3: the run stops at that step (Python runs the handler while
    the stop callback waits), saves it and exits 143; the resumed run starts at step 4 and ends bit-identical to the
    uninterrupted run."""
    out, log_path = str(tmp_path / "out"), str(tmp_path / "train.log")
    held = hold(13)
    proc = start_training(out, small_data, log_path, held.env)
    held.wait(proc)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    print(f"exited {time.time() - sent:.1f} s after SIGTERM")
    log = open(log_path, encoding="utf-8").read()
    checkpoint = os.path.join(out, "ckpt_0", "mobilenet_v3_small-2_3.ckpt")
    assert re.search(rf"^stopped by SIGTERM at epoch 2 step 3 \(at most 1 steps and [\d.]+ s after the signal\): "
                     rf"saved {re.escape(checkpoint)}; resume with the same command plus --resume auto$", log,
                     re.MULTILINE), log[-2000:]
    resumed = run_script("train.py", *TINY, *V3, "--dataset_path", small_data, "--save_checkpoint_path", out,
                         "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed {checkpoint}: 1 epochs and 3 steps done" in resumed.stdout
    assert loss_lines(resumed.stdout) == loss_lines(uninterrupted["log"])[13:]
    assert_same_weights(final_weights(out, 3, 10), final_weights(uninterrupted["out"], 3, 10))


@pytest.mark.slow
def test_resume_auto_skips_truncated_newest_checkpoint(small_data, uninterrupted, tmp_path):
    ckpt_dir = tmp_path / "ckpt_0"
    shutil.copytree(os.path.join(uninterrupted["out"], "ckpt_0"), ckpt_dir)
    newest = ckpt_dir / "mobilenet_v3_small-3_10.ckpt"
    newest.chmod(0o600)
    newest.write_bytes(newest.read_bytes()[:5000])
    os.utime(newest)  # truncated while being written: it is the newest file
    proc = run_script("train.py", *TINY, *V3, "--dataset_path", small_data, "--save_checkpoint_path", tmp_path,
                      "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resume auto: skipping {newest}: checkpoint {newest} cannot be read" in proc.stderr
    assert f"continuing from {ckpt_dir / 'mobilenet_v3_small-2_10.ckpt'}" in proc.stdout
    assert_same_weights(final_weights(str(tmp_path), 3, 10), final_weights(uninterrupted["out"], 3, 10))


@pytest.mark.slow
def test_divergence_stops_with_epoch_and_step_and_keeps_good_checkpoints(demo_data, tmp_path):
    """2 steps per epoch; the learning rate 0 at the first step, then 5e29 (one epoch of warm-up to 1e30), 1e30, ...:
    the first epoch ends with finite weights and is saved, a later step's loss (or the weights) becomes non-finite.
    The error names that step, which the loss lines printed before it (every step is logged) confirm: the step after
    the last finite loss, or that step itself when its update made the weights non-finite.  Every checkpoint of the
    epochs before is kept and finite, and none after."""
    images = np.zeros((64, 32, 32, 3), np.uint8)
    data = tmp_path / "data"
    data.mkdir()
    (data / "data_batch_1.bin").write_bytes(cifar10_records(images, np.arange(64) % 10))
    proc = run_script("train.py", *TINY, "--dataset_path", data, "--epoch_size", 3, "--lr_init", 0, "--lr_max", "1e30",
                      "--warmup_epochs", 1, "--run_eval", "False", "--save_checkpoint_path", tmp_path / "out",
                      "--lr_decay_mode", "linear")
    assert_user_error(proc, r"(loss is not finite|parameter \S+ is not finite) at epoch \d+ step \d+ "
                            r"\(global step \d+\): training diverged")
    error = re.search(r"(loss|parameter \S+) is not finite at epoch (\d+) step (\d+) \(global step (\d+)\)",
                      proc.stderr)
    epoch, step, global_step = (int(error.group(i)) for i in (2, 3, 4))
    assert global_step == 2 * (epoch - 1) + step
    logged = [(int(e), int(s), float(loss)) for e, s, loss in
              re.findall(r"^epoch: (\d+) step: (\d+), loss is (\S+),", proc.stdout, re.MULTILINE)]
    assert all(np.isfinite(loss) for _, _, loss in logged)
    last = 2 * (logged[-1][0] - 1) + logged[-1][1]
    assert global_step == (last if error.group(1) != "loss" else last + 1)
    assert epoch >= 2  # so that a checkpoint was saved before the divergence
    saved = sorted(os.listdir(tmp_path / "out" / "ckpt_0"))
    assert saved == [f"mobilenet_v1-{e}_2.ckpt" for e in range(1, epoch)]
    for name in saved:
        state = ms.load_checkpoint(str(tmp_path / "out" / "ckpt_0" / name))
        assert all(np.isfinite(p.asnumpy()).all() for p in state.values()), name
