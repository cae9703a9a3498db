"""Learning-rate schedule: closed-form values, warmup, floors, resume offset and validation."""
import math

import numpy as np
import pytest

from src.errors import UserError
from src.lr_generator import get_lr

LR_INIT, LR_MAX, LR_END = 0.01, 0.4, 0.001
STEPS_PER_EPOCH, TOTAL_EPOCHS, WARMUP_EPOCHS = 10, 20, 2
TOTAL, WARMUP = 200, 20
DECAY_STEPS = TOTAL - WARMUP


def schedule(mode, **kwargs):
    return get_lr(LR_INIT, LR_MAX, LR_END, WARMUP_EPOCHS, TOTAL_EPOCHS, STEPS_PER_EPOCH, mode, **kwargs)


def decay_value(mode, t):
    span = LR_MAX - LR_END
    return {
        "cosine": LR_END + span * 0.5 * (1 + math.cos(math.pi * t)),
        "poly": LR_END + span * (1 - t) ** 2.0,
        "linear": LR_END + span * (1 - t),
    }[mode]


@pytest.mark.parametrize("mode", ["cosine", "poly", "linear", "steps"])
def test_warmup_is_linear_from_lr_init_to_lr_max(mode):
    lr = schedule(mode, step_epochs=(8, 15))
    assert lr.dtype == np.float32 and lr.shape == (TOTAL,)
    assert lr[0] == pytest.approx(LR_INIT)
    assert lr[10] == pytest.approx(LR_INIT + (LR_MAX - LR_INIT) * 10 / 20)
    assert lr[19] == pytest.approx(LR_INIT + (LR_MAX - LR_INIT) * 19 / 20)
    assert lr[WARMUP] == pytest.approx(LR_MAX)


@pytest.mark.parametrize("mode", ["cosine", "poly", "linear"])
def test_decay_matches_closed_form(mode):
    lr = schedule(mode)
    for step in (WARMUP, WARMUP + 45, WARMUP + 90, 150, TOTAL - 1):
        t = (step - WARMUP) / DECAY_STEPS
        assert lr[step] == pytest.approx(decay_value(mode, t), rel=1e-6), step
    assert lr[TOTAL - 1] > LR_END
    assert lr[WARMUP:].min() >= np.float32(LR_END)
    assert np.all(np.diff(lr[WARMUP:]) < 0)


def test_cosine_halfway_is_midpoint_and_linear_last_step():
    assert schedule("cosine")[WARMUP + DECAY_STEPS // 2] == pytest.approx((LR_MAX + LR_END) / 2)
    assert schedule("linear")[TOTAL - 1] == pytest.approx(LR_END + (LR_MAX - LR_END) / DECAY_STEPS)


def test_poly_power():
    lr = get_lr(0.0, 1.0, 0.0, 0, 1, 100, "poly", lr_power=0.5)
    assert lr[0] == pytest.approx(1.0)
    assert lr[75] == pytest.approx(0.5)


def test_steps_milestones_by_epoch_with_floor():
    lr = schedule("steps", step_epochs=(8, 15, 18), step_gamma=0.1)
    assert lr[WARMUP] == pytest.approx(LR_MAX)
    assert lr[79] == pytest.approx(LR_MAX)
    assert lr[80] == pytest.approx(LR_MAX * 0.1)
    assert lr[149] == pytest.approx(LR_MAX * 0.1)
    assert lr[150] == pytest.approx(LR_MAX * 0.01)
    assert lr[179] == pytest.approx(LR_MAX * 0.01)
    assert lr[180] == pytest.approx(LR_END)
    assert lr[TOTAL - 1] == pytest.approx(LR_END)


def test_steps_milestone_inside_warmup_applies_after_warmup():
    lr = schedule("steps", step_epochs=(1,))
    assert lr[10] == pytest.approx(LR_INIT + (LR_MAX - LR_INIT) * 10 / 20)
    assert lr[WARMUP] == pytest.approx(LR_MAX * 0.1)


@pytest.mark.parametrize("mode", ["cosine", "poly", "linear", "steps"])
@pytest.mark.parametrize("start_step", [1, 15, WARMUP, 137, TOTAL - 1])
def test_resume_continues_the_same_curve(mode, start_step):
    full = schedule(mode, step_epochs=(8, 15))
    tail = schedule(mode, step_epochs=(8, 15), start_step=start_step)
    assert tail.shape == (TOTAL - start_step,)
    np.testing.assert_array_equal(tail, full[start_step:])


def test_no_warmup_and_fractional_warmup():
    lr = get_lr(0.0, 0.1, 0.0, 0, 3, 4, "linear")
    assert lr.shape == (12,)
    assert lr[0] == pytest.approx(0.1)
    lr = get_lr(0.0, 0.1, 0.0, 0.75, 3, 4, "linear")
    assert lr[:4] == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])


def test_warmup_as_long_as_training():
    lr = get_lr(0.0, 0.1, 0.0, 2, 2, 5, "cosine")
    assert lr == pytest.approx([0.01 * i for i in range(10)])


def test_unknown_mode_names_key_and_choices():
    with pytest.raises(UserError, match=r"lr_decay_mode: got 'exp'.*cosine, poly, linear, steps"):
        schedule("exp")


@pytest.mark.parametrize("kwargs, key", [
    (dict(steps_per_epoch=0), "steps_per_epoch"),
    (dict(total_epochs=0), "total_epochs"),
    (dict(warmup_epochs=21), "warmup_epochs"),
    (dict(warmup_epochs=-1), "warmup_epochs"),
    (dict(start_step=-1), "start_step"),
    (dict(start_step=TOTAL), "start_step"),
    (dict(lr_max=-0.1), "lr_max"),
])
def test_invalid_values_name_the_key(kwargs, key):
    args = dict(lr_init=LR_INIT, lr_max=LR_MAX, lr_end=LR_END, warmup_epochs=WARMUP_EPOCHS,
                total_epochs=TOTAL_EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, lr_decay_mode="cosine")
    args.update(kwargs)
    with pytest.raises(UserError, match=f"^{key}: "):
        get_lr(**args)
