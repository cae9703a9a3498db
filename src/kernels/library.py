"""The C++ kernel library: compiled from the *_kernel.cc files of this package with g++ on first use and cached
(`kernel_library`), and the MindSpore AOT custom op of one of its functions (`aot`)."""
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
from ctypes import CDLL
from pathlib import Path

import mindspore.ops as ops

SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("depthwise_kernel.cc", "bias_act_kernel.cc", "batchnorm_kernel.cc", "im2col_kernel.cc",
                             "squeeze_excite_kernel.cc", "pointwise_kernel.cc"))
HEADERS = tuple(Path(__file__).with_name(name)
                for name in ("kernel_util.h", "depthwise_rows.h", "pointwise_gemm.inc"))

_library = {}


def cache_dir() -> Path:
    """Folder of the compiled kernel: $MOBILENET_ZOO_CACHE, else ~/.cache/mobilenet_zoo."""
    return Path(os.environ.get("MOBILENET_ZOO_CACHE") or Path.home() / ".cache" / "mobilenet_zoo")


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    """This CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


def cpu_has_avx512() -> bool:
    """Whether this CPU runs the kernels' AVX-512 code (the pointwise GEMM's wide variant)."""
    return "avx512f" in cpu_flags()


def compiler_flags() -> list:
    """g++ flags: AVX2 + FMA code where this CPU has them."""
    vector = ["-mavx2", "-mfma"] if {"avx2", "fma"} <= cpu_flags() else []
    return ["-O3", *vector, "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared", "-std=c++17"]


def _build() -> str:
    source = b"".join(path.read_bytes() for path in SOURCES + HEADERS)
    flags = compiler_flags()
    key = hashlib.sha256(source + " ".join(flags).encode()).hexdigest()[:16]
    target = cache_dir() / f"kernels_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            subprocess.run(["g++", *flags, *map(str, SOURCES), "-o", tmp], check=True, capture_output=True, text=True)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    CDLL(str(target))
    return str(target)


def kernel_library():
    """Path of the compiled kernel library (built once per source and flags, safe to build from several
    processes at once: each writes a temporary file and renames it), or None with one warning if it fails."""
    if "path" not in _library:
        try:
            _library["path"] = _build()
        except (OSError, subprocess.CalledProcessError) as error:
            lines = str(getattr(error, "stderr", None) or error).strip().splitlines() or [""]
            reason = next((line for line in lines if "error" in line), lines[-1])
            logging.getLogger(__name__).warning("C++ CPU kernels unavailable, using the built-in operators: %s",
                                                reason)
            _library["path"] = None
    return _library["path"]


def aot(symbol, out_shape, bprop=None, out_dtype=lambda x, *_: x):
    """ops.Custom for `symbol` of the kernel library (which must be available: see `kernel_library`); `out_shape` /
    `out_dtype` map the inputs' shapes / dtypes to the outputs' (by default one output of the first input's
    dtype)."""
    return ops.Custom(f"{kernel_library()}:{symbol}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot",
                      bprop=bprop)
