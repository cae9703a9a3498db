"""Checkpoints: read (through MindSpore's loader only), fit to a network, save atomically, find the newest."""
import glob
import os
from typing import Optional

import mindspore as ms
import mindspore.nn as nn
import numpy as np

from src.distributed import restore_own_statistics
from src.errors import UserError
from src.kernels.lowering import lower_for_cpu
from src.model_card import ARCHITECTURE_KEYS, EVALUATION_KEYS, apply_card, read_card
from src.model_utils.cli import log, warn
from src.models import create_model
from src.optimizer import EMA_PREFIX

CLASSIFIER = "classifier"
PARTIAL = ".partial.ckpt"  # suffix of a checkpoint still being written


def read_checkpoint(path: str, what: str = "checkpoint") -> dict:
    """Parameter dict of `path`; a missing or unreadable file is a `UserError` naming it."""
    if not path or not os.path.isfile(path):
        raise UserError(f"{what} not found: {path or '(empty path)'}")
    try:
        return ms.load_checkpoint(path)
    except (ValueError, RuntimeError, OSError) as err:
        raise UserError(f"{what} {path} cannot be read as a MindSpore checkpoint (truncated or corrupt?): "
                        f"{str(err).splitlines()[0]}") from err


def fit_to_network(net, params: dict, path: str, what: str = "checkpoint", allow_new_head: bool = False) -> dict:
    """The entries of `params` that load into `net`, checked against its parameter names and shapes.

    A classifier with another class count is dropped with a message when `allow_new_head` (fine-tuning);
    any other difference is a `UserError` that says what does not fit.
    """
    expected = {p.name: tuple(p.shape) for p in net.get_parameters()}
    missing = [name for name in expected if name not in params]
    other_shape = [name for name in expected if name in params and tuple(params[name].shape) != expected[name]]
    head = [name for name in other_shape if name.startswith(CLASSIFIER + ".")]
    if missing or len(head) != len(other_shape):
        wrong = missing + [n for n in other_shape if n not in head]
        raise UserError(f"{what} {path} does not fit this network ({len(missing)} parameters missing, "
                        f"{len(other_shape) - len(head)} of another shape, e.g. '{wrong[0]}'): was it trained "
                        f"with another --model or --width_mult?")
    if head:
        ckpt_classes = params[f"{CLASSIFIER}.weight"].shape[0]
        net_classes = expected[f"{CLASSIFIER}.weight"][0]
        if not allow_new_head:
            raise UserError(f"{what} {path} has {ckpt_classes} classes but class_num is {net_classes}")
        log(f"{what} {path}: its classifier has {ckpt_classes} classes, the model {net_classes}: "
            f"dropping {', '.join(head)} (fine-tuning with a new head)")
    # only the network's own names: MindSpore would also load e.g. `moments.classifier.weight` by suffix
    return {name: params[name] for name in expected if name not in head}


def checkpoint_in(path: str, what: str = "checkpoint") -> str:
    """`path`, or for a folder (a run's output folder, or its ckpt_0) the checkpoint in it to use: its best one
    (`*_best.ckpt`), else its newest; says which."""
    if not os.path.isdir(path):
        return path
    for folder in (path, os.path.join(path, "ckpt_0")):
        files = sorted((f for f in glob.glob(os.path.join(glob.escape(folder), "*.ckpt")) if not f.endswith(PARTIAL)),
                       key=os.path.getmtime, reverse=True)
        best = [f for f in files if f.endswith("_best.ckpt")]
        if files:
            chosen = (best or files)[0]
            log(f"{what} {path} is a folder: using its {'best' if best else 'newest'} checkpoint {chosen}")
            return chosen
    raise UserError(f"{what} {path} is a folder without checkpoints (*.ckpt, also none in its ckpt_0); expected a "
                    f"checkpoint file or a training output folder")


