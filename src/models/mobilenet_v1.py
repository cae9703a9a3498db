"""MobileNetV1 (Howard et al. 2017): a stem conv and 13 blocks of a depthwise and a pointwise conv, as a table."""
import mindspore.nn as nn
from mindspore.common.initializer import TruncatedNormal, XavierUniform, initializer

from src.models.layers import GlobalAvgPool, conv_bn_act, feature_info, make_dropout, pads_same

STEM_CHANNELS = 32
# (output channels of the pointwise conv, stride of the depthwise conv), one row per block
BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)
WIDTHS = (0.25, 0.5, 0.75, 1.0)
DENSE_SIGMA = 0.02  # classifier init: normal(0, 0.02) truncated at 2 sigma
ACTIVATIONS = ("relu6", "relu")  # the paper's, and mindcv's


def _channels(c: int, width_mult: float) -> int:
    return max(int(c * width_mult), 8)


class MobileNetV1(nn.Cell):
    """MobileNetV1; every layer is conv -> BN -> ReLU6 (`features`: the stem, then each block's depthwise and
    pointwise layers), then global average pool and a dense head.  Options for other sources' weights: `activation`
    "relu" (mindcv's) and `padding` (see `layers.PADDINGS`; the model zoo's: "same")."""

    def __init__(self, class_num: int = 1000, width_mult: float = 1.0, dropout: float = 0.0, norm=None,
                 activation: str = "relu6", padding: str = "symmetric"):
        super().__init__()
        in_ch = _channels(STEM_CHANNELS, width_mult)
        layers = [conv_bn_act(3, in_ch, 3, 2, activation=activation, norm=norm, same=pads_same(padding, False))]
        shapes = [(in_ch, 2)]
        for out, stride in BLOCKS:
            out_ch = _channels(out, width_mult)
            layers.append(conv_bn_act(in_ch, in_ch, 3, stride, groups=in_ch, activation=activation, norm=norm,
                                      same=pads_same(padding, True)))
            layers.append(conv_bn_act(in_ch, out_ch, 1, activation=activation, norm=norm))
            shapes += [(in_ch, stride), (out_ch, 1)]
            in_ch = out_ch
        self.features = nn.SequentialCell(layers)
        self.feature_info = feature_info(shapes)
        self.pool = GlobalAvgPool()
        self.dropout = make_dropout(dropout)
        self.classifier = nn.Dense(in_ch, class_num)
        self._init_weights()

    def _init_weights(self):
        for _, cell in self.cells_and_names():
            if isinstance(cell, nn.Conv2d):
                cell.weight.set_data(initializer(XavierUniform(), cell.weight.shape, cell.weight.dtype))
            elif isinstance(cell, nn.Dense):
                init = TruncatedNormal(DENSE_SIGMA, a=-2 * DENSE_SIGMA, b=2 * DENSE_SIGMA)
                cell.weight.set_data(initializer(init, cell.weight.shape, cell.weight.dtype))
                cell.bias.set_data(initializer("zeros", cell.bias.shape, cell.bias.dtype))

    def forward_features(self, x):
        """The last feature map (N, C, H / 32, W / 32)."""
        return self.features(x)

    def forward_head(self, x, pre_logits: bool = False):
        """Logits of a feature map; with `pre_logits` the pooled features the classifier takes."""
        x = self.pool(x)
        if pre_logits:
            return x
        return self.classifier(self.dropout(x))

    def construct(self, x):
        return self.forward_head(self.forward_features(x))
