"""Weights of other MobileNet implementations as checkpoints of ours: timm and torchvision (`.safetensors`, or
`.pth`/`.pt`/`.bin` through torch with `weights_only=True`), and the MindSpore model zoo (`.ckpt`); mindcv's
checkpoints and the zoo's MobileNetV1 and V3-small are recognised and refused, saying why.

The networks are the same layers in the same order, so a source's tensors are put in its forward order (each source
names the order of a module's children where the names alone do not give it) and paired one layer after another with
ours: convolutions, BatchNorms and dense layers, each checked for its shape.  The model, width and class count are the
first of ours whose every layer fits."""
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import mindspore as ms
import mindspore.nn as nn
import numpy as np

from src.checkpoint import read_checkpoint
from src.errors import UserError
from src.models import MODELS, create_model

BN_LEAVES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance",
             "gamma": "gamma", "beta": "beta", "moving_mean": "moving_mean", "moving_variance": "moving_variance"}
WEIGHT_LEAVES = ("weight", "bias")
# training state in checkpoints (optimizer slots, positions, our model card): not weights
NOT_WEIGHTS = re.compile(r"^(moments|mean_square|moment|accum|rank_statistics)\.|^(global_step|learning_rate|momentum|"
                         r"epoch_num|step_num|top_1_accuracy|model_card)$|\.num_batches_tracked$")
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
EVAL_TRANSFORM = {"eval_resize": 256, "interpolation": "bilinear", "image_mean": IMAGENET_MEAN,
                  "image_std": IMAGENET_STD}
# timm's MobileNetV1 weights (mobilenetv1_100.ra4_e3600_r224_in1k, the only ones) were measured with crop_pct 0.95
# and mean = std = 0.5; its MobileNetV3 ones (lamb_in1k, ra_in1k) with crop_pct 0.875 and ImageNet's statistics
TIMM_V1_TRANSFORM = {"eval_resize": 235, "interpolation": "bicubic", "image_mean": [0.5] * 3, "image_std": [0.5] * 3}


@dataclass(frozen=True)
class Source:
    """A family of weight files: how to recognise it, the order of a module's children where names do not sort into
    forward order (the first listed order holding all of a module's named children applies), the BatchNorm epsilon
    its weights were trained with, and the evaluation transform its published accuracy was measured with."""
    name: str
    recognise: Callable[[set], bool]
    orders: Sequence[Sequence[str]] = ()
    bn_eps: float = 1e-3
    eval_transform: dict = field(default_factory=lambda: dict(EVAL_TRANSFORM))
    refuse: Callable[[set, dict], Optional[str]] = lambda names, tensors: None


def _zoo_refusal(names, tensors):
    if "network.0.0.weight" in names:
        return ("the model zoo's MobileNetV1 pads every convolution TF-'same' style (pad_mode='same': a stride-2 "
                "layer pads only the bottom and right), this network symmetrically (k // 2) as the paper's: its "
                "weights give other outputs here")
    head = [tensors[name] for name in names if re.fullmatch(r"features\.\d+\.weight", name)]
    if any(weight.shape[:2] == (1280, 576) for weight in head):
        return ("the model zoo's MobileNetV3-small has a 1280-wide head without bias, the paper's (and this one) "
                "1024 wide with bias: its weights do not fit")
    return None


def _mindcv_refusal(names, _tensors):
    if any(".layers." in name for name in names):
        return ("mindcv's MobileNetV3 pads its strided depthwise convolutions TF-'same' style (pad_mode='same': the "
                "extra row and column at the bottom and right only), this network symmetrically (k // 2) as the "
                "paper's reference and torchvision; at width 0.75 it also rounds the expansion channels and scales "
                "the head differently: its weights give other outputs here")
    return ("mindcv's MobileNetV1 applies ReLU after every BatchNorm where the paper's network (and this one) applies "
            "ReLU6: its weights give other outputs here")


SOURCES = (
    Source("ours", lambda names: "features.0.1.gamma" in names and "features.0.0.weight" in names,
           refuse=lambda names, tensors: "it is already a checkpoint of this repository: use it as it is"),
    Source("timm", lambda names: "conv_stem.weight" in names,
           orders=(("conv_stem", "bn1", "blocks", "conv_head", "classifier"),
                   ("conv_dw", "bn1", "se", "conv_pw", "bn2"),  # depthwise-separable block
                   ("conv_pw", "bn1", "conv_dw", "bn2", "se", "conv_pwl", "bn3"),  # inverted residual
                   ("conv", "bn1"),  # the last 1x1 convolution
                   ("conv_reduce", "conv_expand")),
           bn_eps=1e-5, eval_transform={**EVAL_TRANSFORM, "interpolation": "bicubic"}),
    Source("torchvision", lambda names: "features.0.1.running_mean" in names, orders=(("features", "classifier"),)),
    Source("the model zoo", lambda names: "network.0.0.weight" in names or "output.weight" in names,
           orders=(("expand", "conv1", "se", "conv2"), ("conv", "bn"), ("conv1", "conv2"), ("features", "output")),
           bn_eps=1e-5, refuse=_zoo_refusal),
    Source("mindcv", lambda names: "features.1.moving_mean" in names, refuse=_mindcv_refusal),
)


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


