"""BatchNorm kernels: training-mode BatchNorm + activation in one op (forward and backward), and folding an
inference BatchNorm into the convolution before it."""
import mindspore.ops as ops

from src.kernels.bias_act import ACTIVATION_SYMBOLS
from src.kernels.library import aot


def _fold_bprop(w, gamma, beta, mean, var, eps, out, dout):
    dw_folded, db_folded = dout
    invstd = 1.0 / ops.sqrt(var + eps)
    scale = gamma * invstd
    dw = dw_folded * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    dscale = (dw_folded * w).reshape(w.shape[0], -1).sum(axis=1) - db_folded * mean
    return (dw, dscale * invstd, db_folded, -db_folded * scale, -0.5 * dscale * gamma * invstd ** 3,
            ops.zeros_like(eps))


def fold_batchnorm_op():
    """Custom op (w', b') = fold(w, gamma, beta, mean, var, eps): a convolution weight w (out, ...) and the
    BatchNorm after it as one convolution with bias, w' = w * s, b' = beta - mean * s, s = gamma / sqrt(var +
    eps) (eps a 1-element tensor)."""

    def weight_and_bias(w, gamma, *_):
        return w, gamma

    return aot("FoldBatchNorm", weight_and_bias, _fold_bprop, out_dtype=weight_and_bias)


def batchnorm_train_op(activation, prefix: str = "", library=None):
    """Custom op (y, mean, var) = BatchNorm + `activation` in training mode on NCHW x, called as
    op(x, gamma, beta, eps) with eps a 1-element tensor: y = act(gamma * (x - mean) / sqrt(var + eps) + beta),
    mean and (biased) var over N, H, W.  Its gradient op recomputes the pre-activation from x.  With `prefix`
    "Blocked" and the blocked library (`library`), the same on the blocked layout (blocked.py)."""
    name = ACTIVATION_SYMBOLS[activation]

    def like_x_and_two_gammas(x, gamma, *_):  # y or dx, then two per-channel vectors
        return x, gamma, gamma

    grad = aot(f"{prefix}BNTrainGrad{name}", like_x_and_two_gammas, out_dtype=like_x_and_two_gammas, library=library)

    def bprop(x, gamma, beta, eps, out, dout):
        dx, dgamma, dbeta = grad(x, gamma, beta, eps, out[1], out[2], dout[0])
        return dx, dgamma, dbeta, ops.zeros_like(eps)

    return aot(f"{prefix}BNTrain{name}", like_x_and_two_gammas, bprop, out_dtype=like_x_and_two_gammas,
               library=library)