def build_network(config, checkpoint: str = "", what: str = "checkpoint", fine_tune: bool = False,
                  for_export: bool = False):
    """The network `config` describes, with the weights (and BN statistics) of `checkpoint` when given, checked by
    `fit_to_network`; on CPU lowered for the C++ kernels (`lower_for_cpu`: CPU trains in float32, see
    `src.training.precision_settings`) unless `for_export` (an exported file holds MindSpore's standard operators).
    The checkpoint's model card (see src/model_card.py) settles the architecture (model, width, BatchNorm epsilon and
    the model options other sources' weights need: padding, activation, head width and bias) and, unless
    fine-tuning (where a new head may replace its classifier), the class count, class names and evaluation
    transform: `config` is updated, except for keys given on the command line.  A checkpoint with an EMA of the
    weights (`ema.<name>`) gives its averages unless `config.use_ema` is false.  Returns (network, card)."""
    params, card = {}, {}
    if checkpoint:
        checkpoint = checkpoint_in(checkpoint, what)
        params = read_checkpoint(checkpoint, what)
        card = read_card(params, checkpoint)
        apply_card(config, card, checkpoint, ARCHITECTURE_KEYS if fine_tune else ARCHITECTURE_KEYS + EVALUATION_KEYS)
    net = create_model(config.model, config.class_num, config.width_mult, config.dropout, config.sync_bn,
                       config.bn_eps, padding=config.padding, activation=config.activation,
                       head_width=config.head_width, head_bias=config.head_bias)
    if checkpoint:
        averages = {name[len(EMA_PREFIX) + 1:]: value for name, value in params.items()
                    if name.startswith(EMA_PREFIX + ".")}
        if averages and config.use_ema:
            params = {**params, **averages}
            log(f"{what} {checkpoint}: using its EMA weights (--use_ema False for the trained ones)")
        ms.load_param_into_net(net, fit_to_network(net, params, checkpoint, what, allow_new_head=fine_tune))
    if config.device_target == "CPU" and not for_export:
        lower_for_cpu(net)
    return net, card


def checkpoint_position(params: dict) -> tuple:
    """(epochs done, global step) stored in a training checkpoint: the step is the batches trained (`step_num`,
    which our checkpoints store), not the optimizer's `global_step`, which lags behind it by the steps a dynamic loss
    scale skipped (MindSpore's own checkpoints have only that one)."""
    if "global_step" not in params or "epoch_num" not in params:
        raise UserError("checkpoint has no training position (global_step, epoch_num): it is a weights-only "
                        "checkpoint; use it with --pre_trained instead of --resume")
    step = params["step_num"] if "step_num" in params else params["global_step"]
    return int(params["epoch_num"].asnumpy()), int(np.asarray(step.asnumpy()).reshape(-1)[0])


def loss_scale_state(train_network) -> list:
    """The Parameters of a dynamic loss scale: `scale_sense` of MindSpore's `TrainOneStepWithLossScaleCell` and those
    of its update cell (nn/wrap/loss_scale.py lines 399-402: the iteration counters of `DynamicLossScaleUpdateCell`,
    lines 153-154, and our skipped-step count); none for another train network."""
    if not isinstance(train_network, nn.TrainOneStepWithLossScaleCell):
        return []
    update_cell = train_network.loss_scaling_manager
    return [train_network.scale_sense, *(update_cell.get_parameters() if update_cell is not None else ())]


