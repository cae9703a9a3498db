"""The model card: what a checkpoint holds, saved inside it as one entry (JSON text as a uint8 tensor, so that every
reader of checkpoint entries sees tensors only), so that a checkpoint alone
says which network to build (model, width, BatchNorm epsilon, the options other sources' networks need), how its
images were evaluated (the data set's transform, size, resize, interpolation, mean and std) and the names of its
classes.  Training writes it into every checkpoint; `convert_weights.py` writes
the source's settings; `eval.py`, `predict.py`, `export.py` and `train.py --pre_trained` take them from it."""
import json
import os
from typing import Optional, Sequence

import numpy as np
from mindspore import Tensor

from src.errors import UserError
from src.model_utils.cli import log, warn

CARD_ENTRY = "model_card"
# what the network computes: a checkpoint's weights only reproduce their results with these
ARCHITECTURE_KEYS = ("model", "width_mult", "bn_eps", "padding", "activation", "head_width", "head_bias")
# how its images are prepared (`dataset`: which evaluation transform, CIFAR-10's or ImageNet's, with the keys after
# it) and what its outputs mean
EVALUATION_KEYS = ("dataset", "class_num", "image_size", "eval_resize", "interpolation", "image_mean", "image_std")
IMAGENET_CLASSES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.txt")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def make_card(config, class_names: Optional[Sequence[str]] = None, source: str = "") -> dict:
    """The card of a network built from `config`, with `class_names` (None: unknown) and where the weights come
    from (`source`)."""
    card = {key: getattr(config, key) for key in ARCHITECTURE_KEYS + EVALUATION_KEYS}
    card["class_names"] = list(class_names) if class_names else None
    if source:
        card["source"] = source
    return card


def card_entries(card: Optional[dict]) -> dict:
    """The checkpoint entry holding `card` (for `save_checkpoint(..., append)`); {} for no card."""
    return {CARD_ENTRY: Tensor(np.frombuffer(json.dumps(card).encode(), np.uint8))} if card else {}


def read_card(params: dict, path: str) -> dict:
    """The card stored in a checkpoint's `params` ({} for a checkpoint without one)."""
    if CARD_ENTRY not in params:
        return {}
    try:
        card = json.loads(params[CARD_ENTRY].asnumpy().astype(np.uint8).tobytes().decode())
    except (ValueError, AttributeError) as err:
        raise UserError(f"checkpoint {path}: its {CARD_ENTRY} entry is not valid JSON ({err})") from err
    if not isinstance(card, dict):
        raise UserError(f"checkpoint {path}: its {CARD_ENTRY} entry is not a mapping")
    return card


def apply_card(config, card: dict, path: str, keys: Sequence[str]) -> None:
    """Take the values of `keys` from `card` where they differ from the config, except for keys given on the command
    line (the user's word wins: a model that does not fit then fails to load, naming the parameter); says what it
    took.  A card written before cards recorded the data set leaves the config's, with a warning."""
    if card and "dataset" in keys and "dataset" not in card and "dataset" not in config.cli_keys:
        warn(f"{path}: its model card does not say how its images were prepared (no 'dataset', an older card): using "
             f"the config's, dataset {config.dataset}; pass --dataset cifar10 or imagenet2012 as it was trained")
    taken = []
    for key in keys:
        if key not in card or getattr(config, key) == card[key]:
            continue
        if key in config.cli_keys:
            warn(f"{path}: --{key} {getattr(config, key)} differs from its model card's {key} {card[key]}; the command "
                 f"line's is used")
        else:
            setattr(config, key, card[key])
            taken.append(f"{key}={card[key]}")
    if taken:
        log(f"checkpoint {path}: {', '.join(taken)} from its model card")


def imagenet_class_names() -> list:
    """The 1,000 ImageNet-1k class names in label order (torchvision's list)."""
    with open(IMAGENET_CLASSES, encoding="utf-8") as names:
        return [line.rstrip("\n") for line in names]


def class_names(card: dict, class_num: int) -> list:
    """The card's class names when it has `class_num` of them, else ImageNet-1k's for 1,000 classes, else the class
    indices as text."""
    names = card.get("class_names") or []
    if len(names) == class_num:
        return list(names)
    return imagenet_class_names() if class_num == 1000 else [str(index) for index in range(class_num)]
