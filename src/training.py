"""Decisions made before the first step, as functions of the config (precision, loss scale, data sink, `Model.train`
arguments, evaluation), and the `Model` wrapper shared by train.py and eval.py."""
import math
from dataclasses import dataclass

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from mindspore import Parameter, Tensor
from mindspore.amp import DynamicLossScaleManager, FixedLossScaleManager, LossScaleManager
from mindspore.train import Model

from src.distributed import all_reduce, rank_and_size
from src.errors import UserError
from src.loss import CrossEntropySmooth
from src.model_utils.cli import log, warn


class CountingLossScaleUpdateCell(nn.DynamicLossScaleUpdateCell):
    """MindSpore's dynamic loss-scale update, plus a count of the steps it skipped for gradient overflow, kept on the
    device: with data sink the callbacks see only the last step of each sink."""

    def __init__(self, loss_scale_value, scale_factor, scale_window):
        super().__init__(loss_scale_value, scale_factor, scale_window)
        self.skipped_steps = Parameter(Tensor(0, ms.int32), name="skipped_steps", requires_grad=False)

    def construct(self, loss_scale, overflow):
        counted = ops.assign_add(self.skipped_steps, ops.cast(overflow, ms.int32))
        return ops.depend(nn.DynamicLossScaleUpdateCell.construct(self, loss_scale, overflow), counted)


class CountingDynamicLossScaleManager(DynamicLossScaleManager):
    """`DynamicLossScaleManager` whose update cell counts the skipped steps (`skipped_steps()`)."""

    def __init__(self, init_loss_scale, scale_factor=2, scale_window=2000):
        super().__init__(init_loss_scale, scale_factor, scale_window)
        self.update_cell = CountingLossScaleUpdateCell(self.loss_scale, self.scale_factor, self.scale_window)

    def get_update_cell(self):
        return self.update_cell

    def skipped_steps(self) -> int:
        """Steps skipped so far (gradient overflow)."""
        return int(self.update_cell.skipped_steps.asnumpy())


@dataclass(frozen=True)
class Precision:
    """`amp_level`: O0-O3 as in `mindspore.amp` (O1 applied by `mixed_precision_o1`); `loss_scale_manager`: always
    explicit (MindSpore gives O2 a `DynamicLossScaleManager` when none is passed, `_config_level` in amp.py);
    `optimizer_loss_scale`: the fixed scale the optimizer divides out (1 with a dynamic manager)."""
    amp_level: str
    loss_scale_manager: LossScaleManager
    optimizer_loss_scale: float

    @property
    def skips_steps(self) -> bool:
        """Whether the manager skips overflowing steps (then they are counted, not fatal)."""
        return self.loss_scale_manager.get_drop_overflow_update()


def precision_settings(config) -> Precision:
    """The run's `Precision`.  CPU trains in float32: an amp level there falls back to O0 and a dynamic loss scale
    to a fixed one, each with a warning (MindSpore refuses loss-scale update cells on CPU, `build_train_network`);
    `config` then says so (it is the record of what ran)."""
    amp_level, scale_type = config.amp_level, config.loss_scale_type
    if config.device_target == "CPU":
        if amp_level != "O0":
            warn(f"amp_level {amp_level} is for GPU and Ascend: training in float32 (O0) on CPU")
            config.amp_level = amp_level = "O0"
        if scale_type == "dynamic":
            warn(f"loss_scale_type dynamic is for GPU and Ascend: a fixed loss scale of {config.loss_scale:g} on CPU")
            config.loss_scale_type = scale_type = "fixed"
    if scale_type == "dynamic":
        return Precision(amp_level, CountingDynamicLossScaleManager(config.loss_scale), 1.0)
    return Precision(amp_level, FixedLossScaleManager(config.loss_scale, drop_overflow_update=False), config.loss_scale)


def mixed_precision_o1(net: nn.Cell) -> nn.Cell:
    """amp level O1 on `net`, in place: convolutions and dense layers (MindSpore's O1 white list) in float16,
    everything else in float32.

    MindSpore's own O1 (`_auto_mixed_precision_rewrite` in mindspore/train/amp.py) rewrites the Python source of
    every `construct` into new classes; on these networks it fails while building them (IndexError where the
    generated code assigns into nested SequentialCells, `_get_prefix_and_index` in nn/layer/container.py) and leaves
    a `rewritten_network/` folder behind.  Here
    `Cell.to_float` marks the cells instead: every cell casts its inputs to float32, convolution and dense cells
    theirs (and their weights) to float16."""
    net.to_float(ms.float32)
    for _, cell in net.cells_and_names():
        if isinstance(cell, (nn.Conv2d, nn.Dense)):
            cell.to_float(ms.float16)
    return net


