"""Shared pytest fixtures."""
import os
import signal
import subprocess
import uuid

import mindspore as ms
import pytest

from src.demo_data import write_demo_data
from src.model_utils.config import ROOT_DIR


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


@pytest.fixture(scope="module")
def script_processes():
    """A `ScriptProcesses`; at the end of the module every process still carrying its marker is killed."""
    processes = ScriptProcesses()
    yield processes
    processes.kill_all()


@pytest.fixture
def mode(request):
    """MindSpore's execution mode set to the test's parameter (use with indirect=True); restored afterwards."""
    previous = ms.get_context("mode")
    ms.set_context(mode=request.param)
    yield request.param
    ms.set_context(mode=previous)
