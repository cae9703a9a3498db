"""Data-parallel training on CPU: scripts/run_distribute_train_cpu.sh with 2 ranks through msrun (MCCL): identical
weights, one writer, sharded evaluation, BatchNorm statistics averaged, one stop for all ranks, exact resume."""
import ast
import contextlib
import csv
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from src.dataset import CIFAR_MEAN, CIFAR_STD, create_dataset
from src.demo_data import cifar10_records, digit_images, split_indices
from src.model_utils.config import ROOT_DIR, get_config

pytestmark = pytest.mark.slow

TRAIN_IMAGES, EVAL_IMAGES, BATCH, EPOCHS = 320, 359, 16, 2  # an odd number of evaluation images
STEPS_PER_RANK = TRAIN_IMAGES // 2 // BATCH
FINAL = f"mobilenet_v1-{EPOCHS}_{STEPS_PER_RANK}.ckpt"
TRAIN_ARGS = ["--epoch_size", EPOCHS, "--image_size", 32, "--width_mult", 0.25, "--batch_size", BATCH,
              "--warmup_epochs", 0, "--num_parallel_workers", 1, "--log_interval", 1, "--run_eval", "True",
              "--save_checkpoint_epochs", 1]
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
    """The first 320 training digits and 359 of the 360 test digits of the demo split, as CIFAR-10 files."""
    images, labels = digit_images()
    train, test = split_indices(labels)
    train, test = train[:TRAIN_IMAGES], test[:EVAL_IMAGES]
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


def test_the_output_prints_the_config_once_and_ends_on_the_summary(parallel_run):
    """Rank 0 alone prints the effective config; MindSpore's warnings while the ranks connect are not shown
    (GLOG_v=3); the launcher's last line is rank 0's summary."""
    output = parallel_run["output"]
    assert output.count("effective config (") == 1 and "[rank 0] effective config (" in output
    assert "Failed to connect to the meta server" not in output and "[WARNING] DISTRIBUTED" not in output
    assert re.fullmatch(rf"\[rank 0\] training finished: mobilenet_v1 x0.25, {EPOCHS} epochs on CPU x 2 ranks, best "
                        rf"top-1 [\d.]+ \(mobilenet_v1_best.ckpt\); outputs in {re.escape(str(parallel_run['dir']))} "
                        rf"\(ckpt_0/, metrics.csv, metrics.png, config.yaml\)", output.strip().splitlines()[-1])


def test_only_rank_zero_writes_checkpoints_config_and_metrics(parallel_run):
    run_dir = parallel_run["dir"]
    assert sorted(name for name in os.listdir(run_dir) if not name.endswith(".log")) == \
        ["ckpt_0", "config.yaml", "log.txt", "metrics.csv", "metrics.png"]
    assert sorted(os.listdir(run_dir / "ckpt_0")) == [f"mobilenet_v1-1_{STEPS_PER_RANK}.ckpt", FINAL,
                                                      "mobilenet_v1_best.ckpt"]
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + EPOCHS
    assert "device_num: 2\n" in (run_dir / "config.yaml").read_text()
    assert "saved" not in parallel_run["logs"][1]
    assert "[rank 0] global batch 32 (16 per rank x 2 ranks), lr_max 0.1" in parallel_run["logs"][0]
    # the checkpoint is rank 0's final state, but for the BatchNorm statistics (next test)
    saved = ms.load_checkpoint(str(run_dir / "ckpt_0" / FINAL))
    rank0 = ms.load_checkpoint(str(parallel_run["cwd"] / "rank_0.ckpt"))
    shared = [name for name in rank0 if not name.endswith(("moving_mean", "moving_variance"))]
    assert all(np.array_equal(saved[name].asnumpy(), rank0[name].asnumpy()) for name in shared)


