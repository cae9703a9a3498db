"""The CPU lowering step: `lower_for_cpu(net)` rewrites a built network of standard cells for the C++ kernels, rule by
rule (`RULES`), as PyTorch's `fuse_modules` and ONNX Runtime's graph transformers rewrite a plain model for one
backend.  Each rule matches a cell (or a run of cells of an `nn.SequentialCell`) and puts a fused cell of fused.py,
holding the same Parameter objects, in its place; what no rule matches (another padding, a float16 cell, an unknown
activation) stays as written."""
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import mindspore as ms
import mindspore.nn as nn

from src.kernels.blocked import DenseAct, blocked_features
from src.kernels.depthwise import STRIDES
from src.kernels.fused import (ConvBNAct, DepthwiseConvBNAct, DepthwisePointwise, GlobalMean, PointwiseConvBNAct,
                               ShortcutBlock, SqueezeExcite, StemConvBNAct)
from src.kernels.library import blocked_library, cpu_has_avx512, kernel_library
from src.kernels.pointwise import SEPARABLE
from src.model_utils.cli import log
from src.models import layers, mobilenet_v1, mobilenet_v3

# The last step, on the whole of a network's `features` (blocked.py): the blocked layout.
BLOCKED = "blocked-layout features"

# Activation cells the kernels compute, by their kernels' names.
ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6", layers.HSwish: "hswish", nn.HSwish: "hswish"}

# Where our pointwise GEMM (with the bias + activation epilogue) beats MindSpore's Conv2D + a bias pass in inference,
# measured at batch 32 on 2 cores: with AVX2 only up to 40 input channels (1.2-2x; 0.6-0.9x from 48 on, oneDNN using
# AVX-512); with AVX-512 every layer of these networks (up to 1024 x 1024: 1.0-4x, 16 -> 72 at 56x56 4x, 1024 x 1024
# at 7x7 1.8x since its columns run across images).
POINTWISE_MAX_INPUTS = 40
POINTWISE_MAX_WEIGHTS_AVX512 = 1024 * 1024


@dataclass(frozen=True)
class Rule:
    """A rewrite: when `matches(*cells)` for `length` consecutive children of one cell (more than one only inside an
    `nn.SequentialCell`), `replace(*cells)` is the fused cell that takes the first one's place; the others become
    `nn.Identity`."""
    name: str
    length: int
    matches: Callable
    replace: Callable


def _float32(*cells) -> bool:
    """Whether `cells` compute in float32: their parameters are float32 and mixed precision has not marked them
    (`Cell.to_float`, as mindspore/train/amp.py does for O2 and O3, adds an "fp16" or "bf16" flag)."""
    return all(not (cell.get_flags().get("fp16") or cell.get_flags().get("bf16"))
               and all(p.dtype == ms.float32 for p in cell.get_parameters()) for cell in cells)


