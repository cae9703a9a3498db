"""Model factory: `create_model(name, ...)` returns a plain `nn.Cell` of MindSpore's standard cells and operators."""
from src.errors import UserError
from src.models import mobilenet_v1, mobilenet_v3
from src.models.layers import BN_EPS, PADDINGS, FeatureMaps, batch_norm
from src.models.stats import count_macs, count_params

MODELS = {
    "mobilenet_v1": (mobilenet_v1.WIDTHS, 0.0),
    "mobilenet_v3_small": (mobilenet_v3.WIDTHS, 0.2),
    "mobilenet_v3_large": (mobilenet_v3.WIDTHS, 0.2),
}

# The model options that other sources' weights need (see `create_model`), at the papers' networks' values
PAPER_OPTIONS = {"padding": "symmetric", "activation": "relu6", "head_width": 0, "head_bias": True}

__all__ = ["MODELS", "PADDINGS", "PAPER_OPTIONS", "create_model", "count_macs", "count_params"]


def create_model(name: str, class_num: int = 1000, width_mult: float = 1.0, dropout: float = None,
                 sync_bn: bool = False, bn_eps: float = BN_EPS, features_only: bool = False, out_indices=None,
                 padding: str = PAPER_OPTIONS["padding"], activation: str = PAPER_OPTIONS["activation"],
                 head_width: int = PAPER_OPTIONS["head_width"], head_bias: bool = PAPER_OPTIONS["head_bias"]):
    """Build `name` at `width_mult` with `class_num` outputs; `dropout=None` takes the family's default; `sync_bn`
    builds `nn.SyncBatchNorm` layers (Ascend, in a distributed run) instead of `nn.BatchNorm2d`; `bn_eps` is the
    BatchNorm epsilon (imported weights keep the one they were trained with).

    The defaults are the papers' networks; the options other sources' weights need: `padding` ("symmetric", "same":
    TensorFlow's "same" on every convolution, "same_depthwise": on the depthwise ones), MobileNetV1's `activation`
    ("relu6" or "relu"), MobileNetV3's `head_width` (0: the paper's 1024 / 1280) and `head_bias`.

    The classifier has `forward_features(x)` (the last feature map) and `forward_head(x, pre_logits=False)`, and
    `feature_info` (each stage's `num_chs`, `reduction`, `module`).  With `features_only` the result is a backbone
    (`FeatureMaps`) whose output is the tuple of the feature maps of the stages `out_indices` (default: all)."""
    if name not in MODELS:
        raise UserError(f"unknown model '{name}'; valid models: {', '.join(MODELS)}")
    widths, default_dropout = MODELS[name]
    if width_mult not in widths:
        raise UserError(f"width_mult {width_mult:g} is not available for {name}; valid widths: "
                        f"{', '.join(f'{w:g}' for w in widths)}")
    if class_num < 1:
        raise UserError(f"class_num must be >= 1; got {class_num}")
    if padding not in PADDINGS:
        raise UserError(f"padding '{padding}' is not one of {', '.join(PADDINGS)}")
    dropout = default_dropout if dropout is None else dropout
    norm = batch_norm(bn_eps, sync_bn)
    if name == "mobilenet_v1":
        if activation not in mobilenet_v1.ACTIVATIONS or head_width or not head_bias:
            raise UserError(f"mobilenet_v1 takes activation {' or '.join(mobilenet_v1.ACTIVATIONS)} and has no head "
                            f"layer (head_width 0, head_bias true); got activation {activation}, head_width "
                            f"{head_width}, head_bias {head_bias}")
        net = mobilenet_v1.MobileNetV1(class_num=class_num, width_mult=width_mult, dropout=dropout, norm=norm,
                                       activation=activation, padding=padding)
    else:
        if activation != PAPER_OPTIONS["activation"]:
            raise UserError(f"activation {activation}: the option is MobileNetV1's ({name} uses its table's "
                            f"activations); leave it relu6")
        net = mobilenet_v3.MobileNetV3(name.rsplit("_", 1)[1], class_num=class_num, width_mult=width_mult,
                                       dropout=dropout, norm=norm, padding=padding, head_width=head_width,
                                       head_bias=head_bias)
    return FeatureMaps(net, out_indices) if features_only else net
