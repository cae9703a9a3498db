"""C++ CPU kernels as MindSpore AOT custom ops: depthwise convolution (much faster on CPU than the built-in
grouped convolution), bias + activation in one pass (`bias_act_op`, for folded BatchNorm in inference),
training-mode BatchNorm + activation (`batchnorm_train_op`), BatchNorm folding (`fold_batchnorm_op`) and im2col
(`im2col_op`, the stem as a 1x1 convolution).  The kernel library is compiled from the *_kernel.cc files here
with g++ on first use and cached (see `kernel_library`); without it, or off CPU, or with `portable` set,
built-in operators run."""
import contextlib
import hashlib
import logging
import os
import subprocess
import tempfile
from ctypes import CDLL
from pathlib import Path

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops

SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("depthwise_kernel.cc", "bias_act_kernel.cc", "batchnorm_kernel.cc", "im2col_kernel.cc"))
HEADERS = (Path(__file__).with_name("kernel_util.h"),)
STRIDES = (1, 2)

_library = {}
_build_target = {"device": None}  # set by `built_for`


def cache_dir() -> Path:
    """Folder of the compiled kernel: $MOBILENET_ZOO_CACHE, else ~/.cache/mobilenet_zoo."""
    return Path(os.environ.get("MOBILENET_ZOO_CACHE") or Path.home() / ".cache" / "mobilenet_zoo")


def compiler_flags() -> list:
    """g++ flags: AVX2 + FMA code where this CPU has them."""
    try:
        cpu_flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        cpu_flags = set()
    vector = ["-mavx2", "-mfma"] if {"avx2", "fma"} <= cpu_flags else []
    return ["-O3", *vector, "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared", "-std=c++17"]


def _build() -> str:
    source = b"".join(path.read_bytes() for path in SOURCES + HEADERS)
    flags = compiler_flags()
    key = hashlib.sha256(source + " ".join(flags).encode()).hexdigest()[:16]
    target = cache_dir() / f"depthwise_{key}.so"
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
            logging.getLogger(__name__).warning("depthwise C++ kernel unavailable, using the built-in "
                                                "convolution: %s", reason)
            _library["path"] = None
    return _library["path"]


