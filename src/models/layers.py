"""Building blocks shared by the MobileNet families, from MindSpore's standard cells and operators only (the C++
CPU kernels replace some of them afterwards, in one step: `lower_for_cpu` of the kernels package)."""
import functools

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Parameter, Tensor

from src.distributed import rank_and_size

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
    """relu6(x + 3) / 6, from primitives (ONNX export has no operator for MindSpore's `nn.HSigmoid`)."""

    def construct(self, x):
        return ops.relu6(x + 3.0) / 6.0


class HSwish(nn.Cell):
    """x * relu6(x + 3) / 6, from primitives (ONNX export has no operator for MindSpore's `nn.HSwish`)."""

    def construct(self, x):
        return x * ops.relu6(x + 3.0) / 6.0


ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": HSwish, "hsigmoid": HSigmoid}


# How convolutions pad (a model option; the papers' networks pad symmetrically): "same" is TensorFlow's and MindSpore's
# pad_mode "same" on every convolution, "same_depthwise" on the depthwise ones only (mindcv's MobileNetV3)
PADDINGS = ("symmetric", "same", "same_depthwise")


def pads_same(padding: str, depthwise: bool) -> bool:
    """Whether a convolution pads "same" under the model option `padding` (see `PADDINGS`)."""
    return padding == "same" or (depthwise and padding == "same_depthwise")


def conv_bn_act(in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                activation: str = "relu", norm=None, same: bool = False) -> nn.SequentialCell:
    """Conv (symmetric padding k // 2, no bias) -> BatchNorm (`norm(channels)`, see `batch_norm`; default eps `BN_EPS`)
    -> activation (None for a linear layer), as an `nn.SequentialCell` (parameter names `0.weight`, `1.gamma`, ...).

    With `same` the convolution pads as TensorFlow's "same" (`pad_mode="same"`: output ceil(size / stride), at stride
    2 on an even size the extra row and column at the bottom and right only).  At stride 1 that is the symmetric
    k // 2 (odd k), so only strided convolutions are built with pad_mode "same"."""
    if same and stride > 1:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad_mode="same", group=groups, has_bias=False)
    else:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad_mode="pad", padding=kernel_size // 2,
                         group=groups, has_bias=False)
    layers = [conv, (norm or batch_norm())(out_channels)]
    if activation:
        layers.append(ACTIVATIONS[activation]())
    return nn.SequentialCell(layers)


class GlobalAvgPool(nn.Cell):
    """Mean over height and width: (N, C), or (N, C, 1, 1) with `keep_dims`."""

    def __init__(self, keep_dims: bool = False):
        super().__init__()
        self.keep_dims = keep_dims

    def construct(self, x):
        return ops.mean(x, axis=(2, 3), keep_dims=self.keep_dims)


def feature_info(layers: list) -> list:
    """Where a network's stages end, as timm and mindcv describe backbones: `layers` lists (output channels, stride)
    of each cell of `features`; a stage is a run of cells at one resolution.  One dict per stage: `num_chs`,
    `reduction` (input size / feature map size), `module` ("features.<i>") and `index` (i)."""
    stages, reduction = {}, 1
    for index, (channels, stride) in enumerate(layers):
        reduction *= stride
        stages[reduction] = {"num_chs": channels, "reduction": reduction, "module": f"features.{index}",
                             "index": index}
    return list(stages.values())


class FeatureMaps(nn.Cell):
    """The feature maps of a network's stages `out_indices` (positions in its `feature_info`), as a tuple: the
    network as a detection or segmentation backbone.  Holds the network's `features` up to the last stage asked for,
    with the same parameter names, so a classification checkpoint loads into it (its head is not needed)."""

    def __init__(self, net: nn.Cell, out_indices=None):
        super().__init__()
        stages = net.feature_info
        out_indices = tuple(range(len(stages))) if out_indices is None else tuple(out_indices)
        if not out_indices or any(not 0 <= i < len(stages) for i in out_indices) or len(set(out_indices)) != len(
                out_indices):
            raise ValueError(f"out_indices {out_indices}: expected distinct stage positions in 0..{len(stages) - 1}")
        self.feature_info = [stages[i] for i in sorted(out_indices)]
        self.taps = tuple(info["index"] for info in self.feature_info)
        self.features = nn.SequentialCell(net.features.cell_list[:self.taps[-1] + 1])
        # Each map through an identity op: MindSpore's ONNX export renames the node that makes a graph output after it
        # without renaming that node's input in the layers that use it next (the file does not load)
        self.output = ops.Identity()

    def construct(self, x):
        maps = ()
        for index in range(len(self.features)):
            x = self.features[index](x)
            if index in self.taps:
                maps += (self.output(x),)
        return maps


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
