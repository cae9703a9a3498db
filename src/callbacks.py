"""Training callbacks: checkpoints, evaluation with the best checkpoint kept, logs and the metrics file."""
import csv
import math
import os
import signal
import time

import numpy as np
from mindspore.train.callback import Callback

from src.checkpoint import save_checkpoint, training_checkpoints
from src.errors import UserError
from src.model_utils.cli import log

METRIC_FIELDS = ("epoch", "global_step", "loss", "lr", "epoch_seconds", "images_per_second",
                 "top_1_accuracy", "top_5_accuracy", "eval_loss")


def _loss_and_overflow(net_outputs) -> tuple:
    """(loss, whether the step overflowed) from a train step's outputs: a loss-scale cell returns
    (loss, overflow, scale), a plain one the loss alone."""
    if isinstance(net_outputs, (tuple, list)):
        return float(np.mean(net_outputs[0].asnumpy())), bool(net_outputs[1].asnumpy())
    return float(np.mean(net_outputs.asnumpy())), False


def step_position(cb, start_step: int) -> tuple:
    """(global step, step within the epoch) of the step that just ended; `start_step` is where a resumed run
    started (MindSpore counts `cur_step_num` from 0 in each run)."""
    global_step = start_step + cb.cur_step_num
    return global_step, (global_step - 1) % cb.batch_num + 1


class CheckpointSaver(Callback):
    """Every `every_epochs` epochs (and after the last) save the train network (weights, BN statistics,
    optimizer moments, global_step, LR) as `<directory>/<prefix>-<epoch>_<step>.ckpt`; keep the newest `keep`.
    `start_step` is the global step a resumed run started at (MindSpore counts steps from 0 in each run)."""

    def __init__(self, directory: str, prefix: str, every_epochs: int, keep: int, total_epochs: int,
                 start_step: int = 0):
        super().__init__()
        self.directory, self.prefix = directory, prefix
        self.every_epochs, self.keep, self.total_epochs = every_epochs, keep, total_epochs
        self.start_step = start_step

    def save(self, cb) -> str:
        """Save now (at the end of the current step); returns the file written.  Weights that are no longer
        finite are never saved: the run stops with a `UserError` and the checkpoints before stay."""
        global_step, step_in_epoch = step_position(cb, self.start_step)
        for param in cb.train_network.trainable_params():
            if not np.isfinite(param.asnumpy()).all():
                raise UserError(f"parameter {param.name} is not finite at epoch {cb.cur_epoch_num} step "
                                f"{step_in_epoch} (global step {global_step}): training diverged and was stopped "
                                f"without saving; checkpoints already saved are kept; lower lr_max")
        path = os.path.join(self.directory, f"{self.prefix}-{cb.cur_epoch_num}_{step_in_epoch}.ckpt")
        save_checkpoint(cb.train_network, path, {"epoch_num": cb.cur_epoch_num, "step_num": global_step})
        for old in training_checkpoints(self.directory, self.prefix)[self.keep:]:
            os.remove(old)
        return path

    def on_train_epoch_end(self, run_context):
        cb = run_context.original_args()
        if run_context.get_stop_requested():
            return
        if cb.cur_epoch_num % self.every_epochs == 0 or cb.cur_epoch_num == self.total_epochs:
            self.save(cb)


class StopOnSignal(Callback):
    """SIGTERM and SIGINT (Ctrl-C) only set a flag; at the next step end the run saves a checkpoint through
    `saver` (None on ranks that write none) and stops.  `signal_name` and `saved` tell what happened."""

    def __init__(self, saver=None):
        super().__init__()
        self.saver, self.signal_name, self.saved = saver, "", ""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._request)

    def _request(self, signum, _frame):
        self.signal_name = signal.Signals(signum).name

    def on_train_step_end(self, run_context):
        if self.signal_name:
            if self.saver is not None:
                self.saved = self.saver.save(run_context.original_args())
            run_context.request_stop()


class EvalMonitor(Callback):
    """Every `interval` epochs evaluate on `eval_dataset`, log top-1/top-5 and keep the best weights
    as `best_path` (when given); the result is left in `cb_params.eval_result` for `TrainMonitor`."""

    def __init__(self, model, eval_dataset, network, interval: int, best_path: str = "", best_top1: float = -1.0):
        super().__init__()
        self.model, self.eval_dataset, self.network = model, eval_dataset, network
        self.interval, self.best_path, self.best_top1 = interval, best_path, best_top1

    def on_train_epoch_end(self, run_context):
        cb = run_context.original_args()
        cb.eval_result = None
        if cb.cur_epoch_num % self.interval or run_context.get_stop_requested():
            return
        start = time.time()
        result = self.model.eval(self.eval_dataset, dataset_sink_mode=False)
        cb.eval_result = result
        top1 = result["top_1_accuracy"]
        line = (f"epoch: {cb.cur_epoch_num} eval: top_1_accuracy {top1:.4f}, top_5_accuracy "
                f"{result['top_5_accuracy']:.4f}, loss {result['loss']:.4f} ({time.time() - start:.1f} s)")
        if top1 > self.best_top1:
            self.best_top1 = top1
            if self.best_path:
                save_checkpoint(self.network, self.best_path,
                                {"epoch_num": cb.cur_epoch_num, "top_1_accuracy": float(top1)})
                line += f"; best so far, saved {self.best_path}"
        log(line)