def restore_training(path: str, net, optimizer, total_steps: int, train_network=None) -> tuple:
    """Load weights, BN statistics, optimizer state (moments, global_step, LR) and the state of a dynamic loss scale
    (in `train_network`) from `path`, which must come from a run of `total_steps` steps (one LR per step); with
    several ranks each takes its own BN statistics where the checkpoint has them.  Returns (epoch stored, global
    step)."""
    params = read_checkpoint(path, "resume checkpoint")
    position = checkpoint_position(params)
    weights = fit_to_network(net, params, path, "resume checkpoint")
    saved_steps = params["learning_rate"].size
    if saved_steps != total_steps:
        raise UserError(f"resume checkpoint {path} belongs to a run of {saved_steps} steps, this run has "
                        f"{total_steps}: resume with the same epoch_size, batch_size, data set and device count; to "
                        f"train on from it with other settings, start a new run from its weights: --pre_trained "
                        f"{path} (a new learning-rate schedule and optimizer state) and another save_checkpoint_path")
    ms.load_param_into_net(net, weights)
    ms.load_param_into_net(optimizer, params)
    restore_own_statistics(net, params)
    scale = loss_scale_state(train_network)
    if scale and all(param.name in params for param in scale):
        for param in scale:
            param.set_data(ms.Tensor(params[param.name].asnumpy()))
    elif scale:
        log(f"resume checkpoint {path} has no dynamic loss-scale state (a run with a fixed scale): the scale starts "
            f"again at loss_scale")
    ema = getattr(optimizer, "ema", None)
    if ema is not None and not any(name.startswith(EMA_PREFIX + ".") for name in params):
        ema.restart()  # a run resumed with EMA on from a checkpoint without one: average from the resumed weights
        log(f"resume checkpoint {path} has no EMA of the weights: the EMA starts from its weights")
    return position


def training_checkpoints(ckpt_dir: str, prefix: str) -> list:
    """Training checkpoints `<prefix>-<epoch>_<step>.ckpt` in `ckpt_dir`, newest first (by write time)."""
    files = glob.glob(os.path.join(glob.escape(ckpt_dir), f"{glob.escape(prefix)}-*.ckpt"))
    return sorted((f for f in files if not f.endswith(PARTIAL)), key=os.path.getmtime, reverse=True)


def find_resume_checkpoint(ckpt_dir: str, prefix: str) -> Optional[str]:
    """Newest readable training checkpoint; unreadable newer ones are skipped with a warning."""
    for path in training_checkpoints(ckpt_dir, prefix):
        try:
            checkpoint_position(read_checkpoint(path))
            return path
        except UserError as err:
            warn(f"resume auto: skipping {path}: {err}")
    return None


def save_checkpoint(cell, path: str, append: Optional[dict] = None) -> None:
    """Write `cell`'s parameters to `path`; the file appears only complete (written under a temporary
    name, then renamed), so an existing file of the same name is replaced only by a whole one."""
    tmp = f"{path[:-len('.ckpt')]}{PARTIAL}"
    ms.save_checkpoint(cell, tmp, append_dict=append)
    os.replace(tmp, path)


def prepare_output(path: str, writer: bool) -> str:
    """Create the output folder and its `ckpt_0` (only rank 0 writes); returns the checkpoint folder."""
    ckpt_dir = os.path.join(path, "ckpt_0")
    if writer:
        try:
            os.makedirs(ckpt_dir, exist_ok=True)
            probe = os.path.join(ckpt_dir, ".write_test")
            with open(probe, "w", encoding="utf-8"):
                pass
            os.remove(probe)
        except OSError as err:
            raise UserError(f"save_checkpoint_path '{path}' is not writable: {err.strerror}") from err
    return ckpt_dir


def resume_path(config, ckpt_dir: str) -> str:
    """The checkpoint `config.resume` names: a path, or with "auto" the newest readable one in `ckpt_dir`
    ("" when there is none: the run starts anew)."""
    if config.resume != "auto":
        return config.resume
    path = find_resume_checkpoint(ckpt_dir, config.model)
    log(f"resume auto: {'continuing from ' + path if path else 'no checkpoint in ' + ckpt_dir + ', starting anew'}")
    return path or ""


def best_top1(best_path: str) -> float:
    """Top-1 accuracy stored in the best checkpoint so far (-1 when there is none)."""
    if not os.path.isfile(best_path):
        return -1.0
    return float(read_checkpoint(best_path, "best checkpoint")["top_1_accuracy"].asnumpy())
