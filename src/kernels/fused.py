"""Cells that run parts of a standard network on the C++ kernels: what `lower_for_cpu` (lowering.py) puts in place of
the standard cells.  Each holds the standard cells it replaces (so the same Parameter objects, under the same names:
checkpoints, optimizers and EMA see no difference) and computes the same mathematics; training and inference
(`set_train`) both work."""
import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor

from src.kernels.batchnorm import batchnorm_train_op, fold_batchnorm_op
from src.kernels.bias_act import bias_act_op, bias_residual_op
from src.kernels.depthwise import depthwise_bias_act_op, depthwise_op
from src.kernels.im2col import im2col_op, stem_bias_act_op
from src.kernels.pointwise import depthwise_pointwise_op, pointwise_bias_act_op, pointwise_residual_op
from src.kernels.squeeze_excite import global_mean_op, hsigmoid_gate_op


def update_moving_statistics(bn, mean, var, count):
    """Update `bn`'s moving mean and variance from a batch's mean and biased variance over `count` values, as
    MindSpore's BatchNorm does in training (the unbiased variance)."""
    unbiased = var * (count / max(count - 1, 1))
    ops.assign(bn.moving_mean, bn.moving_mean * (1.0 - bn.momentum) + mean * bn.momentum)
    ops.assign(bn.moving_variance, bn.moving_variance * (1.0 - bn.momentum) + unbiased * bn.momentum)


class FusedCell(nn.Cell):
    """A cell that holds cells of a built network: their parameters keep the names they have there (no prefix is
    added when they are set as attributes here)."""

    def __init__(self):
        super().__init__(auto_prefix=False)

    @property
    def compile_phase(self):
        return self._compile_phase

    @compile_phase.setter
    def compile_phase(self, value):
        # MindSpore sets the phase on every cell below the one called, at every call (mindspore/graph/api.py,
        # _CellGraphExecutor.compile: `obj.compile_phase = phase`; nn/cell.py's setter recurses): 159 cells of a
        # lowered MobileNetV3-small, 0.5 ms of a 1.8 ms call at batch 1 on one thread.  A fused cell that already
        # has this phase leaves its subtree alone (MindSpore 2.10 reads only the called cell's phase:
        # parallel/strategy.py).
        if value != self._compile_phase:
            nn.Cell.compile_phase.fset(self, value)


class ConvBNAct(FusedCell):
    """conv -> BatchNorm -> activation (the cells of a standard sequence: `conv`, `bn`, `act`, which is None for a
    linear layer) on the kernels.  Training: the convolution (`convolve`), then BatchNorm on batch statistics and the
    activation in one op, the moving statistics updated as MindSpore's BatchNorm does.  Inference: the BatchNorm
    folded into the convolution, conv(x, w * s) + (beta - mean * s) with s = gamma / sqrt(var + eps), then bias +
    activation (or + a shortcut, `construct(x, residual)`) in the convolution's own fused op where it has one
    (`conv_bias_act`, `conv_bias_residual`), else in one pass after it.  A BatchNorm set to use its moving statistics
    in training (`use_batch_statistics`) runs as MindSpore's."""

    def __init__(self, conv, bn, act, activation, conv_bias_act=None, conv_bias_residual=None):
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act
        self.activation = activation
        self.bn_act = batchnorm_train_op(activation)
        self.fold = fold_batchnorm_op()
        self.eps = Tensor([bn.eps], ms.float32)
        self.conv_bias_act = conv_bias_act
        self.bias_act = bias_act_op(activation) if conv_bias_act is None else None
        self.conv_bias_residual = conv_bias_residual
        self.bias_residual = bias_residual_op() if activation is None and conv_bias_residual is None else None

    def convolve(self, x, weight):
        """The convolution of `x` with `weight` (of the conv's weight shape)."""
        return self.conv.conv2d(x, weight)

    def folded(self):
        """(weight, bias) of the convolution with the BatchNorm folded in (inference)."""
        bn = self.bn
        return self.fold(self.conv.weight, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance, self.eps)

    def construct(self, x, residual=None):
        """conv -> BatchNorm -> activation of `x`, plus `residual` if given (only after a linear layer; in inference
        in the same pass as the folded BatchNorm's bias)."""
        if residual is None:
            return self._conv_bn_act(x)
        if self.training:
            return self._conv_bn_act(x) + residual
        weight, bias = self.folded()
        if self.conv_bias_residual is not None:
            return self.conv_bias_residual(x, weight, bias, residual)
        return self.bias_residual(self.convolve(x, weight), bias, residual)

    def _conv_bn_act(self, x):
        bn = self.bn
        if self.training and bn.use_batch_statistics is None:
            x = self.convolve(x, self.conv.weight)
            y, mean, var = self.bn_act(x, bn.gamma, bn.beta, self.eps)
            update_moving_statistics(bn, mean, var, x.shape[0] * x.shape[2] * x.shape[3])
            return y
        if self.training:
            x = bn(self.convolve(x, self.conv.weight))
            return x if self.act is None else self.act(x)
        weight, bias = self.folded()
        if self.conv_bias_act is not None:
            return self.conv_bias_act(x, weight, bias)
        return self.bias_act(self.convolve(x, weight), bias)


