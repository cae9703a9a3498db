"""Optimizer factory with weight decay on convolution and dense weights only."""
import mindspore as ms
import numpy as np
from mindspore import nn, ops

from src.errors import UserError

OPTIMIZERS = ("momentum", "rmsprop")


def decay_groups(net):
    """Split `net.trainable_params()` into (params with weight decay, params without).

    Decay goes to the `weight` of every `nn.Conv2d` (subclasses included) and `nn.Dense`, found by
    the cell that owns it, never by name; BatchNorm gamma/beta, biases and anything else go to the
    second list. Each trainable parameter is in exactly one list, in `trainable_params()` order.
    """
    decay_ids = {id(cell.weight) for _, cell in net.cells_and_names() if isinstance(cell, (nn.Conv2d, nn.Dense))}
    decay, no_decay = [], []
    for param in net.trainable_params():
        (decay if id(param) in decay_ids else no_decay).append(param)
    return decay, no_decay


def create_optimizer(net, learning_rate, optimizer="momentum", momentum=0.9, weight_decay=4e-5,
                     loss_scale=1.0, rmsprop_decay=0.9, rmsprop_epsilon=1e-3):
    """Return `nn.Momentum` or `nn.RMSProp` over `net.trainable_params()`, with `decay_groups` weight decay.

    `learning_rate` is a float, or per-step values (numpy array or 1-D Tensor) indexed by the
    optimizer's `global_step`. `loss_scale` is the fixed loss scale the gradients arrive multiplied
    by (FixedLossScaleManager with drop_overflow_update=False); the optimizer divides it out.
    """
    if optimizer not in OPTIMIZERS:
        raise UserError(f"optimizer: got {optimizer!r}, expected one of {', '.join(OPTIMIZERS)}")
    if isinstance(learning_rate, (np.ndarray, np.generic)):
        learning_rate = ms.Tensor(np.asarray(learning_rate, dtype=np.float32))
    decay, no_decay = decay_groups(net)
    groups = [{"params": params, "weight_decay": wd}
              for params, wd in ((decay, float(weight_decay)), (no_decay, 0.0)) if params]
    groups.append({"order_params": net.trainable_params()})
    if optimizer == "momentum":
        return nn.Momentum(groups, learning_rate, momentum=float(momentum), loss_scale=float(loss_scale))
    return ExactRMSProp(groups, learning_rate, decay=float(rmsprop_decay), momentum=float(momentum),
                        epsilon=float(rmsprop_epsilon), loss_scale=float(loss_scale))


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
