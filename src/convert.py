"""Weights of other MobileNet implementations as checkpoints of ours, and ours as theirs.

Read: timm's (PyTorch-style and TensorFlow's ports) and torchvision's (`.safetensors`, or `.pth`/`.pt`/`.bin` through
torch with `weights_only=True`), the MindSpore model zoo's and mindcv's (`.ckpt`).  The networks are the same layers in
the same order, so a source's tensors are put in its forward order (each source names the order of a module's children
where the names alone do not give it) and paired one layer after another with ours: convolutions, BatchNorms and dense
layers, each checked for its shape.  The model, width and class count are the first of ours whose every layer fits,
built with the model options the source's networks need (`Source.options`: padding, activation, head), recorded in the
checkpoint's model card with the source's BatchNorm epsilon and evaluation transform.

Written (`export_weights`): a checkpoint of ours under the parameter names of the MindSpore sources' own networks
(mindcv's `create_model`, the model zoo's classes), when their network computes what ours does."""
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import mindspore as ms
import mindspore.nn as nn
import numpy as np

from src.checkpoint import read_checkpoint
from src.errors import UserError
from src.model_card import imagenet_class_names
from src.models import MODELS, PAPER_OPTIONS, create_model, mobilenet_v1
from src.models.mobilenet_v3 import SqueezeExcite

BN_LEAVES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance",
             "gamma": "gamma", "beta": "beta", "moving_mean": "moving_mean", "moving_variance": "moving_variance"}
BN_ROLES = ("gamma", "beta", "moving_mean", "moving_variance")
# training state in checkpoints (optimizer slots, positions, our model card): not weights
NOT_WEIGHTS = re.compile(r"^(moments|mean_square|moment|accum|rank_statistics)\.|^(global_step|learning_rate|momentum|"
                         r"epoch_num|step_num|top_1_accuracy|model_card)$|\.num_batches_tracked$")
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
EVAL_TRANSFORM = {"eval_resize": 256, "interpolation": "bilinear", "image_mean": IMAGENET_MEAN,
                  "image_std": IMAGENET_STD}
