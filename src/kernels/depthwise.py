"""Depthwise convolution (much faster on CPU than MindSpore's grouped convolution), with its gradients, and with
bias + activation fused into its output pass."""
import mindspore.ops as ops

from src.kernels.bias_act import ACTIVATION_SYMBOLS, activation_grad
from src.kernels.library import aot

STRIDES = (1, 2)


def conv_output_shape(x_shape, w_shape, stride):
    """(N, C, Ho, Wo) of a depthwise convolution of x at `stride` (symmetric padding k // 2)."""
    k = w_shape[2]
    return [x_shape[0], x_shape[1], (x_shape[2] + 2 * (k // 2) - k) // stride + 1,
            (x_shape[3] + 2 * (k // 2) - k) // stride + 1]


def depthwise_grad_ops(stride):
    """The ops (x, w, dy) -> dx and (x, w, dy) -> dw of a depthwise convolution at `stride`."""
    return (aot(f"DepthwiseInputGradS{stride}", lambda x, w, dy: x),
            aot(f"DepthwiseWeightGradS{stride}", lambda x, w, dy: w))


def depthwise_op(stride: int) -> ops.Custom:
    """Custom op y = depthwise_conv(x, w) at `stride`, with its gradient ops as bprop."""
    input_grad, weight_grad = depthwise_grad_ops(stride)

    def bprop(x, w, out, dout):
        return input_grad(x, w, dout), weight_grad(x, w, dout)

    return aot(f"DepthwiseForwardS{stride}", lambda x, w: conv_output_shape(x, w, stride), bprop)


def depthwise_bias_act_op(stride: int, activation) -> ops.Custom:
    """Custom op y = activation(depthwise_conv(x, w) + bias[c]) at `stride` in one pass (inference with folded
    BatchNorm), with its gradient as bprop."""
    forward = depthwise_op(stride)
    input_grad, weight_grad = depthwise_grad_ops(stride)

    def bprop(x, w, bias, out, dout):
        dz = activation_grad(ops.bias_add(forward(x, w), bias), dout, activation)
        return input_grad(x, w, dz), weight_grad(x, w, dz), dz.sum(axis=(0, 2, 3))

    return aot(f"DepthwiseForward{ACTIVATION_SYMBOLS[activation]}S{stride}",
               lambda x, w, b: conv_output_shape(x, w, stride), bprop)