def _conv_output_shape(x_shape, w_shape, stride):
    k = w_shape[2]
    return [x_shape[0], x_shape[1], (x_shape[2] + 2 * (k // 2) - k) // stride + 1,
            (x_shape[3] + 2 * (k // 2) - k) // stride + 1]


def _aot(library, symbol, out_shape, bprop=None, out_dtype=lambda x, *_: x):
    """ops.Custom for `symbol` of the kernel library; `out_shape` / `out_dtype` map the inputs' shapes / dtypes to
    the outputs' (by default one output of the first input's dtype)."""
    return ops.Custom(f"{library}:{symbol}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot",
                      bprop=bprop)


def _depthwise_grads(library, stride):
    return (_aot(library, f"DepthwiseInputGradS{stride}", lambda x, w, dy: x),
            _aot(library, f"DepthwiseWeightGradS{stride}", lambda x, w, dy: w))


def depthwise_op(library: str, stride: int) -> ops.Custom:
    """Custom op y = depthwise_conv(x, w) at `stride`, with its gradient ops as bprop."""
    input_grad, weight_grad = _depthwise_grads(library, stride)

    def bprop(x, w, out, dout):
        return input_grad(x, w, dout), weight_grad(x, w, dout)

    return _aot(library, f"DepthwiseForwardS{stride}", lambda x, w: _conv_output_shape(x, w, stride), bprop)


def depthwise_bias_act_op(library: str, stride: int, activation) -> ops.Custom:
    """Custom op y = activation(depthwise_conv(x, w) + bias[c]) at `stride` in one pass (inference with folded
    BatchNorm), with its gradient as bprop."""
    forward = depthwise_op(library, stride)
    input_grad, weight_grad = _depthwise_grads(library, stride)

    def bprop(x, w, bias, out, dout):
        dz = _activation_grad(ops.bias_add(forward(x, w), bias), dout, activation)
        return input_grad(x, w, dz), weight_grad(x, w, dz), dz.sum(axis=(0, 2, 3))

    return _aot(library, f"DepthwiseForward{ACTIVATION_SYMBOLS[activation]}S{stride}",
                lambda x, w, b: _conv_output_shape(x, w, stride), bprop)


def _activation_grad(z, dout, activation):
    """dout * activation'(z)."""
    if activation == "relu":
        return dout * (z > 0).astype(z.dtype)
    if activation == "relu6":
        return dout * ((z > 0) & (z < 6)).astype(z.dtype)
    if activation == "hswish":
        slope = ops.where(z >= 3, ops.ones_like(z), (2 * z + 3) / 6)  # d/dz z * relu6(z + 3) / 6
        return dout * ops.where(z > -3, slope, ops.zeros_like(z))
    return dout


def _bias_act_bprop(activation):
    def bprop(x, bias, out, dout):
        dz = _activation_grad(ops.bias_add(x, bias), dout, activation)
        return dz, dz.sum(axis=(0, 2, 3))
    return bprop


ACTIVATION_SYMBOLS = {None: "Identity", "relu": "ReLU", "relu6": "ReLU6", "hswish": "HSwish"}


@contextlib.contextmanager
def built_for(device_target: str):
    """Layers built inside this block use the C++ kernels only if `device_target` is "CPU" (outside such a
    block: if MindSpore's context device is), so a network can be built as it runs on another target."""
    previous = _build_target["device"]
    _build_target["device"] = device_target
    try:
        yield
    finally:
        _build_target["device"] = previous


def building_for_cpu() -> bool:
    """Whether layers built now run on CPU (see `built_for`)."""
    return (_build_target["device"] or ms.get_context("device_target")) == "CPU"


def cpu_library():
    """The kernel library when building for CPU, else None."""
    return kernel_library() if building_for_cpu() else None


def bias_act_op(activation):
    """Custom op y = activation(x + bias[c]) on NCHW x in one pass (`activation`: None, "relu", "relu6" or
    "hswish"), or None where the kernel library is unavailable or the target is not CPU."""
    library = cpu_library()
    if library is None:
        return None
    return _aot(library, f"Bias{ACTIVATION_SYMBOLS[activation]}", lambda x, b: x, _bias_act_bprop(activation))


def im2col_op(kernel_size: int, stride: int):
    """Custom op columns = im2col(x) for a k x k convolution with padding k // 2 at `stride` (1 or 2): (N, C, H, W)
    -> (N, C * k * k, Ho, Wo), column (c * k + kh) * k + kw, so that a 1x1 convolution with the weight reshaped
    to (out, C * k * k) is the convolution; its gradient is col2im.  None where the kernel library is
    unavailable or the target is not CPU."""
    library = cpu_library()
    if library is None or stride not in STRIDES:
        return None
    k, pad = kernel_size, kernel_size // 2
    col2im = _aot(library, f"Col2ImS{stride}", lambda x, cols: x)

    def bprop(x, out, dout):
        return (col2im(x, dout),)

    def out_shape(x):
        return [x[0], x[1] * k * k, (x[2] + 2 * pad - k) // stride + 1, (x[3] + 2 * pad - k) // stride + 1]

    return _aot(library, f"Im2ColS{stride}", out_shape, bprop)


def _fold_bprop(w, gamma, beta, mean, var, eps, out, dout):
    dw_folded, db_folded = dout
    invstd = 1.0 / ops.sqrt(var + eps)
    scale = gamma * invstd
    dw = dw_folded * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    dscale = (dw_folded * w).reshape(w.shape[0], -1).sum(axis=1) - db_folded * mean
    return (dw, dscale * invstd, db_folded, -db_folded * scale, -0.5 * dscale * gamma * invstd ** 3,
            ops.zeros_like(eps))


def fold_batchnorm_op():
    """Custom op (w', b') = fold(w, gamma, beta, mean, var, eps): a convolution weight w (out, ...) and the
    BatchNorm after it as one convolution with bias, w' = w * s, b' = beta - mean * s, s = gamma / sqrt(var +
    eps) (eps a 1-element tensor).  None where the kernel library is unavailable or the target is not CPU."""
    library = cpu_library()
    if library is None:
        return None

    def weight_and_bias(w, gamma, *_):
        return w, gamma

    return _aot(library, "FoldBatchNorm", weight_and_bias, _fold_bprop, out_dtype=weight_and_bias)


def batchnorm_train_op(activation):
    """Custom op (y, mean, var) = BatchNorm + `activation` in training mode on NCHW x, called as
    op(x, gamma, beta, eps) with eps a 1-element tensor: y = act(gamma * (x - mean) / sqrt(var + eps) + beta),
    mean and (biased) var over N, H, W.  Its gradient op recomputes the pre-activation from x.  None where the
    kernel library is unavailable or the target is not CPU."""
    library = cpu_library()
    if library is None:
        return None
    name = ACTIVATION_SYMBOLS[activation]

    def like_x_and_two_gammas(x, gamma, *_):  # y or dx, then two per-channel vectors
        return x, gamma, gamma

    grad = _aot(library, f"BNTrainGrad{name}", like_x_and_two_gammas, out_dtype=like_x_and_two_gammas)

    def bprop(x, gamma, beta, eps, out, dout):
        dx, dgamma, dbeta = grad(x, gamma, beta, eps, out[1], out[2], dout[0])
        return dx, dgamma, dbeta, ops.zeros_like(eps)

    return _aot(library, f"BNTrain{name}", like_x_and_two_gammas, bprop, out_dtype=like_x_and_two_gammas)


class Float32Kernels:
    """Mixin for cells with C++ kernels and a `portable` switch: the kernels are float32-only, so a cell that mixed
    precision marks for float16 or bfloat16 runs MindSpore's standard operators.  MindSpore's amp marks cells
    through `Cell.add_flags` (`Cell.to_float`, called by `mindspore/train/amp.py` for O2 and O3)."""

    def add_flags(self, **flags):
        if flags.get("fp16") or flags.get("bf16"):
            self.portable = True
        return super().add_flags(**flags)


class DepthwiseConv2d(Float32Kernels, nn.Conv2d):
    """`nn.Conv2d(channels, channels, k, stride, pad_mode="pad", padding=k // 2, group=channels)` (same
    parameters and checkpoints) computed by the C++ kernel on CPU.  With `portable` set (see
    `layers.use_portable_ops` or by mixed precision, see `Float32Kernels`), off CPU, or when the kernel cannot be
    built, the built-in convolution runs."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, pad_mode="pad", padding=0, group=1,
                 has_bias=False):
        super().__init__(in_channels, out_channels, kernel_size, stride, pad_mode=pad_mode, padding=padding,
                         group=group, has_bias=has_bias)
        k = kernel_size
        if not (in_channels == out_channels == group and pad_mode == "pad" and not has_bias
                and isinstance(k, int) and k % 2 == 1 and padding == k // 2 and stride in STRIDES):
            raise ValueError("DepthwiseConv2d needs group == in == out channels, an odd int kernel_size, "
                             f"padding kernel_size // 2, stride in {STRIDES} and no bias")
        self.portable = False
        self.library = cpu_library()
        self.kernel = depthwise_op(self.library, stride) if self.library else None

    def construct(self, x):
        return self.convolve(x, self.weight)

    def convolve(self, x, weight):
        """The convolution of `x` with `weight` (of this layer's weight shape)."""
        if self.portable or self.kernel is None:
            return self.conv2d(x, weight)
        return self.kernel(x, weight)

    def bias_act_op(self, activation):
        """Custom op (x, weight, bias) -> activation(conv(x, weight) + bias[c]) in one C++ pass (inference with
        folded BatchNorm), or None without the kernel."""
        if self.kernel is None:
            return None
        return depthwise_bias_act_op(self.library, self.stride[0], activation)
