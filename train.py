"""Train a MobileNet: python train.py --config_path CONFIG --dataset_path DATA [--key value ...]"""
import os
import signal

import src  # noqa: F401  (first: sets OpenMP's wait policy before MindSpore loads OpenMP, see src/__init__.py)
import mindspore.dataset as ds  # noqa: E402  pylint: disable=wrong-import-order

from src.callbacks import CheckpointSaver, EvalMonitor, Progress, StopOnSignal, TrainMonitor, trim_metrics
from src.checkpoint import best_top1, build_network, prepare_output, restore_training, resume_path
from src.dataset import create_dataset, dataset_class_names, mixing_batches, pipeline_errors_reported
from src.distributed import barrier, check_same_start
from src.loss import CrossEntropySmooth, LossRecorder
from src.lr_generator import get_lr
from src.model_card import card_entries, make_card
from src.model_utils.cli import log, run
from src.model_utils.config import get_config
from src.model_utils.device import init_distributed, setup_device
from src.optimizer import create_optimizer
from src.training import build_model, data_sink, optimizer_steps, precision_settings, train_arguments


def main():
    config = get_config(description=__doc__)
    setup_device(config)
    rank, group_size = init_distributed(config)
    writer = rank == 0
    log(f"global batch {config.batch_size * group_size} ({config.batch_size} per rank x {group_size} ranks), "
        f"lr_max {config.lr_max:g}")
    ckpt_dir = prepare_output(config.save_checkpoint_path, writer)

    ds.config.set_fast_recovery(False)  # a resumed pipeline replays the same order AND augmentations
    train_ds = create_dataset(config, do_train=True, rank_id=rank, rank_size=group_size)
    steps_per_epoch = train_ds.get_dataset_size()
    eval_ds = create_dataset(config, do_train=False, rank_id=rank, rank_size=group_size) if config.run_eval else None

    net, _ = build_network(config, config.pre_trained, "pre_trained checkpoint", fine_tune=True)
    card = card_entries(make_card(config, dataset_class_names(config)))  # saved in every checkpoint
    loss_fn = LossRecorder(CrossEntropySmooth(config.class_num, config.label_smooth_factor,
                                              soft_labels=bool(mixing_batches(config))))
    lr = get_lr(config.lr_init, config.lr_max, config.lr_end, config.warmup_epochs, config.epoch_size,
                steps_per_epoch, config.lr_decay_mode, lr_power=config.lr_power,
                step_epochs=config.lr_step_epochs, step_gamma=config.lr_step_gamma)
    precision = precision_settings(config)
    if writer:  # after every decision that changes it (the device, the pre-trained model's card, the precision)
        log(f"effective config ({config.source}):\n{config}")
        config.save(os.path.join(config.save_checkpoint_path, "config.yaml"))
    optimizer = create_optimizer(net, lr, config.optimizer, config.momentum, config.weight_decay,
                                 precision.optimizer_loss_scale, config.rmsprop_decay, config.rmsprop_epsilon,
                                 config.ema_decay if config.ema else 0.0, config.ema_warmup, config.wd_depthwise)
    if config.ema:
        log(f"EMA of the weights (decay {config.ema_decay:g}{', warm-up' if config.ema_warmup else ''}): evaluation "
            f"and the best checkpoint use it; eval.py, export.py and predict.py take it from the checkpoints")

    model = build_model(config, net, loss_fn, optimizer, precision)

    global_step = 0
    checkpoint = resume_path(config, ckpt_dir) if config.resume else ""
    if checkpoint:
        global_step = restore_training(checkpoint, net, optimizer, len(lr), model.train_network)[1]
        applied = optimizer_steps(optimizer)
        log(f"resumed {checkpoint}: {global_step // steps_per_epoch} epochs and {global_step % steps_per_epoch} "
            f"steps done, global step {global_step}, lr {lr[max(applied, 1) - 1]:.6g}"
            + (f" ({global_step - applied} steps skipped by the loss scale)" if applied != global_step else ""))
    check_same_start(checkpoint, global_step)
    if checkpoint:
        if global_step >= len(lr):
            log(f"training already finished ({config.epoch_size} of {config.epoch_size} epochs)")
            return 0
    sink = data_sink(config, steps_per_epoch, global_step)
    arguments = train_arguments(config, sink, steps_per_epoch, global_step, checkpoint)
    if global_step:
        train_ds.set_init_step(global_step)  # the same batches and augmentations as if never interrupted

    metrics_path = os.path.join(config.save_checkpoint_path, "metrics.csv") if writer else ""
    if metrics_path:
        trim_metrics(metrics_path, global_step // steps_per_epoch)
    progress = Progress(steps_per_epoch, global_step)
    saver = None
    if config.save_checkpoint:
        saver = CheckpointSaver(progress, ckpt_dir, config.model, config.save_checkpoint_epochs,
                                config.keep_checkpoint_max, config.epoch_size, write=writer, append=card)
    stop = StopOnSignal(progress, saver)
    skipped_steps = precision.loss_scale_manager.skipped_steps if precision.skips_steps else None
    # order matters: evaluation feeds the monitor's metrics row; the monitor's divergence check runs
    # before anything saves at the end of a step or epoch
    callbacks = [TrainMonitor(progress, loss_fn, lr, config.batch_size * group_size, config.log_interval,
                              config.epoch_size, metrics_path, skipped_steps, optimizer,
                              config.stop_seconds if sink.enabled else 0.0)]
    evaluation = None
    if eval_ds is not None:
        best_path = os.path.join(ckpt_dir, f"{config.model}_best.ckpt") if writer else ""
        evaluation = EvalMonitor(progress, model, eval_ds, net, config.eval_interval, best_path,
                                 best_top1(best_path) if writer and checkpoint else -1.0, append=card,
                                 optimizer=optimizer)
        callbacks.insert(0, evaluation)
    callbacks += [cb for cb in (saver, stop) if cb is not None]
    sinks = (f"data sink of {sink.steps} steps (a stop waits for a sink's end: ~{sink.steps * config.step_seconds:.3g} "
             f"s at step_seconds {config.step_seconds:g})" if sink.enabled else "no data sink")
    log(f"training {config.model} x{config.width_mult:g} on {config.device_target}: {steps_per_epoch} steps of "
        f"{config.batch_size} images per epoch, epochs {global_step // steps_per_epoch + 1}..{config.epoch_size}, "
        f"amp {precision.amp_level}, {sinks}")
    with pipeline_errors_reported():
        model.train(train_dataset=train_ds, callbacks=callbacks, **arguments)
    if stop.signal_name:
        saved = f"saved {stop.saved}" if stop.saved else "no checkpoint written by this rank"
        sender = "" if stop.received else " (received by another rank)"
        after = (f" (at most {stop.latency[0]} steps and {stop.latency[1]:.1f} s after the signal)" if stop.latency
                 else "")
        log(f"stopped by {stop.signal_name}{sender} at epoch {stop.stopped_at[0]} step {stop.stopped_at[1]}{after}: "
            f"{saved}; resume with the same command plus --resume auto")
        barrier()  # every rank has said so before any exits (msrun kills the others when the first one exits)
        return 128 + getattr(signal, stop.signal_name)
    if not writer:
        log("training finished")
        return 0
    ranks = f" x {group_size} ranks" if group_size > 1 else ""
    best = (f"best top-1 {evaluation.best_top1:.4f} ({os.path.basename(evaluation.best_path)})"
            if evaluation is not None and evaluation.best_top1 >= 0 else "no evaluation (run_eval False)")
    log(f"training finished: {config.model} x{config.width_mult:g}, {config.epoch_size} epochs on "
        f"{config.device_target}{ranks}, {best}; outputs in {config.save_checkpoint_path} (ckpt_0/, metrics.csv, "
        f"metrics.png, config.yaml)")
    return 0


if __name__ == "__main__":
    run(main)