class DepthwiseConvBNAct(ConvBNAct):
    """`ConvBNAct` of a depthwise convolution (k x k, padding k // 2 or "same" at stride 2, stride 1 or 2): forward
    and gradients by the C++ kernel (the built-in grouped convolution runs as im2col + GEMM on CPU), bias +
    activation in its output pass in inference."""

    def __init__(self, conv, bn, act, activation):
        stride, self.same = conv.stride[0], conv.pad_mode == "same"
        super().__init__(conv, bn, act, activation,
                         conv_bias_act=depthwise_bias_act_op(stride, activation, self.same))
        self.kernel = depthwise_op(stride, self.same)

    def convolve(self, x, weight):
        return self.kernel(x, weight)


class StemConvBNAct(ConvBNAct):
    """`ConvBNAct` of a dense k x k convolution (the stem; padding k // 2, or "same" at stride 2) as C++ im2col + a
    1x1 convolution: oneDNN runs MindSpore's CPU Conv2D k x k on plain NCHW with its reference kernel (the 3 -> 16 stem
    at batch 32, 224x224: ~700 ms forward), while im2col + 1x1 runs as a GEMM (~10-16 ms).  In inference a 3x3
    stride-2 stem of up to 4 input channels and an even number of outputs is one direct op with bias + activation."""

    def __init__(self, conv, bn, act, activation):
        k, stride, same = conv.kernel_size[0], conv.stride[0], conv.pad_mode == "same"
        direct = k == 3 and stride == 2 and conv.in_channels <= 4 and conv.out_channels % 2 == 0
        super().__init__(conv, bn, act, activation,
                         conv_bias_act=stem_bias_act_op(activation, same) if direct else None)
        self.im2col = im2col_op(k, stride, same)

    def convolve(self, x, weight):
        c = x.shape[1]
        taps = c * self.conv.kernel_size[0] * self.conv.kernel_size[1]
        return ops.conv2d(self.im2col(x), weight.reshape(self.conv.out_channels, taps, 1, 1))


class PointwiseConvBNAct(ConvBNAct):
    """`ConvBNAct` of a 1x1 convolution: MindSpore's (oneDNN's) convolution in training; in inference, where `gemm`,
    our C++ GEMM with the folded BatchNorm's bias and the activation (or the shortcut) in its epilogue."""

    def __init__(self, conv, bn, act, activation, gemm: bool):
        super().__init__(conv, bn, act, activation,
                         conv_bias_act=pointwise_bias_act_op(activation) if gemm else None,
                         conv_bias_residual=pointwise_residual_op() if gemm and activation is None else None)
        self.gemm = gemm


class DepthwisePointwise(FusedCell):
    """A `DepthwiseConvBNAct` then a `PointwiseConvBNAct` using the GEMM (+ a shortcut, `construct(x, shortcut)`,
    after a linear one at stride 1): in inference one C++ op on the folded weights, so that the depthwise output
    stays in cache (`depthwise_pointwise_op`: `op`, and `op_shortcut` where there is one); in training the two
    cells."""

    def __init__(self, depthwise: DepthwiseConvBNAct, pointwise: PointwiseConvBNAct):
        super().__init__()
        self.depthwise, self.pointwise = depthwise, pointwise
        stride, activation = depthwise.conv.stride[0], depthwise.activation
        self.op = depthwise_pointwise_op(stride, activation, pointwise.activation, depthwise.same)
        self.op_shortcut = depthwise_pointwise_op(stride, activation, "residual") if pointwise.activation is None \
            else None

    def construct(self, x, shortcut=None):
        if self.training:
            hidden = self.depthwise(x)
            return self.pointwise(hidden) if shortcut is None else self.pointwise(hidden, shortcut)
        weight, bias = self.depthwise.folded()
        dense_weight, dense_bias = self.pointwise.folded()
        if shortcut is None:
            return self.op(x, weight, bias, dense_weight, dense_bias)
        return self.op_shortcut(x, weight, bias, dense_weight, dense_bias, shortcut)


class ShortcutBlock(FusedCell):
    """An inverted residual block (`block`: a sequence whose last cell that is not an identity takes a shortcut:
    a linear `ConvBNAct` or a `DepthwisePointwise`) plus its input, the input added by that last cell (in inference in
    its epilogue)."""

    def __init__(self, block: nn.SequentialCell):
        super().__init__()
        self.block = block
        cells = block.cell_list
        self.last = max(i for i, cell in enumerate(cells) if not isinstance(cell, nn.Identity))

    def construct(self, x):
        out = x
        for cell in self.block.cell_list[:self.last]:
            out = cell(out)
        return self.block.cell_list[self.last](out, x)


class GlobalMean(FusedCell):
    """Mean over height and width by the C++ op (with its gradient): (N, C), or (N, C, 1, 1) with `keep_dims`."""

    def __init__(self, keep_dims: bool):
        super().__init__()
        self.keep_dims = keep_dims
        self.mean = global_mean_op()

    def construct(self, x):
        pooled = self.mean(x)
        return pooled if self.keep_dims else pooled.reshape(x.shape[0], x.shape[1])


class SqueezeExcite(FusedCell):
    """Squeeze-excite (the cells `pool`, `reduce`, `relu`, `expand` of a standard one) with the h-sigmoid gate and
    the scaling of the input as one C++ op."""

    def __init__(self, se):
        super().__init__()
        self.pool, self.reduce, self.relu, self.expand = se.pool, se.reduce, se.relu, se.expand
        self.gate_and_scale = hsigmoid_gate_op()

    def construct(self, x):
        return self.gate_and_scale(x, self.expand(self.relu(self.reduce(self.pool(x)))))
