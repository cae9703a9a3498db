"""The launchers in scripts/: usage lines, argument checks before any side effect, configs, run folders, foreground
and background runs, and clear failures (rank table, launcher, a rank that fails)."""
import json
import os
import re
import shutil
import time

import mindspore as ms
import pytest

from src.model_utils.config import ROOT_DIR
from src.model_utils.device import target_available
from src.models import create_model

# Valid positional arguments of every launcher; {data}, {ckpt}, {table}, {config} are filled in per test.
VALID_ARGS = {
    "run_standalone_train.sh": ["cifar10", "{data}", "0"],
    "run_standalone_train_gpu.sh": ["cifar10", "{data}", "0"],
    "run_train_cpu.sh": ["cifar10", "{data}"],
    "run_distribute_train.sh": ["cifar10", "{table}", "{data}"],
    "run_distribute_train_gpu.sh": ["cifar10", "{config}", "{data}"],
    "run_distribute_train_cpu.sh": ["cifar10", "{data}", "2"],
    "run_distribute_train_msrun.sh": ["cifar10", "{data}"],
    "run_eval.sh": ["cifar10", "{data}", "{ckpt}", "0"],
    "run_eval_gpu.sh": ["cifar10", "{data}", "{ckpt}", "0"],
    "run_eval_cpu.sh": ["cifar10", "{data}", "{ckpt}"],
}
NUMBERS = {"0": "DEVICE_ID", "2": "WORKER_NUM"}
TINY = ["--image_size", "32", "--width_mult", "0.25", "--batch_size", "16", "--num_parallel_workers", "2"]


def rank_table(path, devices):
    """An HCCL rank table (hccl_tools format) for one server with `devices` as (device_id, rank_id)."""
    table = {"version": "1.0", "server_count": "1", "status": "completed", "server_list": [
        {"server_id": "127.0.0.1", "host_nic_ip": "reserve",
         "device": [{"device_id": str(d), "device_ip": f"192.168.0.{d}", "rank_id": str(r)} for d, r in devices]}]}
    path.write_text(json.dumps(table))
    return str(path)


@pytest.fixture()
def inputs(tmp_path):
    """Existing paths for every placeholder, and an empty current folder `cwd`."""
    (tmp_path / "data").mkdir()
    (tmp_path / "model.ckpt").write_bytes(b"")
    (tmp_path / "cwd").mkdir()
    return {"data": str(tmp_path / "data"), "ckpt": str(tmp_path / "model.ckpt"),
            "table": rank_table(tmp_path / "table.json", [(0, 0), (1, 1)]),
            "config": os.path.join(ROOT_DIR, "default_config.yaml"), "cwd": str(tmp_path / "cwd")}


def wrong_variants(script):
    """(what is wrong, positional arguments) for `script`."""
    valid = VALID_ARGS[script]
    variants = [("no arguments", []), ("one argument too many", valid + ["extra", "more"]),
                ("unknown data set", ["mnist"] + valid[1:]),
                ("missing DATASET_PATH", ["/no/such/path" if arg == "{data}" else arg for arg in valid])]
    variants += [(f"{NUMBERS[arg]} not a number", valid[:i] + ["x"] + valid[i + 1:])
                 for i, arg in enumerate(valid) if arg in NUMBERS]
    return variants


@pytest.mark.parametrize("script", sorted(VALID_ARGS))
def test_wrong_arguments_give_the_usage_line_and_no_side_effect(script, inputs, script_processes):
    for what, args in wrong_variants(script):
        proc = script_processes.run(script, *(arg.format(**inputs) for arg in args), cwd=inputs["cwd"], timeout=60)
        assert proc.returncode == 2, f"{what}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert f"Usage: bash scripts/{script} [cifar10|imagenet2012]" in proc.stderr, what
        assert "ERROR: " in proc.stderr, what
        assert os.listdir(inputs["cwd"]) == [], f"{what}: a rejected call left {os.listdir(inputs['cwd'])}"


@pytest.mark.parametrize("script", sorted(VALID_ARGS))
def test_help_prints_the_usage_line(script, script_processes, tmp_path):
    proc = script_processes.run(script, "--help", cwd=str(tmp_path), timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"Usage: bash scripts/{script} [cifar10|imagenet2012]")


def test_missing_and_unusable_rank_tables(inputs, script_processes, tmp_path):
    missing = script_processes.run("run_distribute_train.sh", "cifar10", tmp_path / "none.json", inputs["data"],
                                   cwd=inputs["cwd"], timeout=60)
    assert missing.returncode == 2
    assert "RANK_TABLE_FILE not found" in missing.stderr
    (tmp_path / "bad.json").write_text('{"group_list": []}')
    unusable = script_processes.run("run_distribute_train.sh", "cifar10", tmp_path / "bad.json", inputs["data"],
                                    cwd=inputs["cwd"], timeout=60)
    assert unusable.returncode == 2
    assert "is not a usable HCCL rank table" in unusable.stderr and "server_list" in unusable.stderr
    assert os.listdir(inputs["cwd"]) == []


