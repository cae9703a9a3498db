"""The blocked layout: a lowered network's `features` (stem to last convolution), in training and inference, on
tensors of shape (N, ceil(C / B), H, W, B), B = 16 with AVX-512 (oneDNN's nChw16c), 8 otherwise, so that oneDNN's
blocked depthwise and 1x1 convolutions (forward and backward) and our BatchNorm + activation work on whole vectors of
channels (blocked_kernel.cc; README "Speed on CPU" measures them against our NCHW kernels per layer).  The stem reads
NCHW and writes blocked, the region ends with one reorder back to NCHW, so what enters and leaves `features` is
unchanged.  `blocked_features` builds the region from the lowered NCHW cells (their Parameter objects), or returns
None where a cell in it has no blocked form (then the network keeps the NCHW cells)."""
from ctypes import CDLL, c_int64

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor

from src.kernels.batchnorm import batchnorm_train_op
from src.kernels.bias_act import ACTIVATION_SYMBOLS
from src.kernels.depthwise import conv_output_shape, padding_symbol
from src.kernels.fused import (DepthwiseConvBNAct, DepthwisePointwise, FusedCell, PointwiseConvBNAct, ShortcutBlock,
                               SqueezeExcite, StemConvBNAct, update_moving_statistics)
from src.kernels.library import aot, blocked_block, blocked_library
from src.models import mobilenet_v3


RESIDUAL = "BlockedPointwiseResidual"  # a linear 1x1 plus the shortcut


def _op(symbol, out_shape, bprop=None, out_dtype=lambda x, *_: x):
    return aot(symbol, out_shape, bprop, out_dtype, library=blocked_library())


def _sequence(cells: list) -> nn.SequentialCell:
    """nn.SequentialCell(cells) with the parameters' names (and states) as they were: SequentialCell prefixes them
    with the cells' positions (mindspore/nn/layer/container.py, SequentialCell.__init__)."""
    saved = [(param, param.name, param.is_init) for cell in cells for param in cell.get_parameters()]
    sequence = nn.SequentialCell(cells)
    for param, name, is_init in saved:
        param.name, param.is_init = name, is_init
    return sequence


