"""Optimizer factory with weight decay on convolution and dense weights only, and an exponential moving average of
the weights (EMA) kept by the optimizer itself."""
import contextlib

import mindspore as ms
import numpy as np
from mindspore import ParameterTuple, Tensor, nn, ops

from src.errors import UserError

OPTIMIZERS = ("momentum", "rmsprop")


def decay_groups(net, depthwise: bool = True):
    """Split `net.trainable_params()` into (params with weight decay, params without).

    Decay goes to the `weight` of every `nn.Conv2d` (subclasses included) and `nn.Dense`, found by
    the cell that owns it, never by name (depthwise convolutions' only if `depthwise`); BatchNorm gamma/beta, biases
    and anything else go to the second list. Each trainable parameter is in exactly one list, in `trainable_params()`
    order.
    """
    decay_ids = {id(cell.weight) for _, cell in net.cells_and_names() if isinstance(cell, (nn.Conv2d, nn.Dense))
                 and (depthwise or not _is_depthwise(cell))}
    decay, no_decay = [], []
    for param in net.trainable_params():
        (decay if id(param) in decay_ids else no_decay).append(param)
    return decay, no_decay


def _is_depthwise(cell) -> bool:
    return isinstance(cell, nn.Conv2d) and cell.group > 1 and cell.group == cell.in_channels == cell.out_channels


def create_optimizer(net, learning_rate, optimizer="momentum", momentum=0.9, weight_decay=4e-5,
                     loss_scale=1.0, rmsprop_decay=0.9, rmsprop_epsilon=1e-3, ema_decay=0.0, ema_warmup=False,
                     wd_depthwise=True):
    """Return `nn.Momentum` or `nn.RMSProp` over `net.trainable_params()`, with `decay_groups` weight decay.

    `learning_rate` is a float, or per-step values (numpy array or 1-D Tensor) indexed by the
    optimizer's `global_step`. `loss_scale` is the fixed loss scale the gradients arrive multiplied
    by (FixedLossScaleManager with drop_overflow_update=False); the optimizer divides it out.
    `wd_depthwise` False leaves depthwise convolution weights without decay.
    With `ema_decay` > 0 the optimizer also keeps an exponential moving average of the weights (`EMAMomentum`,
    `EMARMSProp`).
    """
    if optimizer not in OPTIMIZERS:
        raise UserError(f"optimizer: got {optimizer!r}, expected one of {', '.join(OPTIMIZERS)}")
    if isinstance(learning_rate, (np.ndarray, np.generic)):
        learning_rate = ms.Tensor(np.asarray(learning_rate, dtype=np.float32))
    decay, no_decay = decay_groups(net, wd_depthwise)
    groups = [{"params": params, "weight_decay": wd}
              for params, wd in ((decay, float(weight_decay)), (no_decay, 0.0)) if params]
    groups.append({"order_params": net.trainable_params()})
    if optimizer == "momentum":
        if ema_decay:
            return EMAMomentum(net, ema_decay, ema_warmup, groups, learning_rate, momentum=float(momentum),
                               loss_scale=float(loss_scale))
        return nn.Momentum(groups, learning_rate, momentum=float(momentum), loss_scale=float(loss_scale))
    kwargs = {"decay": float(rmsprop_decay), "momentum": float(momentum), "epsilon": float(rmsprop_epsilon),
              "loss_scale": float(loss_scale)}
    if ema_decay:
        return EMARMSProp(net, ema_decay, ema_warmup, groups, learning_rate, **kwargs)
    return ExactRMSProp(groups, learning_rate, **kwargs)


def _apply_rmsprop(weight, mean_square, moment, learning_rate, grad, decay, momentum, epsilon):
    """ApplyRMSProp's update from elementwise ops: ms = decay * ms + (1 - decay) * g^2,
    mom = momentum * mom + lr * g / sqrt(ms + eps), w = w - mom."""
    new_mean_square = decay * mean_square + (1.0 - decay) * grad * grad
    new_moment = momentum * moment + learning_rate * grad / ops.sqrt(new_mean_square + epsilon)
    return ops.depend(ops.assign_sub(weight, new_moment),
                      (ops.assign(mean_square, new_mean_square), ops.assign(moment, new_moment)))