class EvalSums(nn.Metric):
    """Sums over the images seen: correct top-1, correct top-5 (as `nn.Top1/Top5CategoricalAccuracy` decide),
    per-image loss, image count, and the confusion matrix (rows: true class, columns: top-1 class); `evaluate` adds
    them up over the ranks.  Per-image losses, so that the mean does not depend on how the images fall into batches
    (or shards)."""

    def __init__(self, class_num: int):
        super().__init__()
        self.class_num = class_num
        self.clear()

    def clear(self):
        self.sums = np.zeros(4)
        self.confusion = np.zeros((self.class_num, self.class_num), np.int64)

    def update(self, *inputs):
        losses, logits, labels = (self._convert_data(value) for value in inputs)
        ranked = np.argsort(-logits, axis=1)[:, :5]  # as nn.TopKCategoricalAccuracy ranks (ties included)
        self.sums += (np.sum(ranked[:, 0] == labels), np.sum(ranked == labels[:, None]),
                      np.sum(losses, dtype=np.float64), labels.shape[0])
        np.add.at(self.confusion, (labels.astype(np.int64), ranked[:, 0]), 1)

    def eval(self):
        return self.sums, self.confusion


def build_model(config, net, loss_fn=None, optimizer=None, precision: Precision = None) -> Model:
    """`Model` that trains `net` with `loss_fn`/`optimizer` (when given) at `precision`, and evaluates top-1, top-5
    and plain cross-entropy (label smoothing is a training device, not part of the reported loss).  Mixed
    precision changes `net` in place, so evaluation and checkpoints use the network that is trained."""
    eval_net = nn.WithEvalCell(net, CrossEntropySmooth(config.class_num, 0.0, reduction="none"), add_cast_fp32=True)
    kwargs = {}
    if precision is not None:
        amp_level = precision.amp_level
        if amp_level == "O1":
            mixed_precision_o1(net)
            log("amp_level O1: convolutions and dense layers in float16 through Cell.to_float (MindSpore's O1 "
                "source rewrite fails on these networks)")
            amp_level = "O0"  # applied above; `Model` must not convert again
        kwargs = {"amp_level": amp_level, "loss_scale_manager": precision.loss_scale_manager}
    model = Model(net, loss_fn=loss_fn, optimizer=optimizer, metrics={"sums": EvalSums(config.class_num)},
                  eval_network=eval_net, **kwargs)
    if kwargs.get("amp_level") == "O2":  # O2 keeps BatchNorm2d in float32 (amp.py AMP_BLACK_LIST), not SyncBatchNorm
        for _, cell in net.cells_and_names():
            if isinstance(cell, nn.SyncBatchNorm):
                cell.to_float(ms.float32)
    return model


def evaluate(model: Model, dataset, callbacks=None) -> tuple:
    """({top_1_accuracy, top_5_accuracy, loss}, confusion matrix) of `model` on `dataset`, every image counted once
    (with several ranks `dataset` is this rank's shard and the ranks' sums are added up).  Never with data sink: a
    sink takes its shapes from the first batch (`Model._exec_preprocess` sets `__loop_size__ = 1` for evaluation) and
    the last, partial batch (ImageNet: 50,000 % 256 = 80 images) would fail or force dynamic shapes."""
    sums, confusion = model.eval(dataset, callbacks=callbacks, dataset_sink_mode=False)["sums"]
    top1, top5, loss, count = all_reduce(sums).astype(np.float64)
    if rank_and_size()[1] > 1:
        log(f"evaluated {sums[3]:.0f} of {count:.0f} images on this rank")
        confusion = all_reduce(confusion.astype(np.float32)).astype(np.int64)  # exact: counts stay below 2**24
    return {"top_1_accuracy": top1 / count, "top_5_accuracy": top5 / count, "loss": loss / count}, confusion


