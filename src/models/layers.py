"""Building blocks shared by the MobileNet families."""
import functools

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Parameter, Tensor

from src.distributed import rank_and_size
from src.kernels.batchnorm import batchnorm_train_op, fold_batchnorm_op
from src.kernels.bias_act import bias_act_op, bias_residual_op
from src.kernels.depthwise import STRIDES, depthwise_bias_act_op, depthwise_op
from src.kernels.im2col import im2col_op, stem_bias_act_op
from src.kernels.library import building_for_cpu, cpu_has_avx512, cpu_library
from src.kernels.pointwise import depthwise_pointwise_op, pointwise_bias_act_op, pointwise_residual_op
from src.kernels.squeeze_excite import global_mean_op

BN_MOMENTUM = 0.99
BN_EPS = 1e-3  # ours, torchvision's and TF's; timm's and mindcv's weights were trained with 1e-5


def batch_norm(eps: float = BN_EPS, sync: bool = False):
    """BatchNorm layer factory `norm(channels)`: `nn.BatchNorm2d` (or `nn.SyncBatchNorm`) with `eps` and momentum
    `BN_MOMENTUM`."""
    return functools.partial(nn.SyncBatchNorm if sync else nn.BatchNorm2d, eps=eps, momentum=BN_MOMENTUM)