def _conv_bn_act(cell):
    """(conv, bn, act, activation name) of a standard conv -> BatchNorm -> activation `cell` that the kernels know
    (float32 NCHW, no bias, square kernel of odd size with symmetric padding k // 2, or pad_mode "same" at stride 2,
    stride 1 or 2, no dilation), else None."""
    if type(cell) is not nn.SequentialCell or len(cell) not in (2, 3):
        return None
    conv, bn, act = cell[0], cell[1], cell[2] if len(cell) == 3 else None
    if type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d or (act is not None and type(act) not in
                                                                       ACTIVATIONS):
        return None
    k, stride = conv.kernel_size, conv.stride
    padding = conv.padding if isinstance(conv.padding, tuple) else (conv.padding,) * 4
    padded = ((conv.pad_mode == "pad" and set(padding) == {k[0] // 2})
              or (conv.pad_mode == "same" and tuple(stride) == (2, 2)))
    if (conv.has_bias or conv.data_format != "NCHW" or not padded or k[0] != k[1] or k[0] % 2 == 0
            or stride[0] != stride[1] or stride[0] not in STRIDES
            or tuple(conv.dilation) != (1, 1) or not _float32(*cell.cell_list)):
        return None
    return conv, bn, act, None if act is None else ACTIVATIONS[type(act)]


def _depthwise(cell) -> bool:
    parts = _conv_bn_act(cell)
    return parts is not None and 1 < parts[0].group == parts[0].in_channels == parts[0].out_channels


def _stem(cell) -> bool:
    parts = _conv_bn_act(cell)
    return parts is not None and parts[0].group == 1 and parts[0].kernel_size[0] > 1


def _pointwise(cell) -> bool:
    parts = _conv_bn_act(cell)
    return parts is not None and parts[0].group == 1 and parts[0].kernel_size[0] == 1 and parts[0].stride[0] == 1


def _uses_gemm(conv) -> bool:
    """Whether our GEMM is the faster for this 1x1 convolution in inference (see `POINTWISE_MAX_INPUTS`)."""
    if cpu_has_avx512():
        return conv.in_channels * conv.out_channels <= POINTWISE_MAX_WEIGHTS_AVX512
    return conv.in_channels <= POINTWISE_MAX_INPUTS


def _pointwise_cell(cell) -> PointwiseConvBNAct:
    parts = _conv_bn_act(cell)
    return PointwiseConvBNAct(*parts, gemm=_uses_gemm(parts[0]))


def _separable(depthwise, pointwise) -> bool:
    return (type(depthwise) is DepthwiseConvBNAct and type(pointwise) is PointwiseConvBNAct and pointwise.gemm
            and (depthwise.activation, pointwise.activation) in SEPARABLE)


def _dense_act(dense, act) -> bool:
    """A float32 dense layer without its own activation, then an activation cell: oneDNN's (the blocked library)."""
    return (type(dense) is nn.Dense and type(act) in ACTIVATIONS and not dense.activation_flag and _float32(dense)
            and blocked_library() is not None)


def _takes_shortcut(cell) -> bool:
    """An inverted residual block with a shortcut whose last cell can add it: a linear fused conv-bn-act, or a
    depthwise + pointwise pair with a shortcut op."""
    if type(cell) is not mobilenet_v3.InvertedResidual or not cell.use_residual:
        return False
    last = [c for c in cell.block.cell_list if not isinstance(c, nn.Identity)][-1]
    return (isinstance(last, ConvBNAct) and last.activation is None) or (
        isinstance(last, DepthwisePointwise) and last.op_shortcut is not None)


RULES = (
    Rule("h-swish (MindSpore's fused op)", 1, lambda cell: type(cell) is layers.HSwish,
         lambda cell: nn.HSwish()),
    Rule("h-sigmoid (MindSpore's fused op)", 1, lambda cell: type(cell) is layers.HSigmoid,
         lambda cell: nn.HSigmoid()),
    Rule("global pool", 1, lambda cell: type(cell) is layers.GlobalAvgPool,
         lambda cell: GlobalMean(cell.keep_dims)),
    Rule("stem conv-bn-act", 1, _stem,
         lambda cell: StemConvBNAct(*_conv_bn_act(cell))),
    Rule("depthwise conv-bn-act", 1, _depthwise,
         lambda cell: DepthwiseConvBNAct(*_conv_bn_act(cell))),
    Rule("pointwise conv-bn-act", 1, _pointwise, _pointwise_cell),
    Rule("squeeze-excite gate", 1,
         lambda cell: type(cell) is mobilenet_v3.SqueezeExcite and type(cell.pool) is GlobalMean
         and _float32(cell.reduce, cell.expand), SqueezeExcite),
    Rule("depthwise + pointwise", 2, _separable, DepthwisePointwise),
    Rule("shortcut in the projection", 1, _takes_shortcut,
         lambda cell: ShortcutBlock(cell.block)),
    Rule("dense + activation (oneDNN)", 2, _dense_act,
         lambda dense, act: DenseAct(dense, act, ACTIVATIONS[type(act)])),
)


def _lower(cell: nn.Cell, counts: Counter) -> None:
    """Apply `RULES` below `cell`, children first (a rule sees its children already rewritten)."""
    for child in cell.name_cells().values():
        _lower(child, counts)
    names = list(cell.name_cells())
    for rule in RULES:
        if rule.length > 1 and not isinstance(cell, nn.SequentialCell):
            continue
        i = 0
        while i + rule.length <= len(names):
            run = [cell.name_cells()[name] for name in names[i:i + rule.length]]
            if not rule.matches(*run):
                i += 1
                continue
            cell.insert_child_to_cell(names[i], rule.replace(*run))
            for name in names[i + 1:i + rule.length]:
                cell.insert_child_to_cell(name, nn.Identity())
            counts[rule.name] += 1
            i += rule.length
    if isinstance(cell, nn.SequentialCell):
        cell.cell_list = list(cell.name_cells().values())  # as mindspore/train/amp.py does after replacing cells


def lower_for_cpu(net: nn.Cell) -> nn.Cell:
    """Rewrite `net` in place for the C++ CPU kernels (see `RULES`) and return it; parameters (objects and names)
    are unchanged.  Where the kernel library cannot be built, `net` is returned as it is (`kernel_library` warns)."""
    if kernel_library() is None:
        return net
    before = [(id(p), p.name) for p in net.get_parameters()]
    counts = Counter()
    _lower(net, counts)
    if isinstance(net, (mobilenet_v1.MobileNetV1, mobilenet_v3.MobileNetV3)):
        blocked = blocked_features(net.features)
        if blocked is not None:
            net.insert_child_to_cell("features", blocked)
            counts[BLOCKED] += 1
    if sorted(before) != sorted((id(p), p.name) for p in net.get_parameters()):
        raise RuntimeError("lower_for_cpu changed the network's parameters")
    names = [rule.name for rule in RULES] + [BLOCKED]
    log("CPU kernels: " + ", ".join(f"{counts[name]} {name}" for name in names if counts[name]))
    return net
