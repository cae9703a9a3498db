"""MobileNetV1/V3 model zoo for MindSpore."""
import ctypes
import os
import signal

# Our C++ CPU kernels (src/kernels/) use OpenMP.  With libgomp's default wait policy its idle threads
# spin after each kernel and take the cores from MindSpore's thread pool running the next operator: passive
# waiting made whole networks 1.2-1.6x faster on 2 cores.  libgomp reads the variable once, when MindSpore loads
# it, so entry scripts import `src` before `mindspore`.  A value the user set is kept (WAIT_POLICY_DEFAULTED
# tells whether it was ours, so the benchmark's PyTorch peer runs with its own default).
WAIT_POLICY_DEFAULTED = "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The process that started this one (msrun, mpirun, a launch script): a rank that asks to be stopped when it dies
# checks that it did not die before (stop_with_launcher, below).
LAUNCHER_PID = os.getppid()


def stop_with_launcher() -> None:
    """Have Linux send this process SIGTERM when its launcher dies (`prctl(PR_SET_PDEATHSIG)`): msrun starts its
    workers in their own sessions (`os.setsid`, mindspore/parallel/cluster/process_entity/_api.py) and has no SIGTERM
    handler, so a SIGTERM to msrun would leave them running; with this they stop as on any signal, saving first.
    Called before joining the group (a rank orphaned while the cluster forms would otherwise wait `cluster_time_out`
    in `init()`); a launcher that died before the request (the parent is no longer `LAUNCHER_PID`, recorded when
    `src` was imported) gets the same answer at once.  (Here, not in src/distributed.py, so that it needs no
    MindSpore: tests/test_distributed.py runs it in a bare process.)"""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != LAUNCHER_PID:
        os.kill(os.getpid(), signal.SIGTERM)
