"""Training callbacks: checkpoints, evaluation with the best checkpoint kept, logs and the metrics file."""
import csv
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
from mindspore import Tensor
from mindspore.train.callback import Callback

from src.checkpoint import save_checkpoint, training_checkpoints
from src.distributed import all_gather, averaged_statistics, barrier
from src.errors import UserError
from src.model_utils.cli import log, warn
from src.optimizer import ema_applied
from src.plots import plot_metrics
from src.training import evaluate, largest_divisor, optimizer_steps

PLOT_SECONDS = 30.0
METRIC_FIELDS = ("epoch", "global_step", "loss", "lr", "epoch_seconds", "images_per_second",
                 "top_1_accuracy", "top_5_accuracy", "eval_loss")


@dataclass(frozen=True)
class Progress:
    """Where training is, from MindSpore's `cur_step_num` (counted from 0 in each run, advanced once per step, or by
    the sink size once per sink with data sink: `Model._train_dataset_sink_process`).  `start_step` is the global
    step the run (re)started at.  With data sink `cur_epoch_num` counts sinks, so epochs come from steps here."""
    steps_per_epoch: int
    start_step: int = 0

    def global_step(self, cb) -> int:
        """Global step (from 1) of the step that just ended."""
        return self.start_step + cb.cur_step_num

    def epoch_and_step(self, global_step: int) -> tuple:
        """(epoch, step within it), both from 1, of `global_step`."""
        return (global_step - 1) // self.steps_per_epoch + 1, (global_step - 1) % self.steps_per_epoch + 1

    def finished_epoch(self, cb) -> int:
        """The epoch that just ended, or 0 when the call is not at the end of an epoch (e.g. a sink inside one)."""
        global_step = self.global_step(cb)
        return global_step // self.steps_per_epoch if global_step % self.steps_per_epoch == 0 else 0


class CheckpointSaver(Callback):
    """Every `every_epochs` epochs (and after the last) save the train network (weights, BN statistics,
    optimizer moments, global_step, LR) as `<directory>/<prefix>-<epoch>_<step>.ckpt`; keep the newest `keep`.
    Every rank runs it (the BatchNorm statistics saved are the ranks' mean, see `averaged_statistics`, with each
    rank's own kept for an exact resume); only the one with `write` writes.  `append`: further entries saved in
    every checkpoint (the model card)."""

    def __init__(self, progress: Progress, directory: str, prefix: str, every_epochs: int, keep: int,
                 total_epochs: int, write: bool = True, append: dict = None):
        super().__init__()
        self.progress, self.directory, self.prefix, self.write = progress, directory, prefix, write
        self.append = append or {}
        self.every_epochs, self.keep, self.total_epochs = every_epochs, keep, total_epochs

    def save(self, cb) -> str:
        """Save now (at the end of the current step or sink); returns the file written ("" where this rank does not
        write).  Weights that are no longer finite are never saved: the run stops with a `UserError` and the
        checkpoints before stay."""
        global_step = self.progress.global_step(cb)
        epoch, step = self.progress.epoch_and_step(global_step)
        for param in cb.train_network.trainable_params():
            if not np.isfinite(param.asnumpy()).all():
                raise UserError(f"parameter {param.name} is not finite at epoch {epoch} step {step} (global step "
                                f"{global_step}): training diverged and was stopped without saving; checkpoints "
                                f"already saved are kept; lower lr_max")
        path = os.path.join(self.directory, f"{self.prefix}-{epoch}_{step}.ckpt")
        with averaged_statistics(cb.train_network) as per_rank:
            if not self.write:
                return ""
            extra = {name: Tensor(value) for name, value in per_rank.items()}
            save_checkpoint(cb.train_network, path,
                            {"epoch_num": epoch, "step_num": global_step, **extra, **self.append})
        for old in training_checkpoints(self.directory, self.prefix)[self.keep:]:
            os.remove(old)
        return path

    def on_train_epoch_end(self, run_context):
        cb = run_context.original_args()
        epoch = self.progress.finished_epoch(cb)
        if epoch and not run_context.get_stop_requested() and (
                epoch % self.every_epochs == 0 or epoch == self.total_epochs):
            self.save(cb)