# timm's MobileNetV1 weights (mobilenetv1_100.ra4_e3600_r224_in1k, the only ones) at 224 with crop_pct 0.875 (its
# pretrained_cfg; 0.95 is its test_crop_pct at 256) and mean = std = 0.5; its MobileNetV3 ones (lamb_in1k, ra_in1k)
# with crop_pct 0.875 and ImageNet's statistics
TIMM_V1_TRANSFORM = {"eval_resize": 256, "interpolation": "bicubic", "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
# TensorFlow's MobileNetV3 weights as timm ported them (tf_mobilenetv3_*.in1k): crop_pct 0.875, bilinear, inputs
# scaled to -1..1 (timm's IMAGENET_INCEPTION_MEAN / _STD)
TF_TRANSFORM = {"eval_resize": 256, "interpolation": "bilinear", "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
# torchvision's weight files carry their tag in the name; the ones measured otherwise than resize 256
TORCHVISION_TRANSFORMS = {"mobilenet_v3_large-5c1a4163.pth": {"eval_resize": 232}}  # IMAGENET1K_V2
# timm's architectures (a hub folder's config.json) that are ours: (tf_)mobilenetv3_<small|large>_<075|100>,
# mobilenetv1_100
TIMM_ARCHITECTURE = re.compile(r"(?P<tf>tf_)?mobilenetv(?P<version>3_small|3_large|1)_(?P<width>075|100)")
UNLABELLED = "(unlabelled)"  # the class name of an output the source's training data never labels
TIMM_ORDERS = (("conv_stem", "bn1", "blocks", "conv_head", "classifier"),
               ("conv_dw", "bn1", "se", "conv_pw", "bn2"),  # depthwise-separable block
               ("conv_pw", "bn1", "conv_dw", "bn2", "se", "conv_pwl", "bn3"),  # inverted residual
               ("conv", "bn1"),  # the last 1x1 convolution
               ("conv_reduce", "conv_expand"))


@dataclass(frozen=True)
class Source:
    """A family of weight files: its --source name (`key`), how to recognise its tensor names, the order of a
    module's children where names do not sort into forward order (the first listed order holding all of a module's
    named children applies), the BatchNorm epsilon its weights were trained with, the evaluation transform its
    published accuracy was measured with, per model the options of `create_model` its network needs beyond the
    paper's (`options`), and why its files are refused, if they are (`refusal`).

    `unlabelled_output`: of a 1001-output file, the output the source's training data never labels (dropped for a
    1000-class model).  `export_names(model, net)`: the source's module names of our network's layers in
    `network_layers` order, for the models and widths of `export_widths` where its network is ours (MindSpore
    sources); `dense_as_conv`: models whose dense layers the source computes as 1x1 convolutions."""
    key: str
    name: str
    recognise: Callable[[set], bool]
    orders: Sequence[Sequence[str]] = ()
    bn_eps: float = 1e-3
    eval_transform: dict = field(default_factory=lambda: dict(EVAL_TRANSFORM))
    options: dict = field(default_factory=dict)
    unlabelled_output: Optional[int] = None
    export_names: Optional[Callable] = None
    export_widths: dict = field(default_factory=dict)
    dense_as_conv: Sequence[str] = ()
    refusal: str = ""  # why files of this family are not converted


def _v3_blocks(net):
    """Each inverted residual block of our MobileNetV3 `net` as (position in `features`, its cells)."""
    return [(index, cell.block.cell_list) for index, cell in enumerate(net.features.cell_list[1:-1], 1)]


def _mindcv_names(model, net):
    """mindcv 0.3's module names: flat `nn.SequentialCell`s of conv, BatchNorm and activation (no activation after a
    projection), an SE cell, the head and classifier as `classifier.0` and `.3` (after h-swish and dropout)."""
    if model == "mobilenet_v1":
        return ["features.0", "features.1"] + [f"features.{3 + i}.{j}" for i in range(len(mobilenet_v1.BLOCKS))
                                               for j in (0, 1, 3, 4)] + ["classifier"]
    names = ["features.0", "features.1"]
    for index, cells in _v3_blocks(net):
        position = 0
        for cell in cells:
            prefix = f"features.{2 + index}.layers"
            if isinstance(cell, SqueezeExcite):
                names += [f"{prefix}.{position}.conv_reduce", f"{prefix}.{position}.conv_expand"]
                position += 1
            else:
                names += [f"{prefix}.{position}", f"{prefix}.{position + 1}"]
                position += len(cell)
    last = 2 + len(_v3_blocks(net)) + 1
    return names + [f"features.{last}", f"features.{last + 1}", "classifier.0", "classifier.3"]


def _zoo_names(model, net):
    """The model zoo's module names: MobileNetV1's `network.<layer>.0|1` and `fc`; MobileNetV3's units `expand`,
    `conv1`, `se`, `conv2` (each `conv` and `bn`), the head a 1x1 convolution after h-swish and pooling in `features`,
    the classifier the 1x1 convolution `output`."""
    if model == "mobilenet_v1":
        return [f"network.{layer}.{j}" for layer in range(1 + 2 * len(mobilenet_v1.BLOCKS)) for j in (0, 1)] + ["fc"]
    names = ["features.0", "features.1"]
    for index, cells in _v3_blocks(net):
        prefix = f"features.{2 + index}"
        convs = len([cell for cell in cells if not isinstance(cell, SqueezeExcite)])
        units = iter((["expand"] if convs == 3 else []) + ["conv1", "conv2"])
        for cell in cells:
            if isinstance(cell, SqueezeExcite):
                names += [f"{prefix}.se.conv1", f"{prefix}.se.conv2"]
            else:
                unit = next(units)
                names += [f"{prefix}.{unit}.conv", f"{prefix}.{unit}.bn"]
    last = 2 + len(_v3_blocks(net)) + 1
    return names + [f"features.{last}", f"features.{last + 1}", f"features.{last + 4}", "output"]


SOURCES = (
    Source("ours", "this repository", lambda names: "features.0.1.gamma" in names and "features.0.0.weight" in names,
           refusal="it is already a checkpoint of this repository: use it as it is"),
    Source("timm", "timm", lambda names: "conv_stem.weight" in names, orders=TIMM_ORDERS, bn_eps=1e-5,
           eval_transform={**EVAL_TRANSFORM, "interpolation": "bicubic"}),
    Source("timm_tf", "timm's TensorFlow ports", lambda names: "conv_stem.weight" in names, orders=TIMM_ORDERS,
           eval_transform=TF_TRANSFORM, options={model: {"padding": "same"} for model in MODELS}),
    Source("torchvision", "torchvision", lambda names: "features.0.1.running_mean" in names,
           orders=(("features", "classifier"),)),
    Source("zoo", "the model zoo", lambda names: "network.0.0.weight" in names or "output.weight" in names,
           orders=(("network", "fc"), ("expand", "conv1", "se", "conv2"), ("conv", "bn"), ("features", "output")),
           bn_eps=1e-5,
           options={"mobilenet_v1": {"padding": "same"}, "mobilenet_v3_small": {"head_width": 1280, "head_bias": False},
                    "mobilenet_v3_large": {"head_bias": False}},
           unlabelled_output=1000, export_names=_zoo_names,
           export_widths={model: (1.0,) for model in MODELS},
           dense_as_conv=("mobilenet_v3_small", "mobilenet_v3_large")),
    Source("mindcv", "mindcv", lambda names: "features.1.moving_mean" in names and "output.weight" not in names,
           orders=(("features", "classifier"), ("layers",), ("conv_reduce", "conv_expand")), bn_eps=1e-5,
           options={"mobilenet_v1": {"activation": "relu"}, "mobilenet_v3_small": {"padding": "same_depthwise"},
                    "mobilenet_v3_large": {"padding": "same_depthwise"}},
           unlabelled_output=1000, export_names=_mindcv_names,
           export_widths={"mobilenet_v1": mobilenet_v1.WIDTHS, "mobilenet_v3_small": (1.0,),
                          "mobilenet_v3_large": (1.0,)}),
)
SOURCE_KEYS = tuple(source.key for source in SOURCES if source.key != "ours")
EXPORT_KEYS = tuple(source.key for source in SOURCES if source.export_names)


def read_weights(path: str) -> dict:
    """name -> float array of a weight file (`.safetensors`, a torch file, or a MindSpore checkpoint); entries that are
    not weights (optimizer state, counters) are left out."""
    if not os.path.isfile(path):
        raise UserError(f"input not found: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
        try:
            tensors = load_file(path)
        except Exception as err:  # pylint: disable=broad-except  (safetensors raises its own error types)
            raise UserError(f"{path} cannot be read as a .safetensors file: {str(err).splitlines()[0]}") from err
    elif suffix in TORCH_SUFFIXES:
        tensors = _read_torch(path)
    elif suffix == ".ckpt":
        tensors = {name: value.asnumpy() for name, value in read_checkpoint(path, "input").items()
                   if isinstance(value, ms.Parameter)}
    else:
        raise UserError(f"{path}: unknown weight file type '{suffix}'; expected .safetensors, .pth, .pt, .bin or .ckpt")
    return {name: np.asarray(value, np.float32) for name, value in tensors.items()
            if not NOT_WEIGHTS.search(name) and np.issubdtype(np.asarray(value).dtype, np.floating)}


def _read_torch(path):
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise UserError(f"{path}: reading a PyTorch file needs torch (pip install torch); or download the model's "
                        f".safetensors file instead (timm's Hugging Face hub page has model.safetensors for each "
                        f"model), which needs no torch") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as err:  # pylint: disable=broad-except  (torch raises many types for a bad file)
        raise UserError(f"{path} cannot be read as a PyTorch weights file (weights_only=True): "
                        f"{str(err).splitlines()[0]}") from err
    for key in ("state_dict", "model", "model_state"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return {name: value.float().numpy() for name, value in state.items() if hasattr(value, "float")}


def hub_config(path: str) -> dict:
    """The `config.json` beside `path` that timm writes into a Hugging Face hub folder (`architecture`,
    `pretrained_cfg`: the evaluation transform), {} when there is none (or it is no timm config)."""
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if not os.path.isfile(config_path):
        return {}
    try:
        with open(config_path, encoding="utf-8") as src:
            config = json.load(src)
    except (OSError, ValueError) as err:
        raise UserError(f"{config_path} (beside {path}) cannot be read as JSON: {err}") from err
    return config if isinstance(config, dict) and "architecture" in config else {}


def hub_model(hub: dict, path: str) -> tuple:
    """(source key, model, width) that a timm `config.json`'s architecture names; ("", "", 0.0) without one."""
    if not hub:
        return "", "", 0.0
    match = TIMM_ARCHITECTURE.fullmatch(str(hub["architecture"]))
    if not match:
        raise UserError(f"{path}: the config.json beside it names timm's architecture '{hub['architecture']}', which "
                        f"is none of this repository's networks (timm's (tf_)mobilenetv3_small/large_075/100 and "
                        f"mobilenetv1_100 are)")
    model = f"mobilenet_v{match['version']}"
    return "timm_tf" if match["tf"] else "timm", model, int(match["width"]) / 100


def hub_transform(hub: dict, path: str) -> dict:
    """The evaluation transform of a timm `config.json`'s `pretrained_cfg` (crop_pct, interpolation, mean, std), as
    timm evaluates: shorter side floor(224 / crop_pct), centre crop 224; {} without one."""
    cfg = hub.get("pretrained_cfg") or {}
    if not cfg:
        return {}
    interpolation = cfg.get("interpolation", "bilinear")
    if interpolation not in ("bilinear", "bicubic"):
        raise UserError(f"{path}: the config.json beside it evaluates with interpolation '{interpolation}'; this "
                        f"repository evaluates with bilinear or bicubic")
    size = cfg.get("input_size", [3, 224, 224])[-1]
    return {"eval_resize": math.floor(size / cfg.get("crop_pct", 0.875)), "interpolation": interpolation,
            "image_mean": list(cfg.get("mean", IMAGENET_MEAN)), "image_std": list(cfg.get("std", IMAGENET_STD))}


def recognise(tensors: dict, path: str, source_key: str = "", hub_source: str = "") -> Source:
    """The source family of `tensors`: the one family whose names they have, or where several have the same names
    (timm's PyTorch-style and TensorFlow's weights) the one `source_key` (--source) or `hub_source` (the hub
    folder's config.json, see `hub_model`) names; a file that fits none, several without a word on which, or a
    refused family raises a `UserError` saying why."""
    names = set(tensors)
    fitting = [source for source in SOURCES if source.recognise(names)]
    if not fitting:
        raise UserError(f"{path}: not a MobileNet of timm, torchvision, mindcv or the MindSpore model zoo (first "
                        f"tensor '{sorted(names)[0] if names else '(none)'}'); expected one of those weight files")
    by_key = {source.key: source for source in fitting}
    for given, what in ((source_key, "--source"), (hub_source, "the config.json beside it")):
        if given and given not in by_key:
            raise UserError(f"{path}: {what} says {given}, but its tensors are those of "
                            f"{' or '.join(source.key for source in fitting)}")
    if source_key and hub_source and source_key != hub_source:
        raise UserError(f"{path}: --source says {source_key}, the config.json beside it {hub_source}")
    chosen = by_key.get(source_key or hub_source)
    if chosen is None and len(fitting) > 1:
        raise UserError(f"{path}: its tensor names and shapes are those of "
                        f"{' and of '.join(f'{s.name} ({_computes(s)})' for s in fitting)}: put the hub folder's "
                        f"config.json beside the file or name the source with "
                        f"{' or '.join('--source ' + s.key for s in fitting)}")
    source = chosen or fitting[0]
    if source.refusal:
        raise UserError(f"{path}: cannot convert ({source.name}): {source.refusal}")
    return source


def _computes(source: Source) -> str:
    """What `source`'s networks compute beyond their weights: its BatchNorm epsilon and model options."""
    options = {key: value for options in source.options.values() for key, value in options.items()}
    return ", ".join([f"BatchNorm eps {source.bn_eps:g}"] + [f"{key} {value}" for key, value in options.items()])


def source_layers(tensors: dict, source: Source) -> list:
    """[(kind, {leaf: tensor name})] of the source's layers in forward order; kind is "bn", "conv" or "linear"."""
    modules = {}
    for name in tensors:
        prefix, leaf = name.rsplit(".", 1) if "." in name else ("", name)
        modules.setdefault(prefix, {})[leaf] = name
    layers = []
    for prefix in _forward_order(modules, source.orders):
        leaves = modules[prefix]
        if "running_mean" in leaves or "moving_mean" in leaves:
            layers.append(("bn", leaves))
        elif "weight" in leaves:
            layers.append(("conv" if tensors[leaves["weight"]].ndim == 4 else "linear", leaves))
    return layers


def _forward_order(prefixes, orders):
    """Module prefixes sorted child by child: numbered children by number, named ones by the first of `orders` that
    holds all of the module's named children (else by name)."""
    tree = {}
    for prefix in prefixes:
        node = tree
        for part in prefix.split("."):
            node = node.setdefault(part, {})

    def walk(node, path):
        named = {child for child in node if not child.isdigit()}
        order = next((list(o) for o in orders if named <= set(o)), sorted(named))
        for child in sorted(node, key=lambda c: (0, int(c), "") if c.isdigit() else (1, order.index(c), c)):
            yield ".".join(path + [child])
            yield from walk(node[child], path + [child])

    return [prefix for prefix in walk(tree, []) if prefix in prefixes]


def network_layers(net: nn.Cell) -> list:
    """[(kind, cell)] of our network's convolutions, BatchNorms and dense layers in forward order."""
    layers = []
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.Conv2d):
            layers.append(("conv", cell))
        elif isinstance(cell, nn.BatchNorm2d):
            layers.append(("bn", cell))
        elif isinstance(cell, nn.Dense):
            layers.append(("linear", cell))
    return layers


class Misfit(Exception):
    """The first source tensor that does not fit a candidate network, and how many layers fitted before it."""

    def __init__(self, fitted: int, message: str):
        super().__init__(message)
        self.fitted = fitted


def pair_layers(net: nn.Cell, layers: list, tensors: dict) -> dict:
    """{our parameter name: array} with every layer of `net` taken from the source's `layers`; raises `Misfit` naming
    the first tensor that does not fit."""
    ours = network_layers(net)
    params = {}
    for index, ((kind, cell), (source_kind, leaves)) in enumerate(zip(ours, layers)):
        if (kind == "bn") != (source_kind == "bn"):
            first = next(iter(leaves.values()))
            raise Misfit(index, f"tensor '{first}' is a {source_kind} layer where the network has a {kind} layer "
                                f"('{cell.cls_name}' of '{_param_prefix(cell)}')")
        if kind == "bn":
            by_role = {BN_LEAVES[leaf]: name for leaf, name in leaves.items() if leaf in BN_LEAVES}
            for role in BN_ROLES:
                params.update(_fit(getattr(cell, role), tensors, by_role.get(role), index))
            continue
        params.update(_fit(cell.weight, tensors, leaves.get("weight"), index))
        if cell.bias is None and "bias" in leaves:
            raise Misfit(index, f"tensor '{leaves['bias']}' is a bias where the network's layer "
                                f"'{cell.weight.name}' has none")
        if cell.bias is not None:
            params.update(_fit(cell.bias, tensors, leaves.get("bias"), index))
    if len(layers) > len(ours):
        raise Misfit(len(ours), f"tensor '{next(iter(layers[len(ours)][1].values()))}' is beyond the network's last "
                                f"layer")
    if len(layers) < len(ours):
        raise Misfit(len(layers), f"the file ends before the network's layer '{_param_prefix(ours[len(layers)][1])}'")
    return params


def _param_prefix(cell):
    return next(iter(cell.get_parameters())).name.rsplit(".", 1)[0]


def _fit(param, tensors, name, index):
    """{param.name: the source tensor `name` in the parameter's shape}; a 1x1 convolution fits a dense layer."""
    if name is None:
        raise Misfit(index, f"no source tensor for '{param.name}'")
    value = tensors[name]
    shape = tuple(param.shape)
    if value.shape != shape:
        squeezed = value.reshape(value.shape[:2]) if value.ndim == 4 and value.shape[2:] == (1, 1) else value
        if squeezed.shape != shape:
            raise Misfit(index, f"tensor '{name}' has shape {tuple(value.shape)}, the network's '{param.name}' "
                                f"{shape}")
        value = squeezed
    return {param.name: value}


def evaluation_transform(source: Source, model: str, overrides: dict, path: str = "", hub: dict = None) -> dict:
    """The evaluation transform the converted weights were measured with (`eval_resize`, `interpolation`,
    `image_mean`, `image_std`): the hub folder's config.json (`hub`) if there is one, else the source's (timm's
    MobileNetV1 its own; torchvision's by the file name's tag), with the non-empty `overrides` applied."""
    transform = hub_transform(hub or {}, path) or (
        TIMM_V1_TRANSFORM if source.key == "timm" and model == "mobilenet_v1" else source.eval_transform)
    if source.key == "torchvision":
        transform = {**transform, **TORCHVISION_TRANSFORMS.get(os.path.basename(path), {})}
    return {**transform, **{key: value for key, value in overrides.items() if key in transform and value}}


def candidates(model: str = "", width_mult: float = 0.0) -> list:
    """(model, width) pairs to try, narrowed by what the user gave."""
    return [(name, width) for name, (widths, _) in MODELS.items() for width in widths
            if (not model or name == model) and (not width_mult or width == width_mult)]


def class_names(source: Source, classes: int) -> Optional[list]:
    """Names of a converted model's outputs: ImageNet's for 1000, with `UNLABELLED` at the source's unlabelled output
    for 1001; None (unknown) otherwise."""
    if classes == 1000:
        return imagenet_class_names()
    if classes == 1001 and source.unlabelled_output is not None:
        names = imagenet_class_names()
        names.insert(source.unlabelled_output, UNLABELLED)
        return names
    return None


def _drop_output(tensors: dict, layers: list, index: int) -> dict:
    """`tensors` with output `index` of the classifier (the last layer) removed."""
    return {**tensors, **{name: np.delete(tensors[name], index, axis=0) for name in layers[-1][1].values()}}


def convert(tensors: dict, source: Source, path: str, model: str = "", width_mult: float = 0.0,
            class_num: int = 0) -> tuple:
    """(network holding the converted weights, its architecture) for the first candidate whose every layer
    fits, built with the source's model options; the architecture is the model card's `ARCHITECTURE_KEYS` and
    `class_num`.  `class_num` 1000 of a 1001-output file drops the output its source never labels
    (`Source.unlabelled_output`).  A file that fits no candidate is a `UserError` naming the first tensor that does
    not fit the closest one."""
    layers = source_layers(tensors, source)
    if not layers:
        raise UserError(f"{path}: no convolution, BatchNorm or dense weights found")
    classes = tensors[layers[-1][1]["weight"]].shape[0]
    if class_num and class_num != classes:
        if not (classes == 1001 and class_num == 1000 and source.unlabelled_output is not None):
            raise UserError(f"{path} has {classes} classes, --class_num says {class_num}; convert as it is and "
                            f"fine-tune with train.py --pre_trained (it replaces the classifier)")
        tensors, classes = _drop_output(tensors, layers, source.unlabelled_output), class_num
    best = None
    for name, width in candidates(model, width_mult):
        options = {**PAPER_OPTIONS, **source.options.get(name, {})}
        net = create_model(name, classes, width, bn_eps=source.bn_eps, **options)
        try:
            params = pair_layers(net, layers, tensors)
        except Misfit as misfit:
            if best is None or misfit.fitted >= best[0]:  # a tie: the wider model
                best = (misfit.fitted, f"{name} x{width:g}", str(misfit))
            continue
        ms.load_param_into_net(net, {key: ms.Parameter(ms.Tensor(value), key) for key, value in params.items()},
                               strict_load=True)
        architecture = {"model": name, "width_mult": width, "class_num": classes, "bn_eps": source.bn_eps, **options}
        return net, architecture
    wanted = f"{model or 'any model'} at width {width_mult:g}" if width_mult else (model or "any of our models")
    raise UserError(f"{path} ({source.name}) fits {wanted} nowhere: closest is {best[1]}, where {best[2]}")


def export_weights(net: nn.Cell, architecture: dict, target: Source, path: str) -> dict:
    """{`target`'s parameter name: array} of our standard network `net`, built as `architecture` (a model card's
    `ARCHITECTURE_KEYS`), for the target's own code (`Source.export_names`); a `UserError` where the target's network
    computes otherwise (another BatchNorm epsilon, model option or width)."""
    model, width = architecture["model"], architecture["width_mult"]
    if width not in target.export_widths.get(model, ()):
        raise UserError(f"{path}: {target.name} builds {model} at width {width:g} with other channel counts (it has "
                        f"{model} at width {', '.join(f'{w:g}' for w in target.export_widths.get(model, ()))})")
    needed = {"bn_eps": target.bn_eps, **PAPER_OPTIONS, **target.options.get(model, {})}
    differing = {key: value for key, value in needed.items() if architecture[key] != value}
    if differing:
        raise UserError(f"{path}: {target.name}'s {model} computes otherwise than this checkpoint's network: it has "
                        + ", ".join(f"{key} {value} (this one {architecture[key]})" for key, value in differing.items())
                        + f"; train with {' '.join(f'--{key} {value}' for key, value in differing.items())} to hand "
                          f"the weights to {target.name}")
    weights = {}
    for (kind, cell), prefix in zip(network_layers(net), target.export_names(model, net)):
        if kind == "bn":
            weights.update({f"{prefix}.{role}": getattr(cell, role).asnumpy() for role in BN_ROLES})
            continue
        weight = cell.weight.asnumpy()
        if kind == "linear" and model in target.dense_as_conv:
            weight = weight.reshape(*weight.shape, 1, 1)
        weights[f"{prefix}.weight"] = weight
        if cell.bias is not None:
            weights[f"{prefix}.bias"] = cell.bias.asnumpy()
    return weights
