"""Train a MobileNet: python train.py --config_path CONFIG --dataset_path DATA [--key value ...]"""
import os
import signal

import src  # noqa: F401  (first: sets OpenMP's wait policy before MindSpore loads OpenMP, see src/__init__.py)
import mindspore.dataset as ds  # noqa: E402  pylint: disable=wrong-import-order

from src.callbacks import CheckpointSaver, EvalMonitor, StopOnSignal, TrainMonitor, trim_metrics
from src.checkpoint import best_top1, load_weights, prepare_output, restore_training, resume_path
from src.dataset import create_dataset, pipeline_errors_reported
from src.loss import CrossEntropySmooth
from src.lr_generator import get_lr
from src.model_utils.cli import log, run
from src.model_utils.config import get_config
from src.model_utils.device import init_distributed, setup_device
from src.models import create_model
from src.optimizer import create_optimizer
from src.training import build_model, precision_settings


def main():
    config = get_config(description=__doc__)
    setup_device(config)
    rank, group_size = init_distributed(config)
    writer = rank == 0
    ckpt_dir = prepare_output(config.save_checkpoint_path, writer)
    log(f"effective config ({config.source}):\n{config}")
    if writer:
        config.save(os.path.join(config.save_checkpoint_path, "config.yaml"))

    ds.config.set_fast_recovery(False)  # a resumed pipeline replays the same order AND augmentations
    train_ds = create_dataset(config, do_train=True, rank_id=rank, rank_size=group_size)
    steps_per_epoch = train_ds.get_dataset_size()
    eval_ds = create_dataset(config, do_train=False) if config.run_eval else None

    net = create_model(config.model, config.class_num, config.width_mult, config.dropout)
    if config.pre_trained:
        load_weights(net, config.pre_trained, "pre_trained checkpoint", allow_new_head=True)
    loss_fn = CrossEntropySmooth(config.class_num, config.label_smooth_factor)
    lr = get_lr(config.lr_init, config.lr_max, config.lr_end, config.warmup_epochs, config.epoch_size,
                steps_per_epoch, config.lr_decay_mode, lr_power=config.lr_power,
                step_epochs=config.lr_step_epochs, step_gamma=config.lr_step_gamma)
    amp_level, loss_scale_manager, optimizer_loss_scale = precision_settings(config)
    optimizer = create_optimizer(net, lr, config.optimizer, config.momentum, config.weight_decay,
                                 optimizer_loss_scale, config.rmsprop_decay, config.rmsprop_epsilon)

    global_step = 0
    checkpoint = resume_path(config, ckpt_dir) if config.resume else ""
    if checkpoint:
        global_step = restore_training(checkpoint, net, optimizer, len(lr))[1]
        log(f"resumed {checkpoint}: {global_step // steps_per_epoch} epochs and {global_step % steps_per_epoch} "
            f"steps done, global step {global_step}, lr {lr[global_step - 1]:.6g}")
        if global_step >= len(lr):
            log(f"training already finished ({config.epoch_size} of {config.epoch_size} epochs)")
            return 0
        train_ds.set_init_step(global_step)  # the same batches and augmentations as if never interrupted
    epochs_done = global_step // steps_per_epoch
    model = build_model(config, net, loss_fn, optimizer, amp_level, loss_scale_manager)

    metrics_path = os.path.join(config.save_checkpoint_path, "metrics.csv") if writer else ""
    if metrics_path:
        trim_metrics(metrics_path, epochs_done)
    saver = None
    if writer and config.save_checkpoint:
        saver = CheckpointSaver(ckpt_dir, config.model, config.save_checkpoint_epochs, config.keep_checkpoint_max,
                                config.epoch_size, global_step)
    stop = StopOnSignal(saver)
    # order matters: evaluation feeds the monitor's metrics row; the monitor's divergence check runs
    # before anything saves at the end of a step or epoch
    callbacks = [TrainMonitor(lr, config.batch_size * group_size, config.log_interval, config.epoch_size,
                              metrics_path, global_step, skip_overflow=config.loss_scale_type == "dynamic")]
    if eval_ds is not None:
        best_path = os.path.join(ckpt_dir, f"{config.model}_best.ckpt") if writer else ""
        callbacks.insert(0, EvalMonitor(model, eval_ds, net, config.eval_interval, best_path,
                                        best_top1(best_path) if writer and checkpoint else -1.0))
    callbacks += [cb for cb in (saver, stop) if cb is not None]
    log(f"training {config.model} x{config.width_mult:g} on {config.device_target}: {steps_per_epoch} steps of "
        f"{config.batch_size} images per epoch, epochs {epochs_done + 1}..{config.epoch_size}")
    with pipeline_errors_reported():
        model.train(config.epoch_size, train_ds, callbacks=callbacks,
                    dataset_sink_mode=config.device_target != "CPU", initial_epoch=epochs_done)
    if stop.signal_name:
        saved = f"saved {stop.saved}" if stop.saved else "no checkpoint written by this rank"
        log(f"stopped by {stop.signal_name}: {saved}; resume with the same command plus --resume auto")
        return 128 + getattr(signal, stop.signal_name)
    log(f"training finished; checkpoints in {ckpt_dir}" if writer else "training finished")
    return 0


if __name__ == "__main__":
    run(main)