class StopOnSignal(Callback):
    """SIGTERM and SIGINT (Ctrl-C) only set a flag; at the next step end (with data sink: the sink's end) the run
    saves a checkpoint through `saver` (None when none is saved) and stops.  With several ranks they agree on that
    step first (the flags are gathered every step), so a signal to any one rank stops all of them at the same
    step, and none exits before the checkpoint is complete (msrun kills every rank when the first one exits).
    `signal_name`, `received` (the signal this rank got, 0 if another rank got it), `stopped_at` (epoch, step),
    `latency` and `saved` tell what happened.  `latency`: (steps, seconds) from the end of the last step before
    the signal to the stop, at most the time the stop took (Python runs a handler between steps, and inside a
    running graph MindSpore turns SIGINT into SIGTERM first); None on the ranks that did not get the signal."""

    def __init__(self, progress: Progress, saver=None):
        super().__init__()
        self.progress, self.saver, self.received, self.signal_name, self.saved = progress, saver, 0, "", ""
        self.stopped_at, self.latency, self.received_after = (0, 0), None, None
        self.last_step, self.last_step_time = progress.start_step, time.time()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._request)

    def _request(self, signum, _frame):
        self.received = signum
        self.received_after = self.received_after or (self.last_step, self.last_step_time)

    def on_train_begin(self, run_context):
        self.last_step_time = time.time()

    def on_train_step_end(self, run_context):
        if self.signal_name:  # stopped already; MindSpore's PyNative sink runs on to the sink's end (model.py l.1183)
            return
        signum = int(all_gather(np.array([self.received], np.int32)).max())
        self.last_step, self.last_step_time = self.progress.global_step(run_context.original_args()), time.time()
        if signum:
            self.signal_name = signal.Signals(signum).name
            self.stopped_at = self.progress.epoch_and_step(self.last_step)
            if self.received_after is not None:
                self.latency = (self.last_step - self.received_after[0], self.last_step_time - self.received_after[1])
            if self.saver is not None:
                self.saved = self.saver.save(run_context.original_args())
            barrier()
            run_context.request_stop()


class EvalMonitor(Callback):
    """Every `interval` epochs evaluate on `eval_dataset`, log top-1/top-5 and keep the best weights
    as `best_path` (when given); the result is left in `cb_params.eval_result` for `TrainMonitor`.  With several
    ranks each evaluates its shard (`evaluate` adds up the ranks' sums) with the ranks' mean BatchNorm statistics,
    which the best checkpoint holds too, with the entries of `append` (the model card).  When `optimizer` keeps an
    EMA of the weights, evaluation and the best checkpoint use it."""

    def __init__(self, progress: Progress, model, eval_dataset, network, interval: int, best_path: str = "",
                 best_top1: float = -1.0, append: dict = None, optimizer=None):
        super().__init__()
        self.optimizer = optimizer
        self.progress, self.model, self.eval_dataset, self.network = progress, model, eval_dataset, network
        self.interval, self.best_path, self.best_top1, self.append = interval, best_path, best_top1, append or {}

    def on_train_epoch_end(self, run_context):
        cb = run_context.original_args()
        cb.eval_result = None
        epoch = self.progress.finished_epoch(cb)
        if not epoch or epoch % self.interval or run_context.get_stop_requested():
            return
        start = time.time()
        with ema_applied(self.optimizer), averaged_statistics(self.network):
            result, _ = evaluate(self.model, self.eval_dataset)
            cb.eval_result = result
            top1 = result["top_1_accuracy"]
            line = (f"epoch: {epoch} eval: top_1_accuracy {top1:.4f}, top_5_accuracy "
                    f"{result['top_5_accuracy']:.4f}, loss {result['loss']:.4f} ({time.time() - start:.1f} s)")
            if top1 > self.best_top1:
                self.best_top1 = top1
                if self.best_path:
                    save_checkpoint(self.network, self.best_path,
                                    {"epoch_num": epoch, "top_1_accuracy": top1, **self.append})
                    line += f"; best so far, saved {self.best_path}"
        log(line)