def make_divisible(value: float, divisor: int = 8, min_value: int = None) -> int:
    """Round `value` to the nearest multiple of `divisor`, never going more than 10% below it."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class HSigmoid(nn.Cell):
    """relu6(x + 3) / 6: MindSpore's fused kernel (faster on CPU), or with `portable` set (see
    `use_portable_ops`) the same formula from primitives, which ONNX export understands."""

    def __init__(self):
        super().__init__()
        self.fused = nn.HSigmoid()
        self.portable = False

    def construct(self, x):
        if self.portable:
            return ops.relu6(x + 3.0) / 6.0
        return self.fused(x)


class HSwish(nn.Cell):
    """x * relu6(x + 3) / 6: MindSpore's fused kernel (faster on CPU), or with `portable` set (see
    `use_portable_ops`) the same formula from primitives, which ONNX export understands."""

    def __init__(self):
        super().__init__()
        self.fused = nn.HSwish()
        self.portable = False

    def construct(self, x):
        if self.portable:
            return x * ops.relu6(x + 3.0) / 6.0
        return self.fused(x)


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


class UnfoldConv2d(Float32Kernels, nn.Conv2d):
    """A dense k x k convolution (the stem) as im2col (C++ `im2col_op`, else `ops.unfold`) + a 1x1 convolution on
    CPU: oneDNN runs MindSpore's CPU Conv2D k x k on plain NCHW with its reference kernel (the 3 -> 16 stem at
    batch 32, 224x224: ~700 ms forward), while im2col + 1x1 runs as a GEMM (~10-16 ms).  Same parameters and
    checkpoints as `nn.Conv2d`; with `portable` set (see `use_portable_ops`; mixed precision sets it too, see
    `Float32Kernels`) or off CPU the built-in convolution runs."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, pad_mode="pad", padding=0, group=1,
                 has_bias=False):
        super().__init__(in_channels, out_channels, kernel_size, stride, pad_mode=pad_mode, padding=padding,
                         group=group, has_bias=has_bias)
        if not (group == 1 and pad_mode == "pad" and not has_bias and isinstance(kernel_size, int)
                and padding == kernel_size // 2 and isinstance(stride, int)):
            raise ValueError("UnfoldConv2d needs group 1, an int kernel_size and stride, padding kernel_size // 2 "
                             "and no bias")
        self.portable = not building_for_cpu()
        self.im2col = im2col_op(kernel_size, stride)  # C++ im2col (None: ops.unfold)
        self.direct = (self.im2col is not None and kernel_size == 3 and stride == 2 and in_channels <= 4
                       and out_channels % 2 == 0)

    def construct(self, x):
        return self.convolve(x, self.weight)

    def convolve(self, x, weight):
        """The convolution of `x` with `weight` (of this layer's weight shape)."""
        if self.portable:
            return self.conv2d(x, weight)
        k, stride, pad = self.kernel_size[0], self.stride[0], self.kernel_size[0] // 2
        n, c, h, w = x.shape
        if self.im2col is not None:
            columns = self.im2col(x)
        else:
            columns = ops.unfold(x, k, 1, pad, stride).reshape(
                n, c * k * k, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
        return ops.conv2d(columns, weight.reshape(self.out_channels, c * k * k, 1, 1))

    def bias_act_op(self, activation):
        """Custom op (x, weight, bias) -> activation(conv(x, weight) + bias[c]) computed directly for a 3x3 stem at
        stride 2 of up to 4 input channels and an even number of outputs (inference with folded BatchNorm), else
        None."""
        return stem_bias_act_op(activation) if self.direct else None


# Where our pointwise GEMM (with the bias + activation epilogue) beats MindSpore's Conv2D + a bias pass, measured
# at batch 32 on 2 cores: with AVX2 only up to 40 input channels (1.2-2x; 0.6-0.9x from 48 on, oneDNN using
# AVX-512); with AVX-512 every layer of these networks (up to 1024 x 1024: 1.0-4x, 16 -> 72 at 56x56 4x, 1024 x 1024
# at 7x7 1.8x since its columns run across images).
POINTWISE_MAX_INPUTS = 40
POINTWISE_MAX_WEIGHTS_AVX512 = 1024 * 1024


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` (a 1x1 convolution here) with `convolve(x, weight)`, as the other convolution layers."""

    def convolve(self, x, weight):
        return self.conv2d(x, weight)

    def bias_act_op(self, activation):
        """Custom op (x, weight, bias) -> activation(conv(x, weight) + bias[c]) in one C++ GEMM (inference with
        folded BatchNorm) for a 1x1 convolution on CPU where it is the faster (see `POINTWISE_MAX_INPUTS`), else
        None."""
        return pointwise_bias_act_op(activation) if self.uses_gemm() else None

    def bias_residual_op(self):
        """Custom op (x, weight, bias, residual) -> conv(x, weight) + bias[c] + residual in one C++ GEMM for a 1x1
        convolution on CPU where it is the faster (see `POINTWISE_MAX_INPUTS`), else None."""
        return pointwise_residual_op() if self.uses_gemm() else None

    def uses_gemm(self):
        """Whether this 1x1 convolution runs as our GEMM in inference (see `POINTWISE_MAX_INPUTS`)."""
        if not (self.kernel_size == (1, 1) and self.stride == (1, 1) and self.group == 1 and not self.has_bias
                and cpu_library() is not None):
            return False
        if cpu_has_avx512():
            return self.in_channels * self.out_channels <= POINTWISE_MAX_WEIGHTS_AVX512
        return self.in_channels <= POINTWISE_MAX_INPUTS


def use_portable_ops(net: nn.Cell) -> nn.Cell:
    """Switch every layer of `net` that has a faster CPU form (h-swish, h-sigmoid, global pooling, squeeze-excite
    gate, depthwise and dense k x k convolution, BatchNorm folded in inference, depthwise + pointwise in one op) to
    its portable form: the same mathematics from operators that ONNX export supports.  Returns `net`."""
    for _, cell in net.cells_and_names():
        if hasattr(cell, "portable"):
            cell.portable = True
    return net


ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": HSwish, "hsigmoid": HSigmoid}


class ConvBNAct(Float32Kernels, nn.SequentialCell):
    """Conv -> BatchNorm -> activation (a SequentialCell: parameter names `<i>.0.weight`, `<i>.1.gamma`, ...).

    With the C++ CPU kernels: in training BatchNorm (batch statistics) and activation are one op
    (`batchnorm_train_op`); in inference the BatchNorm is folded into the convolution, conv(x, w * s) +
    (beta - mean * s) with s = gamma / sqrt(var + eps), then bias + activation in one pass.  Otherwise (off CPU, or
    with `portable` set by `use_portable_ops` or by mixed precision, see `Float32Kernels`) conv, BatchNorm and
    activation run as written, which is what every amp level expects."""

    def __init__(self, layers, activation=None):
        super().__init__(layers)
        self.portable = False
        self.activation = activation
        self.bn_act = batchnorm_train_op(activation)  # training BatchNorm + activation (None: no kernels)
        # Inference: BatchNorm folded into the weight by one op; then conv + bias + activation (+ shortcut) in the
        # convolution's own fused op (depthwise, stem, pointwise GEMM) where it has one, else bias + activation
        # (or + shortcut) in one pass after the convolution.
        self.fold = fold_batchnorm_op()
        conv = layers[0]
        self.conv_bias_act = conv.bias_act_op(activation) if hasattr(conv, "bias_act_op") else None
        self.bias_act = bias_act_op(activation) if self.conv_bias_act is None else None
        self.bias_residual = bias_residual_op() if activation is None else None
        self.conv_bias_residual = conv.bias_residual_op() if activation is None and hasattr(conv, "bias_residual_op") \
            else None
        self.eps = Tensor([layers[1].eps], ms.float32)
        # Inference: the depthwise ConvBNAct before this one and this one as one op, set by the network where it has
        # such a pair (`separable_op`, run by `depthwise_then_pointwise`).
        self.separable = None

    def construct(self, x, residual=None):
        """conv -> BatchNorm -> activation of `x`, plus `residual` if given (in inference with the kernels, in
        the same pass as the bias of the folded BatchNorm)."""
        if residual is None:
            return self._conv_bn_act(x)
        if self.portable or self.bn_act is None or self.training or self.bias_residual is None:
            return self._conv_bn_act(x) + residual
        conv = self.cell_list[0]
        weight, bias = self.folded()
        if self.conv_bias_residual is not None:
            return self.conv_bias_residual(x, weight, bias, residual)
        return self.bias_residual(conv.convolve(x, weight), bias, residual)

    def _conv_bn_act(self, x):
        if self.portable or self.bn_act is None:
            for cell in self.cell_list:
                x = cell(x)
            return x
        # Kernels only: amp level O2 wraps the BatchNorm of `cell_list` (`_do_keep_batchnorm_fp32` in
        # mindspore/train/amp.py), but it marks this cell float16 first, which sets `portable`.
        conv, bn = self.cell_list[0], self.cell_list[1]
        if self.training and bn.use_batch_statistics is None:
            return self._train_fused(x, conv, bn)
        if self.training:
            for cell in self.cell_list:
                x = cell(x)
            return x
        weight, bias = self.folded()
        if self.conv_bias_act is not None:
            return self.conv_bias_act(x, weight, bias)
        return self.bias_act(conv.convolve(x, weight), bias)

    def folded(self):
        """(weight, bias) of the convolution with the BatchNorm folded in (inference, kernels only)."""
        conv, bn = self.cell_list[0], self.cell_list[1]
        return self.fold(conv.weight, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance, self.eps)

    def _train_fused(self, x, conv, bn):
        """conv, then BatchNorm on batch statistics + activation in one C++ op; the moving statistics are
        updated as MindSpore's BatchNorm does (unbiased variance, weight `bn.momentum` on the batch)."""
        x = conv(x)
        y, mean, var = self.bn_act(x, bn.gamma, bn.beta, self.eps)
        count = x.shape[0] * x.shape[2] * x.shape[3]
        unbiased = var * (count / max(count - 1, 1))
        ops.assign(bn.moving_mean, bn.moving_mean * (1.0 - bn.momentum) + mean * bn.momentum)
        ops.assign(bn.moving_variance, bn.moving_variance * (1.0 - bn.momentum) + unbiased * bn.momentum)
        return y


def separable_op(depthwise: ConvBNAct, pointwise: ConvBNAct, shortcut: bool = False):
    """The C++ op that runs `depthwise` (a depthwise ConvBNAct) then `pointwise` (a 1x1 ConvBNAct; with `shortcut`
    linear, adding a shortcut) in inference as one pass (`depthwise_pointwise_op`: the depthwise output stays in
    cache), to be set as `pointwise.separable`; None where there is none (no kernels, or a pair it does not have)."""
    conv, dense = depthwise.cell_list[0], pointwise.cell_list[0]
    if not (isinstance(conv, DepthwiseConv2d) and conv.kernel is not None and isinstance(dense, Conv2d)
            and dense.uses_gemm() and depthwise.bn_act is not None and pointwise.bn_act is not None):
        return None
    return depthwise_pointwise_op(conv.stride[0], depthwise.activation,
                                  "residual" if shortcut else pointwise.activation)


def depthwise_then_pointwise(depthwise: ConvBNAct, pointwise: ConvBNAct, x, shortcut=None):
    """pointwise(depthwise(x)) (+ `shortcut`, added by `pointwise`): in inference with the kernels as the one op
    `pointwise.separable` (see `separable_op`) on the folded weights; in training, with `portable` set or without
    that op, the two cells."""
    if pointwise.separable is None or depthwise.training or depthwise.portable or pointwise.portable:
        hidden = depthwise(x)
        return pointwise(hidden) if shortcut is None else pointwise(hidden, shortcut)
    weight, bias = depthwise.folded()
    dense_weight, dense_bias = pointwise.folded()
    if shortcut is None:
        return pointwise.separable(x, weight, bias, dense_weight, dense_bias)
    return pointwise.separable(x, weight, bias, dense_weight, dense_bias, shortcut)


def conv_bn_act(in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                activation: str = "relu", norm=None) -> ConvBNAct:
    """Conv (symmetric padding k // 2, no bias; a depthwise one as `DepthwiseConv2d`, a dense k x k one as
    `UnfoldConv2d`) -> BatchNorm (`norm(channels)`, see `batch_norm`; default eps `BN_EPS`) -> activation (None for a
    linear layer), as a `ConvBNAct`."""
    if 1 < groups == in_channels == out_channels:
        conv = DepthwiseConv2d
    else:
        conv = UnfoldConv2d if kernel_size > 1 else Conv2d
    layers = [
        conv(in_channels, out_channels, kernel_size, stride, pad_mode="pad", padding=kernel_size // 2,
             group=groups, has_bias=False),
        (norm or batch_norm())(out_channels),
    ]
    if activation:
        layers.append(ACTIVATIONS[activation]())
    return ConvBNAct(layers, activation)


class GlobalAvgPool(Float32Kernels, nn.Cell):
    """Mean over height and width: (N, C), or (N, C, 1, 1) with `keep_dims`.  The C++ mean on CPU
    (`global_mean_op`); else an average pool over the whole map (faster backward than a mean: no Tile /
    ReduceSum); with `portable` set (see `use_portable_ops`, `Float32Kernels`) `ops.mean`, which ONNX export
    supports."""

    def __init__(self, keep_dims: bool = False):
        super().__init__()
        self.keep_dims = keep_dims
        self.portable = False
        self.mean = global_mean_op()

    def construct(self, x):
        if self.portable:
            return ops.mean(x, axis=(2, 3), keep_dims=self.keep_dims)
        if self.mean is None:
            pooled = ops.avg_pool2d(x, kernel_size=(x.shape[2], x.shape[3]))
        else:
            pooled = self.mean(x)
        return pooled if self.keep_dims else pooled.reshape(x.shape[0], x.shape[1])


HASH_MULTIPLIERS = (25883, 13613)  # odd and < 2**15: h * m < 2**31 for 16-bit h, never an int32 overflow
HASH_SHIFTS = (8, 7, 9)
HASH_LEVELS = 1 << 16


def hash16(h):
    """A bijection of 16-bit values (int32 tensor) with good avalanche: xor-shift, multiply mod 2**16, three times.
    Exact on every target: products stay below 2**31 (int32 overflow behaviour is undocumented on Ascend) and the
    right shifts are floor divisions of values below 2**24 (Ascend divides int32 through float32)."""
    first, second, third = HASH_SHIFTS
    h = ops.bitwise_xor(h, ops.floor_divide(h, 1 << first))
    h = ops.bitwise_and(h * HASH_MULTIPLIERS[0], HASH_LEVELS - 1)
    h = ops.bitwise_xor(h, ops.floor_divide(h, 1 << second))
    h = ops.bitwise_and(h * HASH_MULTIPLIERS[1], HASH_LEVELS - 1)
    return ops.bitwise_xor(h, ops.floor_divide(h, 1 << third))


def dropout_levels(seed: int, calls, size: int):
    """16-bit hash levels (int32, `size` values) of (seed, call counter, element index), each word mixed in turn;
    the index's low 16 bits last and mixed twice, so every block of 65,536 elements gets every level exactly once.
    int32 only: MindSpore's Ascend AI Core kernels have no float64 Sin / Floor."""
    h = ops.zeros((), ms.int32)
    for word in (Tensor(seed % HASH_LEVELS, ms.int32), Tensor(seed // HASH_LEVELS % HASH_LEVELS, ms.int32),
                 ops.bitwise_and(calls, HASH_LEVELS - 1), ops.floor_divide(calls, HASH_LEVELS)):
        h = hash16(ops.bitwise_xor(h, word))
    index = ops.arange(0, size, dtype=ms.int32)
    h = hash16(ops.bitwise_xor(h, ops.floor_divide(index, HASH_LEVELS)))
    return hash16(hash16(ops.bitwise_xor(h, ops.bitwise_and(index, HASH_LEVELS - 1))))


class Dropout(nn.Cell):
    """Inverted dropout whose mask is a hash of (seed, call counter, element index) (`dropout_levels`), so that runs
    with the same seed are bitwise reproducible (MindSpore's `nn.Dropout` is not) and a resumed run continues the
    same masks: the counter is a Parameter, saved in checkpoints.  An element is kept when its level is at least
    round(p * 65536) and scaled by 65536 / (65536 - that), which is unbiased.  Identity in inference mode."""

    def __init__(self, p: float, seed: int = 0):
        super().__init__()
        self.p = p
        self.seed = seed
        self.threshold = round(p * HASH_LEVELS)
        self.scale = HASH_LEVELS / (HASH_LEVELS - self.threshold)
        self.calls = Parameter(Tensor(0, ms.int32), name="calls", requires_grad=False)

    def construct(self, x):
        if not self.training:
            return x
        calls = ops.assign_add(self.calls, ops.ones((), ms.int32))
        levels = ops.stop_gradient(dropout_levels(self.seed, calls, x.size).reshape(x.shape))
        return x * (levels >= self.threshold).astype(x.dtype) * self.scale


def make_dropout(p: float) -> nn.Cell:
    """`Dropout(p)` seeded from MindSpore's global seed plus the rank (ranks drop different units), or an identity
    when p is 0."""
    return Dropout(p, (ms.get_seed() or 0) + rank_and_size()[0]) if p > 0 else nn.Identity()