@pytest.mark.parametrize("script,args", [
    ("run_distribute_train_cpu.sh", ["cifar10", "{data}", "1"]),
    ("run_distribute_train_gpu.sh", ["cifar10", "{config}", "{data}"]),
    ("run_distribute_train_msrun.sh", ["cifar10", "{data}"]),
])
@pytest.mark.parametrize("variables,message", [
    ({"NODE_NUM": "2", "NODE_RANK": "1", "MASTER_PORT": "29500"}, "NODE_NUM 2 (several machines) needs MASTER_ADDR"),
    ({"NODE_NUM": "2", "MASTER_ADDR": "10.0.0.1"}, "NODE_NUM 2 (several machines) needs MASTER_PORT"),
    ({"NODE_NUM": "2", "NODE_RANK": "2"}, "NODE_RANK must be below NODE_NUM (2), got 2"),
    ({"NODE_NUM": "two"}, "NODE_NUM must be an integer >= 1, got 'two'"),
    ({"MASTER_PORT": "70000"}, "MASTER_PORT must be a port number (1-65535), got 70000"),
    ({"NODE_NUM": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "LAUNCHER": "mpirun"},
     "NODE_NUM > 1 (several machines) needs LAUNCHER=msrun"),
], ids=["no-master-addr", "no-master-port", "node-rank-too-big", "node-num-not-a-number", "bad-port", "mpirun"])
def test_inconsistent_machine_settings_are_usage_errors(script, args, variables, message, inputs, script_processes):
    """NODE_NUM / NODE_RANK / MASTER_ADDR / MASTER_PORT are checked before anything runs or is written."""
    proc = script_processes.run(script, *(arg.format(**inputs) for arg in args), cwd=inputs["cwd"], timeout=60,
                                DEVICE_NUM="1", **variables)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"\nERROR: {message}" in proc.stderr, proc.stderr
    assert os.listdir(inputs["cwd"]) == []


@pytest.mark.skipif(shutil.which("mpirun") is not None, reason="mpirun is installed here")
def test_launcher_not_installed(inputs, script_processes):
    proc = script_processes.run("run_distribute_train_cpu.sh", "cifar10", inputs["data"], 2, cwd=inputs["cwd"],
                                timeout=60, LAUNCHER="mpirun")
    assert proc.returncode == 1
    assert "LAUNCHER=mpirun is not installed" in proc.stderr
    assert os.listdir(inputs["cwd"]) == []


@pytest.mark.skipif(target_available("Ascend"), reason="this machine has an Ascend NPU")
def test_rank_table_starts_one_process_per_device_and_stops_on_a_failed_rank(demo_data, script_processes, tmp_path):
    # Without an NPU every rank fails at once: the job must end, name the rank and give its log.
    table = rank_table(tmp_path / "table.json", [(4, 0), (5, 1)])
    proc = script_processes.run("run_distribute_train.sh", "cifar10", table, demo_data["cifar10"], cwd=str(tmp_path),
                                timeout=120, FOREGROUND="1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert re.search(r"ERROR: rank [01] failed: exit status 2; its log: .*/train_parallel[01]/log", proc.stdout)
    for device, rank in ((4, 0), (5, 1)):
        log = (tmp_path / f"train_parallel{rank}" / "log").read_text()
        assert log.startswith(f"RANK_ID={rank} DEVICE_ID={device} RANK_SIZE=2 RANK_TABLE_FILE={table}\n"
                              f"output folder (all ranks): {tmp_path / 'train_parallel'}\n")
    assert "device_target Ascend is not available" in (tmp_path / "train_parallel0" / "log").read_text() + \
        (tmp_path / "train_parallel1" / "log").read_text()
    assert script_processes.pids() == []


@pytest.mark.skipif(target_available("GPU"), reason="this machine has a GPU")
def test_msrun_job_ends_when_workers_fail_before_joining(demo_data, script_processes, tmp_path):
    proc = script_processes.run("run_distribute_train_gpu.sh", "cifar10", "mobilenetv3_config.yaml",
                                demo_data["cifar10"], cwd=str(tmp_path), timeout=180, FOREGROUND="1", DEVICE_NUM="2")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert re.search(r"ERROR: a worker \(pid \d+\) failed before joining the group: exit status 2", output)
    assert "device_target GPU is not available" in output
    assert f"--config_path {ROOT_DIR}/mobilenetv3_config.yaml --dataset cifar10" in output
    assert script_processes.pids() == []


def test_config_path_variable_and_foreground_exit_status(demo_data, script_processes, tmp_path):
    # The MobileNetV3 config through CONFIG_PATH; the run fails after printing its config, and FOREGROUND=1 returns
    # train.py's exit status.
    proc = script_processes.run("run_train_cpu.sh", "cifar10", demo_data["cifar10"], "--", "--resume", "nope.ckpt",
                                cwd=str(tmp_path), timeout=120, FOREGROUND="1", CONFIG_PATH="mobilenetv3_config.yaml")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"effective config ({ROOT_DIR}/mobilenetv3_config.yaml)" in proc.stdout
    assert "model: mobilenet_v3_small" in proc.stdout
    assert "resume checkpoint not found: nope.ckpt" in proc.stdout
    assert f"ERROR: the run failed (exit status 2); log: {tmp_path}/train_cpu/log" in proc.stderr


@pytest.fixture(scope="module")
def untrained_checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("untrained") / "v1.ckpt")
    ms.save_checkpoint(create_model("mobilenet_v1", class_num=10, width_mult=0.25), path)
    return path