def recognise(tensors: dict, path: str) -> Source:
    """The source family of `tensors`; refused families raise a `UserError` saying why."""
    names = set(tensors)
    for source in SOURCES:
        if source.recognise(names):
            reason = source.refuse(names, tensors)
            if reason:
                raise UserError(f"{path}: cannot convert ({source.name}): {reason}")
            return source
    raise UserError(f"{path}: not a MobileNet of timm, torchvision, mindcv or the MindSpore model zoo (first tensor "
                    f"'{sorted(names)[0] if names else '(none)'}'); expected one of those weight files")


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


def pair_layers(net: nn.Cell, layers: list, tensors: dict) -> tuple:
    """({our parameter name: array}, notes) with every layer of `net` taken from the source's `layers`; raises
    `Misfit` naming the first tensor that does not fit."""
    ours = network_layers(net)
    params, notes = {}, []
    for index, ((kind, cell), (source_kind, leaves)) in enumerate(zip(ours, layers)):
        if (kind == "bn") != (source_kind == "bn"):
            first = next(iter(leaves.values()))
            raise Misfit(index, f"tensor '{first}' is a {source_kind} layer where the network has a {kind} layer "
                                f"('{cell.cls_name}' of '{_param_prefix(cell)}')")
        if kind == "bn":
            by_role = {BN_LEAVES[leaf]: name for leaf, name in leaves.items() if leaf in BN_LEAVES}
            for role in ("gamma", "beta", "moving_mean", "moving_variance"):
                params.update(_fit(getattr(cell, role), tensors, by_role.get(role), index))
            continue
        params.update(_fit(cell.weight, tensors, leaves.get("weight"), index))
        if cell.bias is not None:
            if "bias" in leaves:
                params.update(_fit(cell.bias, tensors, leaves["bias"], index))
            else:
                params[cell.bias.name] = np.zeros(cell.bias.shape, np.float32)
                notes.append(f"{cell.bias.name} set to zero (the source's layer '{leaves['weight']}' has no bias)")
        elif "bias" in leaves:
            raise Misfit(index, f"tensor '{leaves['bias']}' is a bias where the network's layer "
                                f"'{cell.weight.name}' has none")
    if len(layers) > len(ours):
        raise Misfit(len(ours), f"tensor '{next(iter(layers[len(ours)][1].values()))}' is beyond the network's last "
                                f"layer")
    if len(layers) < len(ours):
        raise Misfit(len(layers), f"the file ends before the network's layer '{_param_prefix(ours[len(layers)][1])}'")
    return params, notes


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


def evaluation_transform(source: Source, model: str, overrides: dict) -> dict:
    """The evaluation transform the converted weights were measured with (`eval_resize`, `interpolation`,
    `image_mean`, `image_std`): the source's, timm's MobileNetV1 its own, with the non-empty `overrides` applied."""
    transform = TIMM_V1_TRANSFORM if source.name == "timm" and model == "mobilenet_v1" else source.eval_transform
    return {**transform, **{key: value for key, value in overrides.items() if key in transform and value}}


def candidates(model: str = "", width_mult: float = 0.0) -> list:
    """(model, width) pairs to try, narrowed by what the user gave."""
    return [(name, width) for name, (widths, _) in MODELS.items() for width in widths
            if (not model or name == model) and (not width_mult or width == width_mult)]


def convert(tensors: dict, source: Source, path: str, model: str = "", width_mult: float = 0.0,
            class_num: int = 0) -> tuple:
    """(network holding the converted weights, its (model, width, class count), notes) for the first candidate whose
    every layer fits; else a `UserError` naming the first tensor that does not fit the closest candidate."""
    layers = source_layers(tensors, source)
    if not layers:
        raise UserError(f"{path}: no convolution, BatchNorm or dense weights found")
    classes = tensors[layers[-1][1]["weight"]].shape[0]
    if class_num and class_num != classes:
        raise UserError(f"{path} has {classes} classes, --class_num says {class_num}; convert as it is and fine-tune "
                        f"with train.py --pre_trained (it replaces the classifier)")
    best = None
    for name, width in candidates(model, width_mult):
        net = create_model(name, classes, width, bn_eps=source.bn_eps)
        try:
            params, notes = pair_layers(net, layers, tensors)
        except Misfit as misfit:
            if best is None or misfit.fitted >= best[0]:  # a tie: the wider model
                best = (misfit.fitted, f"{name} x{width:g}", str(misfit))
            continue
        ms.load_param_into_net(net, {key: ms.Parameter(ms.Tensor(value), key) for key, value in params.items()},
                               strict_load=True)
        return net, (name, width, classes), notes
    wanted = f"{model or 'any model'} at width {width_mult:g}" if width_mult else (model or "any of our models")
    raise UserError(f"{path} ({source.name}) fits {wanted} nowhere: closest is {best[1]}, where {best[2]}")