class ExactRMSProp(nn.RMSProp):
    """`nn.RMSProp` (same parameters, state names and checkpoints) with the update written from elementwise
    ops: MindSpore's CPU ApplyRMSProp kernel is approximate (about 5e-4 relative error) and its results
    change from run to run, which breaks reproducible training and exact resume."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.opt = _apply_rmsprop


EMA_PREFIX = "ema"


def averaged_parameters(net) -> list:
    """What the EMA averages: the trainable parameters and the BatchNorm moving statistics (as timm's EMA averages
    weights and buffers), in `net.get_parameters()` order."""
    return [param for param in net.get_parameters()
            if param.requires_grad or param.name.endswith(("moving_mean", "moving_variance"))]


class EMA(nn.Cell):
    """ema = d * ema + (1 - d) * weight for every `averaged_parameters(net)`, called once per optimizer step, after
    the update; d = `decay`, or with `warmup` min(decay, (1 + n) / (10 + n)) at update n (TensorFlow's
    `ExponentialMovingAverage(num_updates=...)`), so early averages are not dominated by the initial weights.  The
    averages are Parameters `ema.<name>`, saved in every training checkpoint with the optimizer state, so a resumed
    run continues them exactly.  They start equal to the weights (`restart` sets them so again, e.g. after loading a
    checkpoint that has none)."""

    def __init__(self, net, decay: float, warmup: bool):
        super().__init__()
        self.targets = ParameterTuple(averaged_parameters(net))
        self.averages = self.targets.clone(prefix=EMA_PREFIX, init="same")
        for average in self.averages:
            average.requires_grad = False
        self.decay, self.warmup = float(decay), warmup
        self.hyper_map = ops.HyperMap()

    def restart(self) -> None:
        """Averages := the current weights."""
        for average, param in zip(self.averages, self.targets):
            average.set_data(Tensor(param.asnumpy()))

    def construct(self, updates):
        decay = Tensor(self.decay, ms.float32)
        if self.warmup:
            count = updates.astype(ms.float32)
            decay = ops.minimum(decay, (1.0 + count) / (10.0 + count))
        return self.hyper_map(ops.partial(_ema_step, decay), self.averages, self.targets)


def _ema_step(decay, average, weight):
    return ops.assign(average, average * decay + weight * (1.0 - decay))


def _with_ema(optimizer_class):
    """`optimizer_class` that updates an `EMA` of `net`'s weights after each of its steps (`ema.<name>` in
    checkpoints): constructed as optimizer_class(*args, **kwargs) plus (net, ema_decay, ema_warmup) first."""

    class WithEMA(optimizer_class):
        def __init__(self, net, ema_decay, ema_warmup, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.ema = EMA(net, ema_decay, ema_warmup)

        def construct(self, gradients):
            updated = super().construct(gradients)
            return ops.depend(updated, self.ema(ops.depend(self.global_step, updated)))

    WithEMA.__name__ = WithEMA.__qualname__ = f"EMA{optimizer_class.__name__.replace('Exact', '')}"
    return WithEMA


EMAMomentum = _with_ema(nn.Momentum)
EMARMSProp = _with_ema(ExactRMSProp)


@contextlib.contextmanager
def ema_applied(optimizer):
    """Inside the block the network's weights (and BatchNorm statistics) are the optimizer's EMA of them (a no-op for
    an optimizer without one); afterwards the trained ones are back."""
    ema = getattr(optimizer, "ema", None)
    if ema is None:
        yield False
        return
    trained = [param.asnumpy() for param in ema.targets]
    for param, average in zip(ema.targets, ema.averages):
        param.set_data(Tensor(average.asnumpy()))
    try:
        yield True
    finally:
        for param, value in zip(ema.targets, trained):
            param.set_data(Tensor(value))