class TrainMonitor(Callback):
    """Logs in the model zoo's format (`epoch: 1 step: 10, loss is 2.30`, `Epoch time: ..., per step time: ...`)
    plus learning rate, images/s and time left; appends a row per epoch to `metrics_path` and redraws `metrics.png`
    beside it (at most every `PLOT_SECONDS`, and after the last epoch).  `lr` holds the per-step rates of the whole
    run.

    MindSpore calls `on_train_step_end` once per step, or once per sink of several steps with data sink; every
    figure here is computed from the steps each call covers.  Losses come from `recorder` (a `LossRecorder`: the
    mean of every step, not the sink's last), skipped steps from `skipped_steps` (the loss-scale manager's count, or
    None when it cannot skip).  A loss that is not finite stops the run with a `UserError` naming epoch and steps,
    before any checkpoint of that epoch is written; where steps can be skipped they are counted instead.  An
    epoch's time ends at its last step, so evaluation is not counted.  The learning rate logged is the one
    `optimizer` last applied (its own step count: a skipped step applies none).  With `stop_seconds` (data sink),
    a call that covered more time than that (after the first, which compiles) is a stop waiting longer than wanted:
    a warning says which `step_seconds` sizes the sinks for it."""

    def __init__(self, progress: Progress, recorder, lr: np.ndarray, images_per_step: int, log_interval: int,
                 total_epochs: int, metrics_path: str = "", skipped_steps=None, optimizer=None,
                 stop_seconds: float = 0.0):
        super().__init__()
        self.progress, self.recorder, self.skipped_steps = progress, recorder, skipped_steps
        self.lr, self.images_per_step, self.log_interval = lr, images_per_step, log_interval
        self.total_epochs, self.metrics_path = total_epochs, metrics_path
        self.optimizer, self.stop_seconds, self.calls = optimizer, stop_seconds, 0
        self.drawn_at = -math.inf
        self.last_step, self.skipped_total = progress.start_step, skipped_steps() if skipped_steps else 0
        self.epoch_seconds, self.epoch_start, self.last_step_time, self.sink_start = [], None, 0.0, 0.0
        self.epoch = {"loss_sum": 0.0, "finite": 0, "steps": 0, "skipped": 0}

    def on_train_epoch_begin(self, run_context):
        # called once per epoch, or once per sink with data sink: an epoch starts at its first step
        self.sink_start = time.time()
        if self.epoch_start is None:
            self.epoch_start = self.sink_start
            self.epoch = dict.fromkeys(self.epoch, 0)

    def _lr_at(self, global_step: int) -> float:
        """Learning rate last applied, at global step `global_step` (counted from 1)."""
        applied = optimizer_steps(self.optimizer) if self.optimizer is not None else global_step
        return float(self.lr[min(max(applied, 1), len(self.lr)) - 1])

    def _check_stop_latency(self, steps: int, seconds: float) -> None:
        self.calls += 1
        if not self.stop_seconds or self.calls == 1 or seconds <= self.stop_seconds:
            return
        per_step = seconds / steps
        fits = largest_divisor(self.progress.steps_per_epoch, int(self.stop_seconds / per_step))
        warn(f"a data sink of {steps} steps took {seconds:.1f} s ({per_step:.3g} s per step), more than stop_seconds "
             f"{self.stop_seconds:g}: a stop (SIGTERM, Ctrl-C) waits for the sink's end; next time set --step_seconds "
             f"{per_step:.3g} (sinks of {fits} steps)")
        self.stop_seconds = 0.0  # once

    def on_train_step_end(self, run_context):
        cb = run_context.original_args()
        now = time.time()
        global_step = self.progress.global_step(cb)
        steps, self.last_step = global_step - self.last_step, global_step
        self._check_stop_latency(steps, now - max(self.sink_start, self.last_step_time))
        self.last_step_time = now
        loss_sum, finite = self.recorder.take()
        skipped = 0
        if self.skipped_steps is not None:
            total = self.skipped_steps()
            skipped, self.skipped_total = total - self.skipped_total, total
        epoch, step = self.progress.epoch_and_step(global_step)
        label, numbers = ("step", f"{step}") if steps == 1 else ("steps", f"{step - steps + 1}-{step}")
        if finite < steps and self.skipped_steps is None:
            raise UserError(f"loss is not finite at epoch {epoch} {label} {numbers} (global step {global_step}): "
                            f"training diverged and was stopped; checkpoints already saved are kept; lower lr_max, or "
                            f"use --loss_scale_type dynamic")
        for key, value in (("loss_sum", loss_sum), ("finite", finite), ("steps", steps), ("skipped", skipped)):
            self.epoch[key] += value
        if skipped:
            log(f"epoch: {epoch} {label}: {numbers}, gradient overflow: {skipped} step(s) skipped, loss scale lowered")
        if step // self.log_interval != (step - steps) // self.log_interval or step == self.progress.steps_per_epoch:
            log(f"epoch: {epoch} step: {step}, loss is {loss_sum / finite if finite else math.nan:.6f}, "
                f"lr: {self._lr_at(global_step):.6g}")

    def on_train_epoch_end(self, run_context):
        cb = run_context.original_args()
        epoch = self.progress.finished_epoch(cb)
        if not epoch or run_context.get_stop_requested():
            return
        seconds, steps = self.last_step_time - self.epoch_start, max(self.epoch["steps"], 1)
        self.epoch_start = None
        self.epoch_seconds.append(seconds)
        images_per_second = self.images_per_step * steps / seconds
        left = (self.total_epochs - epoch) * float(np.median(self.epoch_seconds))
        skipped = f", skipped steps: {self.epoch['skipped']}" if self.epoch["skipped"] else ""
        log(f"Epoch time: {seconds * 1000:.3f}, per step time: {seconds * 1000 / steps:.3f}, "
            f"{images_per_second:.1f} img/s, time left: {_hms(left)}{skipped}")
        if self.metrics_path:
            result = cb.get("eval_result") or {}
            global_step = self.progress.global_step(cb)
            finite = self.epoch["finite"]
            self._append_row({
                "epoch": epoch, "global_step": global_step,
                "loss": f"{self.epoch['loss_sum'] / finite if finite else math.nan:.6f}",
                "lr": f"{self._lr_at(global_step):.6g}", "epoch_seconds": f"{seconds:.3f}",
                "images_per_second": f"{images_per_second:.1f}",
                "top_1_accuracy": _fmt(result.get("top_1_accuracy")),
                "top_5_accuracy": _fmt(result.get("top_5_accuracy")),
                "eval_loss": _fmt(result.get("loss")),
            })
            # drawing takes ~0.4 s: on short epochs (the demo's are 3 s) at most every PLOT_SECONDS, and at the end
            if time.time() - self.drawn_at >= PLOT_SECONDS or epoch == self.total_epochs:
                run_dir = os.path.dirname(self.metrics_path)
                plot_metrics([run_dir], os.path.join(run_dir, "metrics.png"))
                self.drawn_at = time.time()

    def _append_row(self, row: dict) -> None:
        new = not os.path.exists(self.metrics_path)
        with open(self.metrics_path, "a", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=METRIC_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)


class TerminalProgress(Callback):
    """On a terminal, one status line rewritten in place: batches done of `total_batches`, images done, images/s and
    time left (evaluation steps through the callback, prediction through `advance`).  Nothing is written when
    `stream` (stderr) is a file or a pipe, so logs stay one line per result."""

    def __init__(self, total_batches: int, stream=None):
        super().__init__()
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.total, self.batches, self.images, self.start = total_batches, 0, 0, time.time()

    def on_eval_step_end(self, run_context):
        labels = run_context.original_args().net_outputs[-1]  # the eval network's (loss, logits, labels)
        self.advance(labels.shape[0])

    def advance(self, images: int) -> None:
        """One more batch of `images` done."""
        self.batches, self.images = self.batches + 1, self.images + images
        if not self.enabled:
            return
        elapsed = time.time() - self.start
        rate = self.images / elapsed if elapsed > 0 else 0.0
        left = elapsed * (self.total - self.batches) / self.batches
        end = "\n" if self.batches >= self.total else ""
        self.stream.write(f"\rbatch {self.batches}/{self.total}, {self.images} images, {rate:.1f} img/s, "
                          f"{_hms(left)} left{end}")
        self.stream.flush()


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