def test_eval_runs_in_the_background_by_default(demo_data, untrained_checkpoint, script_processes, tmp_path):
    proc = script_processes.run("run_eval_cpu.sh", "cifar10", demo_data["cifar10"], untrained_checkpoint,
                                "--", *TINY, cwd=str(tmp_path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    log = tmp_path / "eval" / "log"
    assert re.fullmatch(rf"started in the background \(pid \d+\); log: {log}\n"
                        rf"(running; follow it with: tail -f {log}|finished; log: {log})\n", proc.stdout)
    deadline = time.time() + 180
    while script_processes.pids() and time.time() < deadline:
        time.sleep(0.5)
    assert script_processes.pids() == []
    assert re.search(r"^result: \{'top_1_accuracy': [\d.]+, 'top_5_accuracy': [\d.]+, 'loss': [\d.]+\} "
                     rf"ckpt={re.escape(untrained_checkpoint)}$", log.read_text(), re.MULTILINE)


@pytest.mark.slow
def test_standalone_cpu_training_in_its_run_folder(demo_data, untrained_checkpoint, script_processes, tmp_path):
    proc = script_processes.run("run_train_cpu.sh", "cifar10", os.path.relpath(demo_data["cifar10"], tmp_path),
                                untrained_checkpoint, "--", *TINY, "--epoch_size", 1, "--warmup_epochs", 0,
                                cwd=str(tmp_path), timeout=300, FOREGROUND="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    run_dir = tmp_path / "train_cpu"
    assert f"log: {run_dir}/log" in proc.stdout
    assert "training finished" in (run_dir / "log").read_text()
    config = (run_dir / "config.yaml").read_text()
    assert f"pre_trained: {untrained_checkpoint}\n" in config and f"dataset_path: {demo_data['cifar10']}\n" in config
    assert sorted(os.listdir(run_dir / "ckpt_0")) == [f"mobilenet_v1-1_{1437 // 16}.ckpt"]


def test_a_background_run_that_fails_at_its_start_says_why(demo_data, untrained_checkpoint, script_processes, tmp_path):
    """A mistake found in the run's first seconds (here a class count the data does not have) is printed by the
    background launcher, which exits with the run's status instead of 0."""
    proc = script_processes.run("run_train_cpu.sh", "cifar10", demo_data["cifar10"], "--", *TINY, "--class_num", 5,
                                cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "record 1 has label 9; expected labels 0..4 (class_num is 5)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"ERROR: the run failed at its start (exit status 2); log: "
                                                    f"{tmp_path}/train_cpu/log")


def test_a_rerun_keeps_the_earlier_run_folder(demo_data, untrained_checkpoint, script_processes, tmp_path):
    """Evaluating twice in one folder: the second run goes to eval_2 and says so; the first run's log is kept."""
    for attempt in (1, 2):
        proc = script_processes.run("run_eval_cpu.sh", "cifar10", demo_data["cifar10"], untrained_checkpoint,
                                    "--", *TINY, cwd=str(tmp_path), timeout=300, FOREGROUND="1")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.strip().splitlines()[-1].startswith("result: {'top_1_accuracy': ")
    assert f"{tmp_path}/eval holds an earlier run (kept): this run goes to {tmp_path}/eval_2" in proc.stdout
    assert sorted(os.listdir(tmp_path)) == ["eval", "eval_2"]
    assert "result: " in (tmp_path / "eval" / "log").read_text()
