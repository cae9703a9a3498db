"""Pointwise (1x1) convolution + bias + activation (or + shortcut) in one C++ op: the inference form of a 1x1
conv -> BatchNorm -> activation with the BatchNorm folded."""
import mindspore.ops as ops

from src.kernels.bias_act import ACTIVATION_SYMBOLS, activation_grad
from src.kernels.depthwise import (conv_output_shape, depthwise_bias_act_op, depthwise_grad_ops, depthwise_op,
                                   padding_symbol)
from src.kernels.library import aot


def _grads(x, w, dz):
    """Input, weight and bias gradients of z = conv1x1(x, w) + bias given dz."""
    o, k = w.shape[0], w.shape[1]
    dx = ops.conv2d(dz, w.reshape(o, k).transpose(1, 0).reshape(k, o, 1, 1))
    dw = ops.matmul(dz.transpose(1, 0, 2, 3).reshape(o, -1), x.transpose(1, 0, 2, 3).reshape(k, -1).T)
    return dx, dw.reshape(w.shape), dz.sum(axis=(0, 2, 3))


def pointwise_bias_act_op(activation):
    """Custom op y = activation(conv1x1(x, w) + bias[o]), with its gradient as bprop."""

    def bprop(x, w, bias, out, dout):
        return _grads(x, w, activation_grad(ops.bias_add(ops.conv2d(x, w), bias), dout, activation))

    def out_shape(x, w, bias):
        return [x[0], w[0], x[2], x[3]]

    return aot(f"Pointwise{ACTIVATION_SYMBOLS[activation]}", out_shape, bprop)


def pointwise_residual_op():
    """Custom op y = (conv1x1(x, w) + bias[o]) + residual, with its gradient as bprop."""

    def bprop(x, w, bias, residual, out, dout):
        return (*_grads(x, w, dout), dout)

    return aot("PointwiseResidual", lambda x, w, b, r: r, bprop)


# (depthwise activation, pointwise activation or "residual") pairs the kernel library exports, for any stride (the
# shortcut: stride 1 only): MobileNetV1's blocks (mindcv's with ReLU) and MobileNetV3's blocks without squeeze-excite.
SEPARABLE = {("relu6", "relu6"), ("relu", "relu"), ("relu", None), ("hswish", None), ("relu", "residual"),
             ("hswish", "residual")}


def depthwise_pointwise_op(stride, depthwise_activation, activation, same=False):
    """Custom op y = act(conv1x1(dwact(depthwise(x, wd) + bd[c]), w) + bias[o]) (the depthwise convolution padded
    "same" with `same`), called as op(x, wd, bd, w, bias),
    or with `activation` "residual" (stride 1) y = conv1x1(...) + bias[o] + shortcut, called as
    op(x, wd, bd, w, bias, shortcut): a depthwise conv -> BatchNorm -> activation and a 1x1 conv -> BatchNorm ->
    activation in inference, both BatchNorms folded, in one pass with its gradient as bprop.  None where the library
    does not have that pair (`SEPARABLE`)."""
    residual = activation == "residual"
    if (depthwise_activation, activation) not in SEPARABLE or (residual and stride != 1):
        return None
    depthwise = depthwise_op(stride, same)
    input_grad, weight_grad = depthwise_grad_ops(stride, same)
    depthwise_bias_act = depthwise_bias_act_op(stride, depthwise_activation, same)
    pointwise_activation = None if residual else activation

    def grads(x, wd, bd, w, bias, dout):
        hidden = depthwise_bias_act(x, wd, bd)
        dz = activation_grad(ops.bias_add(ops.conv2d(hidden, w), bias), dout, pointwise_activation)
        dhidden, dw, dbias = _grads(hidden, w, dz)
        dzd = activation_grad(ops.bias_add(depthwise(x, wd), bd), dhidden, depthwise_activation)
        return input_grad(x, wd, dzd), weight_grad(x, wd, dzd), dzd.sum(axis=(0, 2, 3)), dw, dbias

    def out_shape(x, wd, bd, w, *_):
        return [x[0], w[0], *conv_output_shape(x, wd, stride)[2:]]

    name = f"Separable{ACTIVATION_SYMBOLS[depthwise_activation]}"
    if residual:
        def bprop_residual(x, wd, bd, w, bias, shortcut, out, dout):
            return (*grads(x, wd, bd, w, bias, dout), dout)

        return aot(f"{name}ResidualS1", out_shape, bprop_residual)

    def bprop(x, wd, bd, w, bias, out, dout):
        return grads(x, wd, bd, w, bias, dout)

    return aot(f"{name}{ACTIVATION_SYMBOLS[activation]}{padding_symbol(stride, same)}", out_shape, bprop)
