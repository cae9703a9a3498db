"""Data-parallel training on CPU: scripts/run_distribute_train_cpu.sh with 2 ranks through msrun (MCCL)."""
import ast
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from src.dataset import CIFAR_MEAN, CIFAR_STD, create_dataset
from src.demo_data import cifar10_records, digit_images, split_indices
from src.model_utils.config import ROOT_DIR, get_config

pytestmark = pytest.mark.slow

TRAIN_IMAGES, BATCH, EPOCHS = 320, 16, 2
STEPS_PER_RANK = TRAIN_IMAGES // 2 // BATCH
TRAIN_ARGS = ["--epoch_size", EPOCHS, "--image_size", 32, "--width_mult", 0.25, "--batch_size", BATCH,
              "--warmup_epochs", 0, "--num_parallel_workers", 1, "--log_interval", 5, "--run_eval", "True"]
# Test-only: each worker saves its whole train network (weights, BN statistics, optimizer state) when
# Model.train returns, as rank_<RANK_ID>.ckpt, so that the ranks' final states can be compared.
RANK_WEIGHTS_HOOK = '''import os
if os.environ.get("RANK_WEIGHTS_DIR") and os.environ.get("MS_ROLE") == "MS_WORKER":
    import mindspore
    _train = mindspore.train.Model.train

    def _train_and_save(self, *args, **kwargs):
        _train(self, *args, **kwargs)
        mindspore.save_checkpoint(self.train_network, os.path.join(
            os.environ["RANK_WEIGHTS_DIR"], "rank_%s.ckpt" % os.environ["RANK_ID"]))

    mindspore.train.Model.train = _train_and_save
'''