class TrainMonitor(Callback):
    """Logs in the model zoo's format (`epoch: 1 step: 10, loss is 2.30`, `Epoch time: ..., per step
    time: ...`) plus learning rate, images/s and time left; appends a row per epoch to `metrics_path`.
    `lr` holds the per-step rates of the whole run; `start_step` is where a resumed run started.

    A non-finite loss stops the run with a `UserError` naming epoch and step, before any checkpoint of that
    epoch is written.  With `skip_overflow` (dynamic loss scale) an overflowing step is skipped by the
    loss-scale cell instead, and counted."""

    def __init__(self, lr: np.ndarray, images_per_step: int, log_interval: int, total_epochs: int,
                 metrics_path: str = "", start_step: int = 0, skip_overflow: bool = False):
        super().__init__()
        self.start_step, self.skip_overflow = start_step, skip_overflow
        self.lr, self.images_per_step, self.log_interval = lr, images_per_step, log_interval
        self.total_epochs, self.metrics_path = total_epochs, metrics_path
        self.epoch_start, self.losses, self.epoch_seconds, self.skipped = 0.0, [], [], 0

    def on_train_epoch_begin(self, run_context):
        self.epoch_start, self.losses, self.skipped = time.time(), [], 0

    def _lr_at(self, global_step: int) -> float:
        """Learning rate used by global step `global_step` (counted from 1)."""
        return float(self.lr[min(global_step, len(self.lr)) - 1])

    def on_train_step_end(self, run_context):
        cb = run_context.original_args()
        loss, overflow = _loss_and_overflow(cb.net_outputs)
        global_step, step_in_epoch = step_position(cb, self.start_step)
        if overflow and self.skip_overflow:
            self.skipped += 1
            log(f"epoch: {cb.cur_epoch_num} step: {step_in_epoch}, gradient overflow: step skipped, "
                f"loss scale lowered")
            return
        if not math.isfinite(loss):
            raise UserError(f"loss is {loss} at epoch {cb.cur_epoch_num} step {step_in_epoch} (global step "
                            f"{global_step}): training diverged and was stopped; checkpoints "
                            f"already saved are kept; lower lr_max, or use --loss_scale_type dynamic")
        self.losses.append(loss)
        if step_in_epoch % self.log_interval == 0 or step_in_epoch == cb.batch_num:
            log(f"epoch: {cb.cur_epoch_num} step: {step_in_epoch}, loss is {loss:.6f}, "
                f"lr: {self._lr_at(global_step):.6g}")

    def on_train_epoch_end(self, run_context):
        cb = run_context.original_args()
        if run_context.get_stop_requested():
            return
        seconds = time.time() - self.epoch_start
        self.epoch_seconds.append(seconds)
        steps = max(len(self.losses) + self.skipped, 1)
        left = (self.total_epochs - cb.cur_epoch_num) * float(np.median(self.epoch_seconds))
        skipped = f", skipped steps: {self.skipped}" if self.skipped else ""
        log(f"Epoch time: {seconds * 1000:.3f}, per step time: {seconds * 1000 / steps:.3f}, "
            f"{self.images_per_step * steps / seconds:.1f} img/s, time left: {_hms(left)}{skipped}")
        if self.metrics_path:
            result = cb.get("eval_result") or {}
            global_step = step_position(cb, self.start_step)[0]
            self._append_row({
                "epoch": cb.cur_epoch_num, "global_step": global_step,
                "loss": f"{np.mean(self.losses) if self.losses else math.nan:.6f}",
                "lr": f"{self._lr_at(global_step):.6g}", "epoch_seconds": f"{seconds:.3f}",
                "images_per_second": f"{self.images_per_step * steps / seconds:.1f}",
                "top_1_accuracy": _fmt(result.get("top_1_accuracy")),
                "top_5_accuracy": _fmt(result.get("top_5_accuracy")),
                "eval_loss": _fmt(result.get("loss")),
            })

    def _append_row(self, row: dict) -> None:
        new = not os.path.exists(self.metrics_path)
        with open(self.metrics_path, "a", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=METRIC_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)


def trim_metrics(metrics_path: str, epochs_done: int) -> None:
    """Drop rows after `epochs_done` from a metrics file (a resumed run writes those epochs again)."""
    if not os.path.exists(metrics_path):
        return
    with open(metrics_path, newline="", encoding="utf-8") as src:
        rows = [row for row in csv.DictReader(src) if int(row["epoch"]) <= epochs_done]
    tmp = metrics_path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, metrics_path)


def _fmt(value) -> str:
    return "" if value is None else f"{value:.6f}"


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