def evaluate_exported(run, dataset, class_num: int, progress=None) -> tuple:
    """({top_1_accuracy, top_5_accuracy, loss}, confusion matrix) of an exported model, `run` (a float32 NCHW batch
    -> logits, see `src.predict.exported_model`), on `dataset` (its "image" and "label" columns), counted as
    `evaluate` counts (`EvalSums`; the loss is the per-image cross-entropy, computed here in float64)."""
    sums = EvalSums(class_num)
    for batch in dataset.create_dict_iterator(num_epochs=1, output_numpy=True):
        logits, labels = run(batch["image"]).astype(np.float64), batch["label"]
        top = logits.max(axis=1, keepdims=True)
        losses = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0] - logits[np.arange(len(labels)), labels]
        sums.update(losses, logits, labels)
        if progress is not None:
            progress.advance(len(labels))
    (top1, top5, loss, count), confusion = sums.eval()
    return {"top_1_accuracy": top1 / count, "top_5_accuracy": top5 / count, "loss": loss / count}, confusion


@dataclass(frozen=True)
class DataSink:
    """Data sink (GPU and Ascend in graph mode; MindSpore's CPU has none): `enabled`, `steps` per sink (1 without)."""
    enabled: bool
    steps: int


def largest_divisor(number: int, at_most: int) -> int:
    """The largest divisor of `number` that is at most `at_most` (1 at least)."""
    return max(d for d in range(1, min(number, max(at_most, 1)) + 1) if number % d == 0)


def data_sink(config, steps_per_epoch: int, global_step: int = 0) -> DataSink:
    """The `DataSink` of a run that starts at `global_step`.  With sink MindSpore calls the callbacks, and so a stop on
    a signal, only at a sink's end (`Model._train_dataset_sink_process`): `sink_size` -1 takes the largest divisor of
    the epoch (and of `global_step`, where a resumed run starts) whose sink lasts at most `stop_seconds` at
    `step_seconds` per step (`stop_seconds` 0: the whole epoch).  An explicit `sink_size` must divide the epoch, so
    that epochs end at a sink's end (evaluation, checkpoints and the metrics row happen there).  In PyNative mode
    MindSpore feeds a sink one step at a time (model.py line 1164, dataset_helper.py `_DatasetIterPyNative`), which
    gains nothing: sink is off there, with a warning."""
    if not config.dataset_sink_mode or config.device_target == "CPU":
        return DataSink(False, 1)
    if config.mode == "pynative":
        warn("dataset_sink_mode: in pynative mode MindSpore feeds a data sink one step at a time, which gains nothing; "
             "training without data sink (--dataset_sink_mode False says so)")
        return DataSink(False, 1)
    if config.sink_size == -1:
        fits = math.gcd(steps_per_epoch, global_step)
        return DataSink(True, largest_divisor(fits, int(config.stop_seconds / config.step_seconds)
                                              if config.stop_seconds else fits))
    steps = config.sink_size
    if steps_per_epoch % steps:
        divisors = [d for d in range(1, steps_per_epoch + 1) if steps_per_epoch % d == 0]
        raise UserError(f"sink_size {steps} does not divide the {steps_per_epoch} steps of an epoch; use one of "
                        f"{', '.join(map(str, divisors[-8:]))} (or -1: sized for stop_seconds)")
    return DataSink(True, steps)


def train_arguments(config, sink: DataSink, steps_per_epoch: int, global_step: int, checkpoint: str = "") -> dict:
    """Keyword arguments of `Model.train` for a run that starts at `global_step` (restored from `checkpoint`).

    With data sink `Model.train` counts one "epoch" per sink (`Model._train_dataset_sink_process`), and a dataset
    whose initial step is not at a sink's end is silently moved back to the sink's start
    (`_DatasetIter.__init__` in mindspore/train/dataset_helper.py), which would train those steps twice and run past
    the LR array: such a checkpoint is refused with what to do."""
    if not sink.enabled:
        return {"epoch": config.epoch_size, "initial_epoch": global_step // steps_per_epoch,
                "dataset_sink_mode": False}
    if global_step % sink.steps:
        fits = math.gcd(global_step, steps_per_epoch)
        raise UserError(f"resume checkpoint {checkpoint} stopped at global step {global_step}, inside a data sink of "
                        f"{sink.steps} steps; resume with --sink_size {fits} (divides the step and the epoch), -1 "
                        f"(picks a sink that fits) or --dataset_sink_mode False")
    return {"epoch": config.epoch_size * steps_per_epoch // sink.steps, "initial_epoch": global_step // sink.steps,
            "dataset_sink_mode": True, "sink_size": sink.steps}


def optimizer_steps(optimizer) -> int:
    """Steps `optimizer` has applied (its `global_step`, the index of its next learning rate): fewer than the batches
    trained when a dynamic loss scale skipped some (`TrainOneStepWithLossScaleCell.construct`, nn/wrap/loss_scale.py
    lines 433-434)."""
    return int(optimizer.global_step.asnumpy().reshape(-1)[0])