def write_cifar10(folder, train_images, train_labels, test_images, test_labels):
    os.makedirs(folder)
    with open(os.path.join(folder, "data_batch_1.bin"), "wb") as out:
        out.write(cifar10_records(train_images, train_labels))
    with open(os.path.join(folder, "test_batch.bin"), "wb") as out:
        out.write(cifar10_records(test_images, test_labels))
    return folder


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The first 320 training digits and the 360 test digits of the demo split, as CIFAR-10 files."""
    images, labels = digit_images()
    train, test = split_indices(labels)
    train = train[:TRAIN_IMAGES]
    return write_cifar10(str(tmp_path_factory.mktemp("digits") / "cifar10"), images[train], labels[train],
                         images[test], labels[test])


def hook_env(tmp_path):
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(RANK_WEIGHTS_HOOK)
    return {"PYTHONPATH": str(hook_dir), "RANK_WEIGHTS_DIR": str(tmp_path)}


@pytest.fixture(scope="module")
def parallel_run(digits, script_processes, tmp_path_factory):
    """Two epochs of MobileNetV1-0.25 on 2 ranks, evaluating every epoch, waited for (FOREGROUND=1)."""
    cwd = tmp_path_factory.mktemp("parallel")
    start = time.time()
    proc = script_processes.run("run_distribute_train_cpu.sh", "cifar10", digits, 2, "--", *TRAIN_ARGS,
                                cwd=str(cwd), timeout=600, FOREGROUND="1", **hook_env(cwd))
    run_dir = cwd / "train_parallel"
    logs = [(run_dir / f"worker_{rank}.log").read_text() for rank in (0, 1)]
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr
    print(f"2-rank run: {time.time() - start:.1f} s")
    return {"cwd": cwd, "dir": run_dir, "output": proc.stdout, "logs": logs}


def test_both_ranks_finish_with_identical_weights(parallel_run):
    for rank, log in enumerate(parallel_run["logs"]):
        assert f"[rank {rank}] joined the MCCL group as rank {rank} of 2 (pid " in log
        assert f"[rank {rank}] training finished" in log
    ranks = [ms.load_checkpoint(str(parallel_run["cwd"] / f"rank_{rank}.ckpt")) for rank in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    # BatchNorm's moving statistics are each rank's own (local batches, no SyncBatchNorm); everything the
    # optimizer updates from the averaged gradients must agree bit for bit.
    shared = [name for name in ranks[0] if not name.endswith(("moving_mean", "moving_variance"))]
    assert any(name.startswith("moments.") for name in shared)
    different = [name for name in shared if not np.array_equal(ranks[0][name].asnumpy(), ranks[1][name].asnumpy())]
    assert not different, different


def test_only_rank_zero_writes_checkpoints_config_and_metrics(parallel_run):
    run_dir = parallel_run["dir"]
    assert sorted(name for name in os.listdir(run_dir) if not name.endswith(".log")) == \
        ["ckpt_0", "config.yaml", "log.txt", "metrics.csv"]
    final = f"mobilenet_v1-{EPOCHS}_{STEPS_PER_RANK}.ckpt"
    assert sorted(os.listdir(run_dir / "ckpt_0")) == [final, "mobilenet_v1_best.ckpt"]
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + EPOCHS
    assert "device_num: 2\n" in (run_dir / "config.yaml").read_text()
    assert "saved" not in parallel_run["logs"][1]
    # the checkpoint is rank 0's final state
    saved = ms.load_checkpoint(str(run_dir / "ckpt_0" / final))
    rank0 = ms.load_checkpoint(str(parallel_run["cwd"] / "rank_0.ckpt"))
    assert all(np.array_equal(saved[name].asnumpy(), rank0[name].asnumpy()) for name in rank0)


def test_log_lines_name_their_rank(parallel_run):
    for rank, log in enumerate(parallel_run["logs"]):
        ours = [line for line in log.splitlines()
                if re.search(r"epoch: \d|Epoch time|training |effective config|joined the", line)]
        assert len(ours) > 2 * EPOCHS
        assert all(line.startswith(f"[rank {rank}] ") for line in ours), ours


def test_each_rank_reads_a_disjoint_half(parallel_run, tmp_path):
    for rank, log in enumerate(parallel_run["logs"]):
        assert f"[rank {rank}] training mobilenet_v1 x0.25 on CPU: {STEPS_PER_RANK} steps of {BATCH} images" in log
    # The run's own config and pipeline on images that carry their index (a constant colour survives the crop):
    # the two shards of each epoch are disjoint and cover the whole set.
    index = np.arange(TRAIN_IMAGES)
    colours = np.stack([index % 256, index // 256, np.full_like(index, 7)], axis=1).astype(np.uint8)
    images = np.broadcast_to(colours[:, None, None, :], (TRAIN_IMAGES, 32, 32, 3))
    data = write_cifar10(str(tmp_path / "indexed"), images, index % 10, images[:10], index[:10] % 10)
    config = get_config(["--config_path", str(parallel_run["dir"] / "config.yaml"), "--dataset_path", data])
    seen = {}
    for rank in (0, 1):
        shard = create_dataset(config, do_train=True, rank_id=rank, rank_size=2)
        for epoch, batches in enumerate(_epochs(shard, EPOCHS)):
            pixels = np.concatenate([image[:, :, 16, 16] for image in batches])
            values = np.rint((pixels * CIFAR_STD + CIFAR_MEAN) * 255).astype(int)
            seen[rank, epoch] = values[:, 0] + 256 * values[:, 1]
    for epoch in range(EPOCHS):
        first, second = set(seen[0, epoch]), set(seen[1, epoch])
        assert len(first) == len(second) == TRAIN_IMAGES // 2 == len(seen[0, epoch])
        assert not first & second and first | second == set(range(TRAIN_IMAGES))


def _epochs(dataset, count):
    iterator = dataset.create_tuple_iterator(num_epochs=count, output_numpy=True)
    for _ in range(count):
        yield [image for image, _ in iterator]  # the iterator stops at the end of each epoch


def test_the_checkpoint_evaluates_with_eval_py(parallel_run, digits, script_processes):
    checkpoint = parallel_run["dir"] / "ckpt_0" / f"mobilenet_v1-{EPOCHS}_{STEPS_PER_RANK}.ckpt"
    proc = script_processes.run("run_eval_cpu.sh", "cifar10", digits, checkpoint, "--", "--image_size", 32,
                                "--width_mult", 0.25, cwd=str(parallel_run["cwd"]), timeout=300, FOREGROUND="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    result = ast.literal_eval(re.search(r"^result: (\{.*\}) ckpt=", proc.stdout, re.MULTILINE).group(1))
    assert 0.0 <= result["top_1_accuracy"] <= result["top_5_accuracy"] <= 1.0
    # the same weights and BN statistics that rank 0 evaluated after the last epoch
    during = re.search(rf"^\[rank 0\] epoch: {EPOCHS} eval: top_1_accuracy ([\d.]+)", parallel_run["logs"][0],
                       re.MULTILINE)
    assert f"{result['top_1_accuracy']:.4f}" == during.group(1)


def test_a_killed_rank_ends_the_job(digits, script_processes, tmp_path):
    """SIGKILL rank 1 after its first step: the job exits non-zero in bounded time, naming rank 1."""
    log_path = tmp_path / "train_parallel" / "worker_1.log"
    env = {**script_processes.env, "FOREGROUND": "1"}
    args = ["cifar10", digits, 2, "--", *TRAIN_ARGS, "--epoch_size", 50, "--log_interval", 1, "--run_eval", "False"]
    with open(tmp_path / "output.txt", "w", encoding="utf-8") as output:
        job = subprocess.Popen(
            ["bash", os.path.join(ROOT_DIR, "scripts", "run_distribute_train_cpu.sh"), *map(str, args)],
            cwd=str(tmp_path), env=env, stdout=output, stderr=output)
        deadline = time.time() + 300
        while not (log_path.exists() and "[rank 1] epoch: 1 step: 1," in log_path.read_text()):
            assert job.poll() is None and time.time() < deadline, (tmp_path / "output.txt").read_text()[-3000:]
            time.sleep(0.5)
        victims = [pid for pid in script_processes.pids(MS_ROLE="MS_WORKER", RANK_ID="1")
                   if b"train.py" in (Path("/proc") / str(pid) / "cmdline").read_bytes()]  # not msrun's `tail`
        assert len(victims) == 1
        os.kill(victims[0], signal.SIGKILL)
        killed = time.time()
        returncode = job.wait(timeout=180)
    text = (tmp_path / "output.txt").read_text()
    print(f"job ended {time.time() - killed:.1f} s after the kill")
    assert returncode != 0
    assert f"ERROR: rank 1 (pid {victims[0]}) failed: killed by signal 9" in text
    assert script_processes.pids() == []
