"""MobileNetV1/V3 model zoo for MindSpore."""
import os

# Our C++ CPU kernels (src/kernels/) use OpenMP.  With libgomp's default wait policy its idle threads
# spin after each kernel and take the cores from MindSpore's thread pool running the next operator: passive
# waiting made whole networks 1.2-1.6x faster on 2 cores.  libgomp reads the variable once, when MindSpore loads
# it, so entry scripts import `src` before `mindspore`.  A value the user set is kept (WAIT_POLICY_DEFAULTED
# tells whether it was ours, so the benchmark's PyTorch peer runs with its own default).
WAIT_POLICY_DEFAULTED = "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The process that started this one (msrun, mpirun, a launch script): a rank that asks to be stopped when it dies
# checks that it did not die before (src/distributed.py, stop_with_launcher).
LAUNCHER_PID = os.getppid()