def _blocks(channels: int) -> int:
    return -(-channels // blocked_block())


def _conv_train_op(kind: str, suffix: str, out_shape):
    """Custom op y = conv(x, w) of `kind` (Stem: x NCHW, Depthwise, Pointwise) by oneDNN, with its gradients (the
    stem's input gradient is zero: its input is the image) as bprop."""
    input_grad = None if kind == "Stem" else _op(f"Blocked{kind}InputGrad{suffix}", lambda x, w, dy: x)
    weight_grad = _op(f"Blocked{kind}WeightGrad{suffix}", lambda x, w, dy: w)

    def bprop(x, w, out, dout):
        dx = ops.zeros_like(x) if input_grad is None else input_grad(x, w, dout)
        return dx, weight_grad(x, w, dout)

    return _op(f"Blocked{kind}Train{suffix}", out_shape, bprop)


class BlockedConvBNAct(FusedCell):
    """A lowered conv -> BatchNorm -> activation on blocked tensors (the stem's input is NCHW), plus the shortcut
    with `construct(x, residual)` after a linear 1x1.  Training: oneDNN's convolution, then our BatchNorm on batch
    statistics + activation in one pass, the moving statistics updated as MindSpore's BatchNorm does (as
    fused.ConvBNAct).  Inference: one op taking the weight and the BatchNorm's parameters, which folds them into the
    convolution's weight and bias once per version (kept in the op while the parameters stay bitwise the same), then
    runs oneDNN's convolution with the bias, the activation and the shortcut fused."""

    def __init__(self, cell):
        super().__init__()
        self.conv, self.bn = cell.conv, cell.bn
        self.eps = Tensor([cell.bn.eps], ms.float32)
        self.out_channels = cell.conv.out_channels
        self.activation, self.stride = cell.activation, cell.conv.stride[0]
        self.same = cell.conv.pad_mode == "same"
        self.kind = ("Pointwise" if isinstance(cell, PointwiseConvBNAct)
                     else "Stem" if isinstance(cell, StemConvBNAct) else "Depthwise")
        block, stride = blocked_block(), self.stride
        act = ACTIVATION_SYMBOLS[cell.activation]

        def out_shape(x, w, *_):
            return [x[0], _blocks(w[0]), *conv_output_shape(x, w, stride)[2:], block]

        self.op_residual = None
        self.bn_act = batchnorm_train_op(cell.activation, "Blocked", blocked_library())
        if self.kind == "Pointwise":
            self.symbol = f"BlockedPointwise{act}"
            self.conv_train = _conv_train_op("Pointwise", "", out_shape)
            if cell.activation is None:
                self.op_residual = _op(RESIDUAL, lambda x, w, *bn_and_r: bn_and_r[-1])
        else:
            suffix = padding_symbol(stride, self.same)
            self.symbol = f"Blocked{self.kind}{act}{suffix}"
            self.conv_train = _conv_train_op(self.kind, suffix, out_shape)
        self.op = _op(self.symbol, out_shape)

    def network_inputs(self):
        """The convolution's weight and its BatchNorm as the inference ops take them (they fold them once per
        version, blocked_kernel.cc RunInference)."""
        bn = self.bn
        return self.conv.weight, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance, self.eps

    def network_layer(self, plan, x: int, residual: int = -1) -> int:
        return plan.add(self.symbol if residual < 0 else RESIDUAL, x, 6, self.stride, residual=residual)

    def construct(self, x, residual=None):
        bn = self.bn
        if self.training:
            y = self.conv_train(x, self.conv.weight)
            z, mean, var = self.bn_act(y, bn.gamma, bn.beta, self.eps)
            update_moving_statistics(bn, mean, var, y.shape[0] * y.shape[2] * y.shape[3])
            return z if residual is None else z + residual
        if residual is None:
            return self.op(x, *self.network_inputs())
        return self.op_residual(x, *self.network_inputs(), residual)


class BlockedPointwiseDepthwise(FusedCell):
    """A 1x1 conv -> BatchNorm -> act and the 3x3 depthwise conv -> BatchNorm -> act after it (the same activation,
    padding 1): in inference one oneDNN primitive (its depthwise post-op) that never writes the 1x1's output whole;
    in training the two cells.  Measured per layer pair of MobileNetV1 and V3 at batch 32 (README "Speed on CPU"):
    0.6-0.95x the two primitives' time where the 1x1's outputs fill whole blocks; where they do not (72, 88, 120
    channels at 16 lanes) oneDNN runs a generic fusion that measured up to 1.1x, so those pairs stay apart."""

    def __init__(self, pointwise: BlockedConvBNAct, depthwise: BlockedConvBNAct):
        super().__init__()
        self.pointwise, self.depthwise = pointwise, depthwise
        self.out_channels = depthwise.out_channels
        block, stride = blocked_block(), depthwise.stride

        def out_shape(x, w, *rest):
            dw = rest[5]
            return [x[0], _blocks(dw[0]), *conv_output_shape(x, dw, stride)[2:], block]

        self.symbol = f"BlockedPointwiseDepthwise{ACTIVATION_SYMBOLS[depthwise.activation]}S{stride}"
        self.op = _op(self.symbol, out_shape)

    @staticmethod
    def fusable(pointwise, depthwise) -> bool:
        return (isinstance(pointwise, BlockedConvBNAct) and isinstance(depthwise, BlockedConvBNAct)
                and pointwise.kind == "Pointwise" and depthwise.kind == "Depthwise"
                and pointwise.activation is not None and pointwise.activation == depthwise.activation
                and depthwise.conv.kernel_size[0] == 3 and not (depthwise.same and depthwise.stride == 2)
                and pointwise.out_channels % blocked_block() == 0)

    def network_layer(self, plan, x: int) -> int:
        return plan.add(self.symbol, x, 12, self.depthwise.stride, weight=6)

    def network_inputs(self):
        return self.pointwise.network_inputs() + self.depthwise.network_inputs()

    def construct(self, x):
        if self.training:
            return self.depthwise(self.pointwise(x))
        return self.op(x, *self.pointwise.network_inputs(), *self.depthwise.network_inputs())


class DenseAct(FusedCell):
    """A dense layer (float32, 2-D input) and the activation after it (the cells `dense` and `act`, as a network's
    head has them): in inference one oneDNN inner product with the bias and the activation fused (blocked_kernel.cc
    Dense), in training the two cells.  It answers `in_channels`, `out_channels` and `has_bias` as the dense layer."""

    def __init__(self, dense: nn.Dense, act: nn.Cell, activation: str):
        super().__init__()
        self.dense, self.act = dense, act
        self.in_channels, self.out_channels, self.has_bias = dense.in_channels, dense.out_channels, dense.has_bias
        self.op = _op(f"BlockedDense{'' if dense.has_bias else 'NoBias'}{ACTIVATION_SYMBOLS[activation]}",
                      lambda x, w, *_: [x[0], w[0]])

    def construct(self, x):
        if self.training or len(x.shape) != 2:
            return self.act(self.dense(x))
        if self.dense.has_bias:
            return self.op(x, self.dense.weight, self.dense.bias)
        return self.op(x, self.dense.weight)


class BlockedSqueezeExcite(FusedCell):
    """A lowered squeeze-excite on blocked tensors as one op of ours, an image at a time (the channel means, the two
    small convolutions with their biases, ReLU, the h-sigmoid gate and the scaling; blocked_kernel.cc SqueezeExcite),
    its gradient one op too (which computes the means and the small layers again from its input)."""

    def __init__(self, se: SqueezeExcite):
        super().__init__()
        self.reduce, self.relu, self.expand = se.reduce, se.relu, se.expand
        self.out_channels = se.reduce.in_channels
        grad = _op("BlockedSqueezeExciteGrad", lambda x, w1, b1, w2, b2, dy: (x, w1, b1, w2, b2),
                   out_dtype=lambda x, *_: (x,) * 5)

        def bprop(x, w1, b1, w2, b2, out, dout):
            return grad(x, w1, b1, w2, b2, dout)

        self.op = _op("BlockedSqueezeExcite", lambda x, *_: x, bprop)

    def network_layer(self, plan, x: int) -> int:
        return plan.add("BlockedSqueezeExcite", x, 4, 0)

    def network_inputs(self):
        return self.reduce.weight, self.reduce.bias, self.expand.weight, self.expand.bias

    def construct(self, x):
        return self.op(x, *self.network_inputs())


class BlockedShortcut(FusedCell):
    """An inverted residual block with its shortcut on blocked tensors: the block's cells, the last (a linear 1x1)
    adding the block's input in its output pass."""

    def __init__(self, cells: list):
        super().__init__()
        self.body = _sequence(cells[:-1])
        self.last = cells[-1]
        self.out_channels = self.last.out_channels

    def network_layer(self, plan, x: int) -> int:
        plan.keep.add(x)
        y = x
        for cell in self.body.cell_list:
            y = cell.network_layer(plan, y)
        plan.keep.remove(x)
        return self.last.network_layer(plan, y, residual=x)

    def network_inputs(self):
        inputs = ()
        for cell in self.body.cell_list:
            inputs = inputs + cell.network_inputs()
        return inputs + self.last.network_inputs()

    def construct(self, x):
        return self.last(self.body(x), x)


class _NetworkPlan:
    """The description of a BlockedNetwork op (blocked_kernel.cc): its layers, each reading a slot (0: the network's
    input) and writing another one that no later layer still needs (`keep`: the slots of open shortcuts), and its
    inputs after (id, x): each layer's in turn."""

    def __init__(self):
        self.layers, self.inputs, self.keep = [], 2, set()

    def add(self, symbol: str, x: int, inputs: int, stride: int, weight: int = 0, residual: int = -1) -> int:
        out = min(slot for slot in range(1, len(self.keep) + 4) if slot not in self.keep | {x, residual})
        self.layers.append((symbol, x, residual, out, self.inputs, inputs, stride, weight))
        self.inputs += inputs
        return out

    def create(self):
        """The network's id in the library, or None where it refuses a layer."""
        library = CDLL(blocked_library())
        library.BlockedNetworkNew.restype = c_int64
        network = library.BlockedNetworkNew()
        for symbol, *numbers in self.layers:
            if library.BlockedNetworkAdd(c_int64(network), symbol.encode(), *numbers) != 0:
                return None
        return network


class BlockedFeatures(FusedCell):
    """`features` on the blocked layout: the blocked cells (`blocked`), then one reorder to NCHW of `channels`
    channels (its gradient the reorder back).  In inference all of it is one op (`network`, blocked_kernel.cc
    BlockedNetwork: the cells' inference ops called in sequence inside one MindSpore op, bitwise the same result);
    `network = None` runs the cells' ops one by one."""

    def __init__(self, blocked: list, channels: int):
        super().__init__()
        self.blocked = _sequence(blocked)
        block = blocked_block()
        from_nchw = _op("BlockedFromNCHW", lambda dy: [dy[0], _blocks(dy[1]), dy[2], dy[3], block])

        def bprop(x, out, dout):
            return (from_nchw(dout),)

        self.to_nchw = _op("BlockedToNCHW", lambda x: [x[0], channels, x[2], x[3]], bprop)
        plan, slot = _NetworkPlan(), 0
        for cell in blocked:
            slot = cell.network_layer(plan, slot)
        network = plan.create()
        strides = [layer[6] for layer in plan.layers if layer[6] > 0]

        def out_shape(network_id, x, *_):
            size = x[2:]
            for stride in strides:
                size = [(s - 1) // stride + 1 for s in size]
            return [x[0], channels, *size]

        self.network = None if network is None else _op("BlockedNetwork", out_shape, out_dtype=lambda _, x, *r: x)
        self.network_id = Tensor([-1 if network is None else network], ms.int64)

    def network_inputs(self):
        inputs = ()
        for cell in self.blocked.cell_list:
            inputs = inputs + cell.network_inputs()
        return inputs

    def construct(self, x):
        if self.training or self.network is None:
            return self.to_nchw(self.blocked(x))
        return self.network(self.network_id, x, *self.network_inputs())


def _blocked_cells(cell, first: bool):
    """The blocked cells computing `cell` (a lowered cell of `features`), or None."""
    if isinstance(cell, nn.Identity):
        return []
    bns = [part.bn for part in (cell, getattr(cell, "depthwise", None), getattr(cell, "pointwise", None))
           if hasattr(part, "bn")]
    if any(bn.use_batch_statistics is not None for bn in bns):
        return None  # a BatchNorm set to its moving statistics in training (or batch statistics in inference)
    if type(cell) is StemConvBNAct:
        return [BlockedConvBNAct(cell)] if first else None
    if first:
        return None
    if type(cell) in (DepthwiseConvBNAct, PointwiseConvBNAct):
        return [BlockedConvBNAct(cell)]
    if type(cell) is DepthwisePointwise:
        return [BlockedConvBNAct(cell.depthwise), BlockedConvBNAct(cell.pointwise)]
    if type(cell) is SqueezeExcite:
        return [BlockedSqueezeExcite(cell)]
    if type(cell) is ShortcutBlock:
        cells = _blocked_sequence(cell.block.cell_list[:cell.last + 1], first=False)
        if not cells or not isinstance(cells[-1], BlockedConvBNAct) or cells[-1].op_residual is None:
            return None
        return [BlockedShortcut(cells)]
    if type(cell) is mobilenet_v3.InvertedResidual and not cell.use_residual:
        return _blocked_sequence(cell.block.cell_list, first=False)
    return None


def _blocked_sequence(cells, first: bool):
    """The blocked cells computing `cells` (each 1x1 followed by a depthwise convolution it can be fused with as one
    BlockedPointwiseDepthwise), or None."""
    out = []
    for cell in cells:
        converted = _blocked_cells(cell, first and not out)
        if converted is None:
            return None
        for blocked in converted:
            if out and BlockedPointwiseDepthwise.fusable(out[-1], blocked):
                out[-1] = BlockedPointwiseDepthwise(out[-1], blocked)
            else:
                out.append(blocked)
    return out


def blocked_features(features: nn.SequentialCell):
    """A `BlockedFeatures` for a lowered network's `features` (a stem first, then cells that all have a blocked
    form), or None (then the network keeps NCHW): where the blocked library is unavailable, a cell stayed standard
    or float16, or the features do not start with a stem."""
    if type(features) is not nn.SequentialCell or blocked_library() is None:
        return None
    cells = _blocked_sequence(features.cell_list, first=True)
    if not cells:
        return None
    return BlockedFeatures(cells, cells[-1].out_channels)
