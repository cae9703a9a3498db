"""MobileNetV3 small and large (Howard et al. 2019, tables 1 and 2), as tables and one builder.

Channel rounding follows the TF reference: outputs `make_divisible(c * w)`, expansion
`make_divisible(in * exp / in_1.0)` where `in` is the block's already-scaled input, so the expansion
ratio of the 1.0 table is kept at every width.
"""
import mindspore.nn as nn
from mindspore.common.initializer import HeNormal, Normal, initializer

from src.models.layers import (ACTIVATIONS, GlobalAvgPool, conv_bn_act, feature_info, make_divisible, make_dropout,
                               pads_same)

STEM_CHANNELS = 16
# kernel, expansion channels, output channels, squeeze-excite, activation, stride (width 1.0)
SMALL_BLOCKS = (
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hswish", 2),
    (5, 240, 40, True, "hswish", 1),
    (5, 240, 40, True, "hswish", 1),
    (5, 120, 48, True, "hswish", 1),
    (5, 144, 48, True, "hswish", 1),
    (5, 288, 96, True, "hswish", 2),
    (5, 576, 96, True, "hswish", 1),
    (5, 576, 96, True, "hswish", 1),
)
LARGE_BLOCKS = (
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hswish", 2),
    (3, 200, 80, False, "hswish", 1),
    (3, 184, 80, False, "hswish", 1),
    (3, 184, 80, False, "hswish", 1),
    (3, 480, 112, True, "hswish", 1),
    (3, 672, 112, True, "hswish", 1),
    (5, 672, 160, True, "hswish", 2),
    (5, 960, 160, True, "hswish", 1),
    (5, 960, 160, True, "hswish", 1),
)
# blocks, last 1x1 conv channels (scaled), head width (never scaled)
ARCHS = {"small": (SMALL_BLOCKS, 576, 1024), "large": (LARGE_BLOCKS, 960, 1280)}
WIDTHS = (0.75, 1.0)


class SqueezeExcite(nn.Cell):
    """Global pool -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> hard-sigmoid, scaling the input."""

    def __init__(self, channels: int):
        super().__init__()
        squeeze = make_divisible(channels // 4)
        self.reduce = nn.Conv2d(channels, squeeze, 1, has_bias=True)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(squeeze, channels, 1, has_bias=True)
        self.gate = ACTIVATIONS["hsigmoid"]()
        self.pool = GlobalAvgPool(keep_dims=True)

    def construct(self, x):
        return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))


class InvertedResidual(nn.Cell):
    """Optional 1x1 expansion, depthwise conv, optional SE, linear 1x1 projection (`block`), plus the input when
    shapes match (`use_residual`)."""

    def __init__(self, in_ch, kernel, exp_ch, out_ch, use_se, activation, stride, norm=None, same=False):
        super().__init__()
        layers = []
        if exp_ch != in_ch:
            layers.append(conv_bn_act(in_ch, exp_ch, 1, activation=activation, norm=norm))
        layers.append(conv_bn_act(exp_ch, exp_ch, kernel, stride, groups=exp_ch, activation=activation, norm=norm,
                                  same=same))
        if use_se:
            layers.append(SqueezeExcite(exp_ch))
        layers.append(conv_bn_act(exp_ch, out_ch, 1, activation=None, norm=norm))
        self.block = nn.SequentialCell(layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def construct(self, x):
        if self.use_residual:
            return self.block(x) + x
        return self.block(x)


class MobileNetV3(nn.Cell):
    """MobileNetV3 `arch` ("small" | "large") at `width_mult`: `features` (the stem, the inverted residual blocks and
    the last 1x1 conv), global pool, a 1x1 layer with bias to the head width (1024/1280, not scaled) + h-swish,
    dropout, classifier.  Options for other sources' weights: `padding` (see `layers.PADDINGS`; mindcv's:
    "same_depthwise", TensorFlow's: "same"), `head_width` (0: the paper's; the model zoo's small: 1280) and
    `head_bias` (the model zoo's: False)."""

    def __init__(self, arch: str = "small", class_num: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
                 norm=None, padding: str = "symmetric", head_width: int = 0, head_bias: bool = True):
        super().__init__()
        blocks, last_conv, head = ARCHS[arch]
        head = head_width or head
        in_ch = make_divisible(STEM_CHANNELS * width_mult)
        in_ref = STEM_CHANNELS
        layers = [conv_bn_act(3, in_ch, 3, 2, activation="hswish", norm=norm, same=pads_same(padding, False))]
        shapes = [(in_ch, 2)]
        for kernel, exp, out, use_se, activation, stride in blocks:
            exp_ch = make_divisible(in_ch * exp / in_ref)
            out_ch = make_divisible(out * width_mult)
            layers.append(InvertedResidual(in_ch, kernel, exp_ch, out_ch, use_se, activation, stride, norm,
                                           pads_same(padding, True)))
            shapes.append((out_ch, stride))
            in_ch, in_ref = out_ch, out
        last_ch = make_divisible(last_conv * width_mult)
        layers.append(conv_bn_act(in_ch, last_ch, 1, activation="hswish", norm=norm))
        shapes.append((last_ch, 1))
        self.features = nn.SequentialCell(layers)
        self.feature_info = feature_info(shapes)
        self.pool = GlobalAvgPool()
        self.head = nn.SequentialCell([nn.Dense(last_ch, head, has_bias=head_bias), ACTIVATIONS["hswish"]()])
        self.dropout = make_dropout(dropout)
        self.classifier = nn.Dense(head, class_num)
        self._init_weights()

    def _init_weights(self):
        for _, cell in self.cells_and_names():
            if isinstance(cell, nn.Conv2d):
                cell.weight.set_data(initializer(HeNormal(mode="fan_out", nonlinearity="relu"),
                                                 cell.weight.shape, cell.weight.dtype))
            elif isinstance(cell, nn.Dense):
                cell.weight.set_data(initializer(Normal(0.01), cell.weight.shape, cell.weight.dtype))
            if isinstance(cell, (nn.Conv2d, nn.Dense)) and cell.bias is not None:
                cell.bias.set_data(initializer("zeros", cell.bias.shape, cell.bias.dtype))

    def forward_features(self, x):
        """The last feature map (N, C, H / 32, W / 32), after the last 1x1 conv."""
        return self.features(x)

    def forward_head(self, x, pre_logits: bool = False):
        """Logits of a feature map; with `pre_logits` the head's features the classifier takes (before dropout)."""
        x = self.head(self.pool(x))
        if pre_logits:
            return x
        return self.classifier(self.dropout(x))

    def construct(self, x):
        return self.forward_head(self.forward_features(x))