def test_saved_batchnorm_statistics_are_the_mean_of_the_ranks(parallel_run):
    """Each rank's moving statistics come from its own batches: the checkpoint holds their mean (what the network
    is, and what evaluation used), and each rank's own under `rank_statistics.<rank>.` (for an exact resume)."""
    saved = ms.load_checkpoint(str(parallel_run["dir"] / "ckpt_0" / FINAL))
    ranks = [ms.load_checkpoint(str(parallel_run["cwd"] / f"rank_{rank}.ckpt")) for rank in (0, 1)]
    names = [name for name in ranks[0] if name.endswith(("moving_mean", "moving_variance"))]
    assert len(names) == 2 * 27
    assert any(not np.array_equal(ranks[0][name].asnumpy(), ranks[1][name].asnumpy()) for name in names)
    for name in names:
        own = [rank[name].asnumpy() for rank in ranks]
        np.testing.assert_array_equal(saved[name].asnumpy(), ((own[0].astype(np.float64) + own[1]) / 2).astype(
            np.float32))
        for rank in (0, 1):
            np.testing.assert_array_equal(saved[f"rank_statistics.{rank}.{name}"].asnumpy(), own[rank])


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


def test_evaluation_is_sharded_and_equals_one_process(parallel_run, digits, script_processes, tmp_path):
    """During training each rank scored its half of the 359 images (180 + 179) and the summed result equals eval.py
    in one process on the saved checkpoint (same weights, same averaged BatchNorm statistics), and eval.py on 2
    ranks (msrun) gives that result too."""
    for rank, count in ((0, 180), (1, 179)):
        assert f"[rank {rank}] evaluated {count} of {EVAL_IMAGES} images on this rank" in parallel_run["logs"][rank]
    during = read_metrics(parallel_run["dir"] / "metrics.csv")[-1]
    checkpoint = parallel_run["dir"] / "ckpt_0" / FINAL
    eval_args = ["--image_size", 32, "--width_mult", 0.25]
    proc = script_processes.run("run_eval_cpu.sh", "cifar10", digits, checkpoint, "--", *eval_args,
                                cwd=str(parallel_run["cwd"]), timeout=300, FOREGROUND="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    single = ast.literal_eval(re.search(r"^result: (\{.*\}) ckpt=", proc.stdout, re.MULTILINE).group(1))
    assert f"{single['top_1_accuracy']:.6f}" == during["top_1_accuracy"]
    assert f"{single['top_5_accuracy']:.6f}" == during["top_5_accuracy"]
    assert float(during["eval_loss"]) == pytest.approx(single["loss"], abs=2e-6)
    # eval.py on 2 ranks
    bin_dir = os.path.dirname(sys.executable)  # msrun starts the workers with the `python` found on PATH
    with held_port() as port:
        msrun = subprocess.run(
            [os.path.join(bin_dir, "msrun"), "--worker_num=2", "--local_worker_num=2", f"--master_port={port}",
             f"--log_dir={tmp_path / 'logs'}", "--join=True", os.path.join(ROOT_DIR, "eval.py"), "--config_path",
             os.path.join(ROOT_DIR, "default_config.yaml"), "--dataset_path", digits, "--checkpoint_path", checkpoint,
             "--run_distribute", "True", "--result_file", tmp_path / "result.json", *map(str, eval_args)],
            cwd=str(tmp_path), env={**script_processes.env, "PATH": bin_dir + os.pathsep + os.environ["PATH"]},
            capture_output=True, text=True, timeout=300)
    assert msrun.returncode == 0, msrun.stdout[-3000:]
    for rank, count in ((0, 180), (1, 179)):
        log = (tmp_path / "logs" / f"worker_{rank}.log").read_text()
        assert f"[rank {rank}] evaluated {count} of {EVAL_IMAGES}" in log
    sharded = json.loads((tmp_path / "result.json").read_text())
    assert (sharded["top_1_accuracy"], sharded["top_5_accuracy"]) == (single["top_1_accuracy"],
                                                                      single["top_5_accuracy"])
    assert sharded["loss"] == pytest.approx(single["loss"], abs=2e-6)


def read_metrics(path):
    with open(path, newline="", encoding="utf-8") as src:
        return list(csv.DictReader(src))


@contextlib.contextmanager
def held_port():
    """A free port, held until the block ends: bound, not listening, with SO_REUSEADDR, which msrun's scheduler sets
    too, so it can bind it while no other program is given it (a port merely found free may be taken meanwhile)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", 0))
        yield sock.getsockname()[1]


def launch(script_processes, digits, cwd, *extra, env=None, terminal=False, script="run_distribute_train_cpu.sh",
           positional=None):
    """The 2-rank run of `TRAIN_ARGS` (plus `extra`) on `digits` through `script` (positional arguments: the CPU
    launcher's unless given), started in the foreground in `cwd` with `env` added; `terminal`: as a terminal starts a
    foreground job (its own session and process group, SIGINT not ignored), so that SIGINT to that group is a
    Ctrl-C.  (process, output file)."""
    output = cwd / "output.txt"
    positional = positional or ["cifar10", str(digits), "2"]
    with open(output, "a", encoding="utf-8") as out:
        job = subprocess.Popen(
            ["bash", os.path.join(ROOT_DIR, "scripts", script), *positional, "--", *map(str, TRAIN_ARGS),
             *map(str, extra)], cwd=str(cwd), env={**script_processes.env, "FOREGROUND": "1", **(env or {})},
            stdout=out, stderr=out, start_new_session=terminal,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if terminal else None)
    return job, output


def wait_for(path, text, job, timeout=300):
    deadline = time.time() + timeout
    while not (path.exists() and text in path.read_text()):
        assert job.poll() is None and time.time() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.3)


def rank_pid(script_processes, rank):
    pids = [pid for pid in script_processes.pids(MS_ROLE="MS_WORKER", RANK_ID=str(rank))
            if b"train.py" in (Path("/proc") / str(pid) / "cmdline").read_bytes()]  # not msrun's `tail`
    assert len(pids) == 1
    return pids[0]


def assert_same_final_state(run_dir, parallel_run):
    """Every entry of the final checkpoint (weights, moments, BN statistics and each rank's own, step, LR) equals
    the uninterrupted run's bit for bit."""
    resumed = ms.load_checkpoint(str(run_dir / "ckpt_0" / FINAL))
    reference = ms.load_checkpoint(str(parallel_run["dir"] / "ckpt_0" / FINAL))
    assert resumed.keys() == reference.keys()
    different = [name for name in reference
                 if not np.array_equal(resumed[name].asnumpy(), reference[name].asnumpy())]
    assert not different, different


def msrun_pid(script_processes):
    pids = [pid for pid in script_processes.pids()
            if b"/msrun\0" in (Path("/proc") / str(pid) / "cmdline").read_bytes()]
    assert len(pids) == 1
    return pids[0]


HELD = STEPS_PER_RANK + 3  # the stop tests hold rank 0 at the end of global step 13: epoch 2 step 3 of 10


@pytest.mark.parametrize("target", ["launcher", "msrun", "rank 1", "Ctrl-C"])
def test_a_stop_stops_every_rank_at_one_step_and_resumes_exactly(parallel_run, script_processes, digits, tmp_path,
                                                                 hold, target):
    """Rank 0 held at the end of global step 13 (epoch 2 step 3 of 10), then SIGTERM to the launcher (passed on to the
    ranks, not to msrun), to msrun (it has no handler and dies; its workers get SIGTERM from the kernel), to rank 1
    alone, or Ctrl-C: SIGINT to the launcher's whole process group, as a terminal sends it (msrun's handler would
    SIGKILL the ranks and exit 0, mindspore/parallel/cluster/process_entity/_api.py lines 348-355; it runs in a session
    of its own, so only the launcher's trap passes the signal on).  Both ranks stop at one step: 13 when rank 0 got the
    signal while held, 14 when only rank 1 did (it was waiting for rank 0 in step 13's exchange, which it had joined
    without a flag); rank 0 saves, the launcher exits 128 + the signal (130 for Ctrl-C), saying how to resume, and no
    process is left (msrun's `tail`s included).  From the checkpoints of Ctrl-C (step 13) and rank 1's (step 14),
    `--resume auto` ends bit-identical to the uninterrupted run (the others save the same step 13 as Ctrl-C)."""
    held = hold(HELD, rank=0)
    job, output = launch(script_processes, digits, tmp_path, env=held.env, terminal=target == "Ctrl-C")
    run_dir = tmp_path / "train_parallel"
    held.wait(job)
    sent = time.time()
    if target == "Ctrl-C":
        os.killpg(job.pid, signal.SIGINT)
    else:
        os.kill({"launcher": lambda: job.pid, "msrun": lambda: msrun_pid(script_processes),
                 "rank 1": lambda: rank_pid(script_processes, 1)}[target](), signal.SIGTERM)
    if target == "rank 1":
        held.release()
    signum = signal.SIGINT if target == "Ctrl-C" else signal.SIGTERM
    assert job.wait(timeout=180) == 128 + signum, output.read_text()[-3000:]
    ended = time.time() - sent
    assert script_processes.pids() == []
    assert f"stopped by {signum.name} (exit {128 + signum}): every rank stopped at the same step; the log names the " \
           f"checkpoint saved; resume with the same command plus: -- --resume auto" in output.read_text()
    step = HELD + 1 if target == "rank 1" else HELD
    logs = [(run_dir / f"worker_{rank}.log").read_text() for rank in (0, 1)]
    # the ranks name the signal their handler saw: inside a running graph MindSpore turns SIGINT into SIGTERM
    stopped = rf"stopped by SIG(?:TERM|INT)(?: \(received by another rank\))? at epoch 2 step {step - STEPS_PER_RANK}"
    saved = run_dir / "ckpt_0" / f"mobilenet_v1-2_{step - STEPS_PER_RANK}.ckpt"
    assert re.search(rf"\[rank 0\] {stopped}(?: \(at most \d+ steps and [\d.]+ s after the signal\))?: saved "
                     rf"{re.escape(str(saved))};", logs[0]), logs[0][-2000:]
    assert re.search(rf"\[rank 1\] {stopped}(?: \(at most \d+ steps and [\d.]+ s after the signal\))?: no checkpoint "
                     rf"written by this rank", logs[1]), logs[1][-2000:]
    print(f"{target}: both ranks stopped at global step {step}, {step - HELD} step(s) after the held step; the "
          f"launcher exited {ended:.1f} s after the signal")
    if target not in ("Ctrl-C", "rank 1"):
        return
    job, output = launch(script_processes, digits, tmp_path, "--resume", "auto")
    assert job.wait(timeout=300) == 0, output.read_text()[-3000:]
    assert f"resumed {saved}: 1 epochs and {step - STEPS_PER_RANK} steps done" in (run_dir / "worker_1.log").read_text()
    assert_same_final_state(run_dir, parallel_run)


def test_a_killed_rank_ends_the_job_and_resume_is_exact(parallel_run, script_processes, digits, tmp_path, hold):
    """SIGKILL rank 1, held at epoch 2 step 2: the job exits non-zero in bounded time naming rank 1 and leaves no
    process; `--resume auto` restarts both ranks from the epoch-1 checkpoint and ends bit-identical to the
    uninterrupted run."""
    held = hold(STEPS_PER_RANK + 2, rank=1)
    job, output = launch(script_processes, digits, tmp_path, env=held.env)
    run_dir = tmp_path / "train_parallel"
    held.wait(job)
    victim = rank_pid(script_processes, 1)
    os.kill(victim, signal.SIGKILL)
    killed = time.time()
    returncode = job.wait(timeout=180)
    print(f"job ended {time.time() - killed:.1f} s after the kill")
    assert returncode != 0
    assert f"ERROR: rank 1 (pid {victim}) failed: killed by signal 9" in output.read_text()
    assert script_processes.pids() == []
    job, output = launch(script_processes, digits, tmp_path, "--resume", "auto")
    assert job.wait(timeout=300) == 0, output.read_text()[-3000:]
    for rank in (0, 1):
        assert (f"[rank {rank}] resumed {run_dir / 'ckpt_0' / f'mobilenet_v1-1_{STEPS_PER_RANK}.ckpt'}: 1 epochs and 0 "
                f"steps done") in (run_dir / f"worker_{rank}.log").read_text()
    assert_same_final_state(run_dir, parallel_run)


@pytest.mark.parametrize("script,positional,signum", [
    ("run_distribute_train_gpu.sh", ["cifar10", os.path.join(ROOT_DIR, "default_config.yaml"), "{data}"],
     signal.SIGINT),
    ("run_distribute_train_msrun.sh", ["cifar10", "{data}"], signal.SIGTERM),
], ids=["GPU-Ctrl-C", "Ascend-msrun-SIGTERM-to-the-group"])
def test_a_stop_of_the_gpu_and_ascend_msrun_launchers(script_processes, digits, tmp_path, hold, script, positional,
                                                       signum):
    """The GPU and Ascend msrun launchers run the CPU launcher's msrun code (scripts/common.sh `data_parallel_train`):
    here on CPU (`--device_target CPU` after `--` wins) with DEVICE_NUM=2.  While msrun starts, the port it was given
    is held (no other program can bind it).  At rank 0's step 2, the launcher's whole process group gets Ctrl-C
    (SIGINT, from a terminal) or SIGTERM (from a scheduler; it also ends the launcher's log viewer): the ranks stop
    there, rank 0 saved epoch 1 step 2, the launcher exits 128 + the signal saying so, and no process is left."""
    held = hold(2, rank=0)
    job, output = launch(script_processes, digits, tmp_path, "--device_target", "CPU", "--epoch_size", 1,
                         env={**held.env, "DEVICE_NUM": "2"}, terminal=True, script=script,
                         positional=[arg.format(data=digits) for arg in positional])
    wait_for(output, "master 127.0.0.1:", job)
    port = int(re.search(r"master 127\.0\.0\.1:(\d+);", output.read_text()).group(1))
    with socket.socket() as other, pytest.raises(OSError) as taken:
        other.bind(("", port))
    assert taken.value.errno == errno.EADDRINUSE
    held.wait(job)
    sent = time.time()
    os.killpg(job.pid, signum)
    assert job.wait(timeout=180) == 128 + signum, output.read_text()[-3000:]
    print(f"{script}: the launcher exited {time.time() - sent:.1f} s after {signum.name}")
    assert script_processes.pids() == []
    assert f"stopped by {signum.name} (exit {128 + signum}): every rank stopped at the same step" in output.read_text()
    assert os.listdir(tmp_path / "train_parallel" / "ckpt_0") == ["mobilenet_v1-1_2.ckpt"]


# A launcher (msrun, mpirun) that starts train.py as a rank of a group whose scheduler never answers, prints the
# rank's pid and waits for it.
FAKE_LAUNCHER = """import subprocess, sys
rank = subprocess.Popen(sys.argv[1:], stdout=sys.stderr)
print(rank.pid, flush=True)
rank.wait()
"""


def test_a_rank_whose_launcher_dies_while_the_group_forms_ends(digits, script_processes, tmp_path):
    """A rank asks the kernel for SIGTERM on its launcher's death before it joins the group: when the launcher dies
    while `init()` waits for the cluster (here for a scheduler that never answers, for up to MS_TOPO_TIMEOUT, 600 s),
    the rank ends at once instead of waiting out the timeout."""
    with held_port() as port:  # nothing listens there
        env = {**script_processes.env, "MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "127.0.0.1",
               "MS_SCHED_PORT": str(port), "MS_WORKER_NUM": "2", "MS_NODE_ID": "0", "RANK_ID": "0",
               "MS_TOPO_TIMEOUT": "600"}
        log = tmp_path / "rank.log"
        with open(log, "w", encoding="utf-8") as out:
            launcher = subprocess.Popen(
                [sys.executable, "-c", FAKE_LAUNCHER, sys.executable, os.path.join(ROOT_DIR, "train.py"),
                 "--config_path", os.path.join(ROOT_DIR, "default_config.yaml"), "--dataset_path", digits,
                 "--run_distribute", "True", "--save_checkpoint_path", str(tmp_path / "out")],
                env=env, stdout=subprocess.PIPE, stderr=out, text=True)
        rank = int(launcher.stdout.readline())
        wait_for(log, "Failed to register and try to reconnect to the meta server", launcher)  # inside init()
        launcher.kill()
        launcher.wait()
        killed = time.time()
        while running(rank) and time.time() - killed < 60:
            time.sleep(0.1)
        print(f"the rank ended {time.time() - killed:.1f} s after its launcher")
        assert not running(rank), "the rank outlived its launcher"


def running(pid):
    """Whether process `pid` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# Runs A, which starts B and exits as soon as B has imported src (so B's launcher is gone before B asks for the
# parent-death signal); B then calls `stop_with_launcher`.  This process adopts B (a subreaper) and reports how B
# ended.  B imports `src` only (the function needs no MindSpore).
ORPHAN_CHECK = """import ctypes, os, signal, subprocess, sys
ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans of our children become ours
signal.pthread_sigmask(signal.SIG_SETMASK, [])  # a blocked or ignored signal survives exec: start from the defaults
for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
    signal.signal(number, signal.SIG_DFL)
B = '''import os, sys, time
import src
parent = os.getppid()  # before A can learn our pid and exit: after, it could already be the subreaper, for good
print(os.getpid(), flush=True)
while os.getppid() == parent:
    time.sleep(0.05)
src.stop_with_launcher()
print("still running", file=sys.stderr, flush=True)
'''
A = '''import subprocess, sys
b = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True)
print(b.stdout.readline(), end="", flush=True)
'''
a = subprocess.Popen([sys.executable, "-c", A, B], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
b = int(a.stdout.readline())
a.wait()
_, status = os.waitpid(b, 0)
if os.WIFSIGNALED(status):
    print("B signal", os.WTERMSIG(status))
else:
    print("B exit", os.WEXITSTATUS(status))
"""


def orphan_check(output: Path, timeout: float = 120) -> str:
    """Runs ORPHAN_CHECK (its output into `output`); returns "" or, where it has not ended after 120 s, what its
    processes were doing then (listed before it is killed)."""
    with open(output, "w", encoding="utf-8") as sink:
        proc = subprocess.Popen([sys.executable, "-c", ORPHAN_CHECK], cwd=ROOT_DIR, stdin=subprocess.DEVNULL,
                                stdout=sink, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=timeout)
            return ""
        except subprocess.TimeoutExpired:
            listing = subprocess.run(["ps", "-ewwo", "pid,ppid,stat,wchan:32,etime,args"], capture_output=True,
                                     text=True).stdout.splitlines()
            tree, details = {proc.pid}, []
            for _ in range(3):  # the check, A, B
                tree |= {int(line.split()[0]) for line in listing[1:] if int(line.split()[1]) in tree}
            for line in listing[1:]:
                if int(line.split()[0]) in tree:
                    pid = line.split()[0]
                    details.append(line[:300])
                    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="utf-8") as status:
                        details += [f"  {pid} {row}" for row in status.read().splitlines()
                                    if row.startswith(("Sig", "State"))]
            proc.kill()
            proc.wait()
            return "\n".join(details) or "no process of the check alive"


def test_a_rank_whose_launcher_died_before_it_asked_ends(tmp_path):
    """The parent-death signal only covers a parent that dies after the request: `stop_with_launcher` checks that the
    parent is still the process that started it (`src.LAUNCHER_PID`, recorded when `src` is imported) and, if not,
    ends the rank as the signal would have (SIGTERM).  (Under load B used to read its parent after printing its pid,
    when A could already have exited: B then waited for a parent change that never came; its listing showed it.)"""
    output = tmp_path / "orphan_check.txt"
    stuck = orphan_check(output)
    assert not stuck, "orphan check did not end in 120 s:\n" + stuck
    text = output.read_text(encoding="utf-8")
    assert text.strip().splitlines()[-1] == f"B signal {int(signal.SIGTERM)}", text[-2000:]


# Test-only: rank 1 reads its checkpoints from another folder (as a rank-table launcher or a second machine without
# a shared folder would).
OTHER_FOLDER_HOOK = '''import os, sys
if os.environ.get("MS_ROLE") == "MS_WORKER" and os.environ.get("RANK_ID") == "1":
    at = sys.argv.index("--save_checkpoint_path") + 1
    sys.argv[at] = os.environ["RANK_1_FOLDER"]
'''


def test_ranks_refuse_to_resume_from_different_checkpoints(parallel_run, script_processes, digits, tmp_path):
    """Rank 0 finds the epoch-1 checkpoint, rank 1 (another folder) none: instead of training on from different
    states (and hanging in a collective), every rank stops with a one-line error before the first step."""
    run_dir = tmp_path / "train_parallel"
    (run_dir / "ckpt_0").mkdir(parents=True)
    shutil.copy(parallel_run["dir"] / "ckpt_0" / f"mobilenet_v1-1_{STEPS_PER_RANK}.ckpt", run_dir / "ckpt_0")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(OTHER_FOLDER_HOOK)
    script_processes.env.update(PYTHONPATH=str(hook), RANK_1_FOLDER=str(tmp_path / "elsewhere"))
    try:
        job, output = launch(script_processes, digits, tmp_path, "--resume", "auto")
        assert job.wait(timeout=300) != 0
    finally:
        for key in ("PYTHONPATH", "RANK_1_FOLDER"):
            script_processes.env.pop(key)
    message = ("ERROR: the ranks would resume from different checkpoints (rank 0: step 10, rank 1: no checkpoint): "
               "every rank must read the same save_checkpoint_path")
    for rank in (0, 1):
        assert f"[rank {rank}] {message}" in (run_dir / f"worker_{rank}.log").read_text()
    assert "epoch: 2 step: 1," not in (run_dir / "worker_0.log").read_text()
    assert script_processes.pids() == []


@pytest.fixture
def second_machine():
    """A second "machine" on this host (DESIGN.md section 7): its own network namespace joined to this one by a
    veth pair; msrun starts its scheduler only on the machine whose address MASTER_ADDR is.  Yields (this machine's
    address, a command prefix that runs on the second machine, the namespace name); removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("two machines on one host need root and iproute2 (network namespaces)")
    tag = os.getpid() % 100_000
    name, near, far, subnet = f"mbnode{tag}", f"mbA{tag}", f"mbB{tag}", f"10.231.{tag % 250}"
    setup = [["ip", "netns", "add", name], ["ip", "link", "add", near, "type", "veth", "peer", "name", far],
             ["ip", "link", "set", far, "netns", name], ["ip", "addr", "add", f"{subnet}.1/24", "dev", near],
             ["ip", "link", "set", near, "up"],
             ["ip", "netns", "exec", name, "ip", "addr", "add", f"{subnet}.2/24", "dev", far],
             ["ip", "netns", "exec", name, "ip", "link", "set", far, "up"],
             ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"]]
    try:
        for command in setup:
            failed = subprocess.run(command, capture_output=True, text=True)
            if failed.returncode:
                pytest.skip(f"cannot make a network namespace here: {' '.join(command)}: {failed.stderr.strip()}")
        yield f"{subnet}.1", ["ip", "netns", "exec", name], name
    finally:
        left = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in left:
            os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "link", "del", near], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_two_machines_train_as_one_job_and_a_lost_machine_is_named(digits, script_processes, second_machine, tmp_path):
    """Two msrun launchers with NODE_NUM 2 and NODE_RANK 0 / 1, one rank each: both exit 0, the ranks end with
    identical weights, only machine 0 writes a checkpoint set.  Then a second job loses machine 1 (every process of
    it SIGKILLed): machine 0 ends non-zero in bounded time naming rank 1, and no process is left."""
    address, on_second, namespace = second_machine

    def start(node_rank, folder, *extra):
        folder.mkdir(exist_ok=True)
        variables = {**script_processes.env, "FOREGROUND": "1", "NODE_NUM": "2", "NODE_RANK": str(node_rank),
                     "MASTER_ADDR": address, "MASTER_PORT": str(port), **hook_env(folder)}
        prefix = on_second + ["env", *(f"{key}={value}" for key, value in variables.items())] if node_rank else []
        out = open(folder / "output.txt", "w", encoding="utf-8")  # pylint: disable=consider-using-with
        return subprocess.Popen([*prefix, "bash", os.path.join(ROOT_DIR, "scripts", "run_distribute_train_cpu.sh"),
                                 "cifar10", digits, "1", "--", *map(str, TRAIN_ARGS), *map(str, extra)],
                                cwd=str(folder), env=variables, stdout=out, stderr=out)

    with held_port() as port:
        machines = [start(0, tmp_path / "first"), start(1, tmp_path / "second")]
        assert [job.wait(timeout=600) for job in machines] == [0, 0], \
            [(tmp_path / folder / "output.txt").read_text()[-3000:] for folder in ("first", "second")]
    logs = [(tmp_path / folder / "train_parallel" / f"worker_{rank}.log").read_text()
            for rank, folder in ((0, "first"), (1, "second"))]
    for rank, log in enumerate(logs):
        assert f"[rank {rank}] joined the MCCL group as rank {rank} of 2" in log and "training finished" in log
    ranks = [ms.load_checkpoint(str(tmp_path / folder / f"rank_{rank}.ckpt"))
             for rank, folder in ((0, "first"), (1, "second"))]
    shared = [name for name in ranks[0] if not name.endswith(("moving_mean", "moving_variance"))]
    assert all(np.array_equal(ranks[0][name].asnumpy(), ranks[1][name].asnumpy()) for name in shared)
    assert FINAL in os.listdir(tmp_path / "first" / "train_parallel" / "ckpt_0")
    assert not (tmp_path / "second" / "train_parallel" / "ckpt_0").exists()

    with held_port() as port:
        machines = [start(0, tmp_path / "first2", "--epoch_size", 50),
                    start(1, tmp_path / "second2", "--epoch_size", 50)]
        wait_for(tmp_path / "second2" / "train_parallel" / "worker_1.log", "[rank 1] epoch: 1 step: 2,", machines[1])
    lost = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
    for pid in lost:
        os.kill(int(pid), signal.SIGKILL)
    killed = time.time()
    assert machines[0].wait(timeout=300) != 0
    print(f"machine 0 ended {time.time() - killed:.1f} s after machine 1 was lost")
    machines[1].wait(timeout=60)
    output = (tmp_path / "first2" / "output.txt").read_text()
    assert "ERROR: rank 1 was lost (it stopped answering: its process, machine or network failed); its log: " \
           "worker_1.log in the run folder of the machine with NODE_RANK 1" in output, output[-3000:]
    assert script_processes.pids() == []
