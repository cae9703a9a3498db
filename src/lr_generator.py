"""Per-step learning rates: linear warmup, then cosine, poly, linear or step decay."""
import math

import numpy as np

from src.errors import UserError

LR_DECAY_MODES = ("cosine", "poly", "linear", "steps")


def get_lr(lr_init, lr_max, lr_end, warmup_epochs, total_epochs, steps_per_epoch, lr_decay_mode,
           start_step=0, lr_power=2.0, step_epochs=(30, 60, 80), step_gamma=0.1):
    """Return the learning rate of every step from `start_step` to the end of training (float32).

    With total_steps = total_epochs * steps_per_epoch and W = round(warmup_epochs * steps_per_epoch)
    (Python `round`, half to even), step i (0-based, counted from the start of training) gets:

    - warmup, i < W:   lr_init + (lr_max - lr_init) * i / W
    - afterwards, with t = (i - W) / (total_steps - W) in [0, 1):
      - cosine: lr_end + (lr_max - lr_end) * 0.5 * (1 + cos(pi * t))
      - poly:   lr_end + (lr_max - lr_end) * (1 - t) ** lr_power
      - linear: lr_end + (lr_max - lr_end) * (1 - t)
      - steps:  max(lr_max * step_gamma ** k, lr_end), where k is the number of milestones in
        `step_epochs` that are <= the 0-based epoch i // steps_per_epoch (milestone 30: epochs
        0-29 at lr_max, epoch 30 onwards at lr_max * step_gamma; milestones count from the start
        of training, warmup included).

    The result is the tail of the full curve: get_lr(..., start_step=k) == get_lr(...)[k:], so a
    resumed run continues where it stopped.
    """
    if lr_decay_mode not in LR_DECAY_MODES:
        raise UserError(f"lr_decay_mode: got {lr_decay_mode!r}, expected one of {', '.join(LR_DECAY_MODES)}")
    if steps_per_epoch < 1:
        raise UserError(f"steps_per_epoch: got {steps_per_epoch}, expected at least 1")
    if total_epochs < 1:
        raise UserError(f"total_epochs: got {total_epochs}, expected at least 1")
    for key, value in (("lr_init", lr_init), ("lr_max", lr_max), ("lr_end", lr_end)):
        if value < 0:
            raise UserError(f"{key}: got {value}, expected a value >= 0")
    total_steps = int(total_epochs * steps_per_epoch)
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    if warmup_epochs < 0 or warmup_steps > total_steps:
        raise UserError(f"warmup_epochs: got {warmup_epochs}, expected between 0 and total_epochs ({total_epochs})")
    if not 0 <= start_step < total_steps:
        raise UserError(f"start_step: got {start_step}, expected 0 <= start_step < {total_steps} "
                        f"(total_epochs * steps_per_epoch)")

    steps = np.arange(start_step, total_steps, dtype=np.float64)
    in_warmup = steps < warmup_steps
    warmup_lr = lr_init + (lr_max - lr_init) * steps / max(warmup_steps, 1)
    t = (steps - warmup_steps) / max(total_steps - warmup_steps, 1)
    if lr_decay_mode == "cosine":
        decay_lr = lr_end + (lr_max - lr_end) * 0.5 * (1.0 + np.cos(math.pi * t))
    elif lr_decay_mode == "poly":
        decay_lr = lr_end + (lr_max - lr_end) * (1.0 - t) ** lr_power
    elif lr_decay_mode == "linear":
        decay_lr = lr_end + (lr_max - lr_end) * (1.0 - t)
    else:
        epochs = steps // steps_per_epoch
        milestones_passed = sum((epochs >= milestone).astype(np.int64) for milestone in step_epochs)
        decay_lr = np.maximum(lr_max * step_gamma ** milestones_passed, lr_end)
    return np.where(in_warmup, warmup_lr, decay_lr).astype(np.float32)
