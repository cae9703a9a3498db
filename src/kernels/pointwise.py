"""Pointwise (1x1) convolution + bias + activation (or + shortcut) in one C++ op: the inference form of a 1x1
conv -> BatchNorm -> activation with the BatchNorm folded."""
import mindspore.ops as ops

from src.kernels.bias_act import ACTIVATION_SYMBOLS, activation_grad
from src.kernels.library import aot, cpu_library


def _grads(x, w, dz):
    """Input, weight and bias gradients of z = conv1x1(x, w) + bias given dz."""
    o, k = w.shape[0], w.shape[1]
    dx = ops.conv2d(dz, w.reshape(o, k).transpose(1, 0).reshape(k, o, 1, 1))
    dw = ops.matmul(dz.transpose(1, 0, 2, 3).reshape(o, -1), x.transpose(1, 0, 2, 3).reshape(k, -1).T)
    return dx, dw.reshape(w.shape), dz.sum(axis=(0, 2, 3))


def pointwise_bias_act_op(activation):
    """Custom op y = activation(conv1x1(x, w) + bias[o]), with its gradient as bprop; None where the kernel library
    is unavailable or the target is not CPU."""
    library = cpu_library()
    if library is None:
        return None

    def bprop(x, w, bias, out, dout):
        return _grads(x, w, activation_grad(ops.bias_add(ops.conv2d(x, w), bias), dout, activation))

    def out_shape(x, w, bias):
        return [x[0], w[0], x[2], x[3]]

    return aot(library, f"Pointwise{ACTIVATION_SYMBOLS[activation]}", out_shape, bprop)


def pointwise_residual_op():
    """Custom op y = (conv1x1(x, w) + bias[o]) + residual, with its gradient as bprop; None where the kernel
    library is unavailable or the target is not CPU."""
    library = cpu_library()
    if library is None:
        return None

    def bprop(x, w, bias, residual, out, dout):
        return (*_grads(x, w, dout), dout)

    return aot(library, "PointwiseResidual", lambda x, w, b, r: r, bprop)
