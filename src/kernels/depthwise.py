"""Depthwise convolution (much faster on CPU than MindSpore's grouped convolution), with its gradients, and with
bias + activation fused into its output pass."""
import mindspore.ops as ops

from src.kernels.bias_act import ACTIVATION_SYMBOLS, activation_grad
from src.kernels.library import aot

STRIDES = (1, 2)


def conv_output_shape(x_shape, w_shape, stride):
    """(N, C, Ho, Wo) of a depthwise convolution of x at `stride` (symmetric padding k // 2, or TensorFlow's "same":
    the same size for odd k)."""
    k = w_shape[2]
    return [x_shape[0], x_shape[1], (x_shape[2] + 2 * (k // 2) - k) // stride + 1,
            (x_shape[3] + 2 * (k // 2) - k) // stride + 1]


def padding_symbol(stride: int, same: bool) -> str:
    """The end of a kernel's symbol for `stride` and padding: "S1", "S2", or "SameS2" for TensorFlow's "same" (at
    stride 1 the symmetric padding k // 2)."""
    return f"SameS{stride}" if same and stride == 2 else f"S{stride}"


def depthwise_grad_ops(stride, same=False):
    """The ops (x, w, dy) -> dx and (x, w, dy) -> dw of a depthwise convolution at `stride` (padded "same" with
    `same`)."""
    return (aot(f"DepthwiseInputGrad{padding_symbol(stride, same)}", lambda x, w, dy: x),
            aot(f"DepthwiseWeightGrad{padding_symbol(stride, same)}", lambda x, w, dy: w))


def depthwise_op(stride: int, same: bool = False) -> ops.Custom:
    """Custom op y = depthwise_conv(x, w) at `stride` (padded "same" with `same`), with its gradient ops as bprop."""
    input_grad, weight_grad = depthwise_grad_ops(stride, same)

    def bprop(x, w, out, dout):
        return input_grad(x, w, dout), weight_grad(x, w, dout)

    return aot(f"DepthwiseForward{padding_symbol(stride, same)}", lambda x, w: conv_output_shape(x, w, stride), bprop)


def depthwise_bias_act_op(stride: int, activation, same: bool = False) -> ops.Custom:
    """Custom op y = activation(depthwise_conv(x, w) + bias[c]) at `stride` (padded "same" with `same`) in one pass
    (inference with folded BatchNorm), with its gradient as bprop."""
    forward = depthwise_op(stride, same)
    input_grad, weight_grad = depthwise_grad_ops(stride, same)

    def bprop(x, w, bias, out, dout):
        dz = activation_grad(ops.bias_add(forward(x, w), bias), dout, activation)
        return input_grad(x, w, dz), weight_grad(x, w, dz), dz.sum(axis=(0, 2, 3))

    return aot(f"DepthwiseForward{ACTIVATION_SYMBOLS[activation]}{padding_symbol(stride, same)}",
               lambda x, w, b: conv_output_shape(x, w, stride), bprop)
