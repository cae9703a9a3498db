"""Wiring shared by train.py and eval.py: precision settings, metrics and the `Model` wrapper."""
import mindspore.nn as nn
from mindspore.amp import DynamicLossScaleManager, FixedLossScaleManager
from mindspore.train import Model

from src.loss import CrossEntropySmooth
from src.model_utils.cli import warn


def precision_settings(config) -> tuple:
    """(amp level, loss scale manager or None, loss scale the optimizer divides out).

    CPU has no float16 kernels for these networks: any amp level there falls back to O0 with a warning.
    A fixed scale is divided out by the optimizer; a dynamic one by its manager.
    """
    amp_level = config.amp_level
    if config.device_target == "CPU" and amp_level != "O0":
        warn(f"amp_level {amp_level} needs float16 kernels that CPU lacks: training in float32 (O0)")
        amp_level = "O0"
    if config.loss_scale_type == "dynamic":
        return amp_level, DynamicLossScaleManager(init_loss_scale=config.loss_scale), 1.0
    if config.loss_scale == 1.0:
        return amp_level, None, 1.0
    return amp_level, FixedLossScaleManager(config.loss_scale, drop_overflow_update=False), config.loss_scale


def eval_metrics() -> dict:
    return {"top_1_accuracy": nn.Top1CategoricalAccuracy(), "top_5_accuracy": nn.Top5CategoricalAccuracy(),
            "loss": nn.Loss()}


def build_model(config, net, loss_fn=None, optimizer=None, amp_level="O0", loss_scale_manager=None) -> Model:
    """`Model` that trains with `loss_fn`/`optimizer` (when given) and evaluates top-1, top-5 and plain
    cross-entropy (label smoothing is a training device, not part of the reported loss)."""
    eval_net = nn.WithEvalCell(net, CrossEntropySmooth(config.class_num, 0.0), add_cast_fp32=True)
    kwargs = {"amp_level": amp_level}
    if loss_scale_manager is not None:
        kwargs["loss_scale_manager"] = loss_scale_manager
    return Model(net, loss_fn=loss_fn, optimizer=optimizer, metrics=eval_metrics(), eval_network=eval_net,
                 eval_indexes=[0, 1, 2], **kwargs)
