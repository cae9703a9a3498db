"""Shared pytest fixtures."""
import os
import signal
import subprocess
import time
import uuid

import mindspore as ms
import pytest

from src.demo_data import write_demo_data
from src.model_utils.config import ROOT_DIR


# The files that take longest run first, so that the two xdist workers (pytest.ini: --dist loadfile, and
# --no-loadscope-reorder, which keeps this order instead of xdist's most-tests-first) end together: with xdist's
# order the 2-test test_readme.py (almost 4 minutes) came last and ran alone on one worker.
LONGEST_FIRST = ("test_distributed.py", "test_reliability.py", "test_readme.py", "test_end_to_end.py",
                 "test_lowering.py")


def pytest_collection_modifyitems(items):
    order = {name: rank for rank, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(LONGEST_FIRST)))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The demo digits written once per session: {"cifar10": .../cifar-10-batches-bin, "imagefolder": ...}."""
    return write_demo_data(str(tmp_path_factory.mktemp("demo_data")))


class ScriptProcesses:
    """The environment to launch scripts/run_*.sh with: every process they start (background runs, msrun, its
    workers) inherits a unique marker variable, so the test can find them again by their environment."""

    MARKER = "MOBILENET_TEST_RUN"

    def __init__(self):
        self.env = {**os.environ, self.MARKER: uuid.uuid4().hex}

    def run(self, script: str, *args, cwd: str, timeout: float = 300, **variables) -> subprocess.CompletedProcess:
        """`bash scripts/<script> ARGS` in `cwd` with this environment plus `variables`; output captured."""
        return subprocess.run(["bash", os.path.join(ROOT_DIR, "scripts", script), *map(str, args)], cwd=cwd,
                              env={**self.env, **variables}, capture_output=True, text=True, timeout=timeout)

    def pids(self, **variables) -> list:
        """Live processes that carry the marker and each of `variables` (e.g. RANK_ID="1")."""
        wanted = {f"{key}={value}".encode() for key, value in {self.MARKER: self.env[self.MARKER], **variables}.items()}
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/environ", "rb") as src:
                    environment = set(src.read().split(b"\0"))
            except OSError:  # gone, or not ours
                continue
            if wanted <= environment:
                found.append(int(entry))
        return found

    def kill_all(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# Test-only: a run held at a known step.  Where HOLD_AT_STEP is set, the training process (a rank whose RANK_ID is
# HOLD_RANK, when that is set) creates the file HOLD_MARKER at the end of that global step, before its stop callback,
# and waits there until it receives a signal or the file HOLD_RELEASE exists; then the callback runs.  A test that
# signals or kills a run there knows the step it acts on, however fast the machine.
HOLD_HOOK = '''import importlib.abc, importlib.util, os, sys, time


def _hold(stop_class):
    step, marker, release = int(os.environ["HOLD_AT_STEP"]), os.environ["HOLD_MARKER"], os.environ["HOLD_RELEASE"]
    step_end = stop_class.on_train_step_end

    def held(self, run_context):
        if self.progress.global_step(run_context.original_args()) == step:
            open(marker, "w").close()
            while not self.received and not os.path.exists(release):
                time.sleep(0.05)
        step_end(self, run_context)

    stop_class.on_train_step_end = held


class _HoldFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "src.callbacks":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_hold(module):
            exec_module(module)
            _hold(module.StopOnSignal)

        spec.loader.exec_module = exec_and_hold
        return spec


if os.environ.get("HOLD_AT_STEP") and os.environ.get("RANK_ID", "0") == os.environ.get("HOLD_RANK",
                                                                                      os.environ.get("RANK_ID", "0")):
    sys.meta_path.insert(0, _HoldFinder())
'''


class Hold:
    """Environment variables that hold a run (every training process started with them) at global step `step` (of
    rank `rank` only, when given), see `HOLD_HOOK`; `hooks` are prepended to it (other sitecustomize code)."""

    def __init__(self, folder, step: int, rank=None, hooks: str = ""):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "sitecustomize.py").write_text(hooks + "\n" + HOLD_HOOK)
        self.marker, self.release_file = folder / "held", folder / "release"
        self.env = {"PYTHONPATH": str(folder), "HOLD_AT_STEP": str(step), "HOLD_MARKER": str(self.marker),
                    "HOLD_RELEASE": str(self.release_file), **({"HOLD_RANK": str(rank)} if rank is not None else {})}

    def wait(self, job, timeout: float = 300) -> None:
        """Return when the run is held (`job`: its Popen, which must not end first)."""
        deadline = time.time() + timeout
        while not self.marker.exists():
            assert job.poll() is None, f"the run ended (exit {job.returncode}) before reaching the held step"
            assert time.time() < deadline, "the run did not reach the held step"
            time.sleep(0.1)

    def release(self) -> None:
        self.release_file.touch()


@pytest.fixture
def hold(tmp_path):
    """`hold(step, rank=None, hooks="")`: a `Hold` at `step`, its files in tmp_path/hold."""
    return lambda step, rank=None, hooks="": Hold(tmp_path / "hold", step, rank, hooks)


@pytest.fixture(scope="module")
def script_processes():
    """A `ScriptProcesses`; at the end of the module every process still carrying its marker is killed."""
    processes = ScriptProcesses()
    yield processes
    processes.kill_all()


@pytest.fixture(autouse=True)
def restore_execution_mode():
    """MindSpore's execution mode is process-wide: a test (or an entry script's `main()` run in-process) that sets
    GRAPH_MODE would otherwise hand it to the next test of the same worker, where a lambda under `ms.grad` no longer
    parses."""
    previous = ms.get_context("mode")
    yield
    ms.set_context(mode=previous)


@pytest.fixture
def mode(request):
    """MindSpore's execution mode set to the test's parameter (use with indirect=True); restored afterwards."""
    previous = ms.get_context("mode")
    ms.set_context(mode=request.param)
    yield request.param
    ms.set_context(mode=previous)
