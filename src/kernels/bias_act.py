"""Bias + activation in one pass over NCHW (inference with BatchNorm folded into the convolution before it), and
the activations' gradients shared by the fused kernels."""
import mindspore.ops as ops

from src.kernels.library import aot

ACTIVATION_SYMBOLS = {None: "Identity", "relu": "ReLU", "relu6": "ReLU6", "hswish": "HSwish"}


def activation_grad(z, dout, activation):
    """dout * activation'(z)."""
    if activation == "relu":
        return dout * (z > 0).astype(z.dtype)
    if activation == "relu6":
        return dout * ((z > 0) & (z < 6)).astype(z.dtype)
    if activation == "hswish":
        slope = ops.where(z >= 3, ops.ones_like(z), (2 * z + 3) / 6)  # d/dz z * relu6(z + 3) / 6
        return dout * ops.where(z > -3, slope, ops.zeros_like(z))
    return dout


def _bias_act_bprop(activation):
    def bprop(x, bias, out, dout):
        dz = activation_grad(ops.bias_add(x, bias), dout, activation)
        return dz, dz.sum(axis=(0, 2, 3))
    return bprop


def bias_act_op(activation):
    """Custom op y = activation(x + bias[c]) on NCHW x in one pass (`activation`: None, "relu", "relu6" or
    "hswish")."""
    return aot(f"Bias{ACTIVATION_SYMBOLS[activation]}", lambda x, b: x, _bias_act_bprop(activation))


def bias_residual_op():
    """Custom op y = (x + bias[c]) + residual on NCHW x in one pass."""

    def bprop(x, bias, residual, out, dout):
        return dout, dout.sum(axis=(0, 2, 3)), dout

    return aot("BiasResidual", lambda x, b, r: x, bprop)
