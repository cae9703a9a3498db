"""Training callbacks: checkpoints, evaluation with the best checkpoint kept, logs and the metrics file."""
import csv
import math
import os
import time

import numpy as np
from mindspore.train.callback import Callback

from src.checkpoint import save_checkpoint, training_checkpoints
from src.model_utils.cli import log

METRIC_FIELDS = ("epoch", "global_step", "loss", "lr", "epoch_seconds", "images_per_second",
                 "top_1_accuracy", "top_5_accuracy", "eval_loss")


def _loss_value(net_outputs) -> float:
    """The loss from a train step's outputs (a loss-scale cell also returns overflow and scale)."""
    loss = net_outputs[0] if isinstance(net_outputs, (tuple, list)) else net_outputs
    return float(np.mean(loss.asnumpy()))


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

    def on_train_epoch_end(self, run_context):
        cb = run_context.original_args()
        epoch = cb.cur_epoch_num
        if epoch % self.every_epochs and epoch != self.total_epochs:
            return
        path = os.path.join(self.directory, f"{self.prefix}-{epoch}_{cb.batch_num}.ckpt")
        save_checkpoint(cb.train_network, path, {"epoch_num": epoch, "step_num": self.start_step + cb.cur_step_num})
        for old in training_checkpoints(self.directory, self.prefix)[self.keep:]:
            os.remove(old)


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
        if cb.cur_epoch_num % self.interval:
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
    `lr` holds the per-step rates of the whole run; `start_step` is where a resumed run started."""

    def __init__(self, lr: np.ndarray, images_per_step: int, log_interval: int, total_epochs: int,
                 metrics_path: str = "", start_step: int = 0):
        super().__init__()
        self.start_step = start_step
        self.lr, self.images_per_step, self.log_interval = lr, images_per_step, log_interval
        self.total_epochs, self.metrics_path = total_epochs, metrics_path
        self.epoch_start, self.losses, self.epoch_seconds = 0.0, [], []

    def on_train_epoch_begin(self, run_context):
        self.epoch_start, self.losses = time.time(), []

    def _lr_at(self, step: int) -> float:
        """Learning rate used by the `step`-th step of this run (counted from 1)."""
        return float(self.lr[min(self.start_step + step, len(self.lr)) - 1])

    def on_train_step_end(self, run_context):
        cb = run_context.original_args()
        loss = _loss_value(cb.net_outputs)
        self.losses.append(loss)
        step_in_epoch = (cb.cur_step_num - 1) % cb.batch_num + 1
        if step_in_epoch % self.log_interval == 0 or step_in_epoch == cb.batch_num:
            log(f"epoch: {cb.cur_epoch_num} step: {step_in_epoch}, loss is {loss:.6f}, "
                f"lr: {self._lr_at(cb.cur_step_num):.6g}")

    def on_train_epoch_end(self, run_context):
        cb = run_context.original_args()
        seconds = time.time() - self.epoch_start
        self.epoch_seconds.append(seconds)
        steps = max(len(self.losses), 1)
        left = (self.total_epochs - cb.cur_epoch_num) * float(np.median(self.epoch_seconds))
        log(f"Epoch time: {seconds * 1000:.3f}, per step time: {seconds * 1000 / steps:.3f}, "
            f"{self.images_per_step * steps / seconds:.1f} img/s, time left: {_hms(left)}")
        if self.metrics_path:
            result = getattr(cb, "eval_result", None) or {}
            self._append_row({
                "epoch": cb.cur_epoch_num, "global_step": self.start_step + cb.cur_step_num,
                "loss": f"{np.mean(self.losses) if self.losses else math.nan:.6f}",
                "lr": f"{self._lr_at(cb.cur_step_num):.6g}", "epoch_seconds": f"{seconds:.3f}",
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
