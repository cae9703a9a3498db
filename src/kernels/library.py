"""The C++ kernel library: compiled from the *_kernel.cc files of this package with g++ on first use and cached
(`kernel_library`), and the MindSpore AOT custom op of one of its functions (`aot`)."""
import functools
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from ctypes import CDLL
from pathlib import Path

import mindspore
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


def _build(name, sources, headers, flags, libraries=()) -> str:
    source = b"".join(path.read_bytes() for path in sources + headers)
    key = hashlib.sha256(source + " ".join(flags + list(libraries)).encode()).hexdigest()[:16]
    target = cache_dir() / f"{name}_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            subprocess.run(["g++", *flags, *map(str, sources), "-o", tmp, *libraries], check=True,
                           capture_output=True, text=True)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    CDLL(str(target))
    return str(target)


def _reason(error) -> str:
    """The line of a failed build (or load) that says why: the compiler's first error line, else its last line."""
    lines = str(getattr(error, "stderr", None) or error).strip().splitlines() or [""]
    return next((line for line in lines if "error" in line), lines[-1])


def kernel_library():
    """Path of the compiled kernel library (built once per source and flags, safe to build from several
    processes at once: each writes a temporary file and renames it), or None with one warning if it fails."""
    if "path" not in _library:
        try:
            _library["path"] = _build("kernels", SOURCES, HEADERS, compiler_flags())
        except (OSError, subprocess.CalledProcessError) as error:
            logging.getLogger(__name__).warning("C++ CPU kernels unavailable, using the built-in operators: %s",
                                                _reason(error))
            _library["path"] = None
    return _library["path"]


def onednn_paths():
    """(folder of oneDNN's C++ headers, MindSpore's own libdnnl.so.3) or None where either is missing.  The headers
    come from the onednn-devel-cpu-gomp package (oneDNN 3.2; scripts/setup_env.sh installs it without its library):
    oneDNN keeps its C API and ABI within major version 3, and MindSpore 2.10 ships oneDNN 3.10.1, built for the
    threadpool runtime (the kernels hand it an OpenMP pool)."""
    include = Path(sys.prefix) / "include"
    dnnl = Path(mindspore.__file__).parent / "lib" / "libdnnl.so.3"
    if not (include / "oneapi" / "dnnl" / "dnnl.hpp").exists() or not dnnl.exists():
        return None
    return include, dnnl


def blocked_block() -> int:
    """Channels per block of the blocked layout: 16 (one AVX-512 vector, oneDNN's nChw16c) where this CPU has
    AVX-512, else 8 (nChw8c)."""
    return 16 if cpu_has_avx512() else 8


def blocked_library():
    """Path of the blocked-layout kernel library (blocked_kernel.cc on MindSpore's oneDNN), or None with one
    warning where it cannot be built (no headers, no libdnnl.so.3 in MindSpore, a compiler error) or its oneDNN is
    not version 3, and without a warning where $MOBILENET_ZOO_BLOCKED is 0.  Then the lowered network keeps the NCHW
    layout."""
    if "blocked" not in _library and os.environ.get("MOBILENET_ZOO_BLOCKED", "1") == "0":
        _library["blocked"] = None  # asked for the NCHW kernels (tests of that path, before/after comparisons)
    if "blocked" not in _library:
        paths, reason = onednn_paths(), "oneDNN headers (pip install --no-deps onednn-devel-cpu-gomp==2023.2.0) or " \
                                         "MindSpore's lib/libdnnl.so.3 not found"
        _library["blocked"] = None
        if paths is not None:
            include, dnnl = paths
            here = Path(__file__).parent
            try:
                path = _build("blocked", (here / "blocked_kernel.cc",), (here / "kernel_util.h",),
                              compiler_flags() + (["-mavx512f"] if cpu_has_avx512() else [])
                              + [f"-DBLOCK={blocked_block()}", f"-I{include}", f"-I{here}"],
                              [str(dnnl), f"-Wl,-rpath,{dnnl.parent}"])
                version = CDLL(path).OneDNNVersion()
                if version // 10000 == 3:
                    _library["blocked"] = path
                else:
                    reason = f"oneDNN {version} in MindSpore, the kernels need version 3"
            except (OSError, subprocess.CalledProcessError) as error:
                reason = _reason(error)
        if _library["blocked"] is None:
            logging.getLogger(__name__).warning("blocked-layout CPU kernels unavailable, the network keeps NCHW: %s",
                                                reason)
    return _library["blocked"]


def aot(symbol, out_shape, bprop=None, out_dtype=lambda x, *_: x, library=None):
    """ops.Custom for `symbol` of the kernel library (which must be available: see `kernel_library`), or of the
    library at path `library`; `out_shape` / `out_dtype` map the inputs' shapes / dtypes to the outputs' (by default
    one output of the first input's dtype)."""
    return ops.Custom(f"{library or kernel_library()}:{symbol}", out_shape=out_shape, out_dtype=out_dtype,
                      func_type="aot", bprop=bprop)
