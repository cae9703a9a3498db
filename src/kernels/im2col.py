"""im2col: the dense k x k stem convolution as a 1x1 convolution (a GEMM) on CPU, its gradient col2im; and the stem's
inference (3x3 at stride 2, bias + activation) as one direct op."""
import mindspore.ops as ops

from src.kernels.bias_act import ACTIVATION_SYMBOLS, activation_grad
from src.kernels.depthwise import padding_symbol
from src.kernels.library import aot


def im2col_op(kernel_size: int, stride: int, same: bool = False):
    """Custom op columns = im2col(x) for a k x k convolution (odd k) with padding k // 2, or TensorFlow's "same" with
    `same`, at `stride` (1 or 2): (N, C, H, W) -> (N, C * k * k, Ho, Wo), column (c * k + kh) * k + kw, so that a 1x1
    convolution with the weight reshaped to (out, C * k * k) is the convolution; its gradient is col2im."""
    k, pad = kernel_size, kernel_size // 2
    col2im = aot(f"Col2Im{padding_symbol(stride, same)}", lambda x, cols: x)

    def bprop(x, out, dout):
        return (col2im(x, dout),)

    def out_shape(x):
        return [x[0], x[1] * k * k, (x[2] + 2 * pad - k) // stride + 1, (x[3] + 2 * pad - k) // stride + 1]

    return aot(f"Im2Col{padding_symbol(stride, same)}", out_shape, bprop)


def stem_bias_act_op(activation, same: bool = False):
    """Custom op y = activation(conv3x3(x, w, stride 2, padding 1, or TensorFlow's "same" with `same`) + bias[o])
    computed directly (inference of the stem with BatchNorm folded), with its gradient (through im2col) as bprop."""
    im2col = im2col_op(3, 2, same)
    col2im = aot(f"Col2Im{padding_symbol(2, same)}", lambda x, cols: x)

    def bprop(x, w, bias, out, dout):
        cols = im2col(x)  # (N, C * 9, Ho, Wo)
        o, taps = w.shape[0], w.shape[1] * 9
        matrix = w.reshape(o, taps)
        z = ops.bias_add(ops.conv2d(cols, matrix.reshape(o, taps, 1, 1)), bias)
        dz = activation_grad(z, dout, activation)
        dx = col2im(x, ops.conv2d(dz, matrix.transpose(1, 0).reshape(taps, o, 1, 1)))
        dw = ops.matmul(dz.transpose(1, 0, 2, 3).reshape(o, -1), cols.transpose(1, 0, 2, 3).reshape(taps, -1).T)
        return dx, dw.reshape(w.shape), dz.sum(axis=(0, 2, 3))

    def out_shape(x, w, bias):
        return [x[0], w[0], (x[2] - 1) // 2 + 1, (x[3] - 1) // 2 + 1]

    return aot(f"StemConv3x3{padding_symbol(2, same)}{ACTIVATION_SYMBOLS[activation]}", out_shape, bprop)
