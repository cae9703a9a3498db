"""The C++ CPU kernels as MindSpore custom ops equal MindSpore's built-in operators: depthwise convolution forward
bitwise and gradients to rounding, bias + activation, the stem's im2col, the depthwise op's fused epilogue; and the
library builds once, from several processes at once."""
import subprocess
import sys

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
import pytest

from src.kernels import library
from src.kernels.bias_act import bias_act_op
from src.kernels.depthwise import depthwise_bias_act_op, depthwise_op
from src.kernels.im2col import im2col_op
from src.model_utils.config import ROOT_DIR

SHAPES = [(1, 7, 7), (4, 8, 8), (1, 28, 28), (4, 14, 15)]  # (batch, height, width)


def random_input(batch, channels, height, width, seed=0):
    return ms.Tensor(np.random.default_rng(seed).standard_normal((batch, channels, height, width), np.float32))


class KernelConv(nn.Cell):
    """The convolution of a built-in `nn.Conv2d` (its weight) computed by a C++ op `convolve(x, weight)`."""

    def __init__(self, conv, convolve):
        super().__init__()
        self.conv = conv
        self.convolve = convolve

    def construct(self, x):
        return self.convolve(x, self.conv.weight)


def forward_and_grads(net, x):
    """(output, input grad, weight grad) as numpy arrays."""
    dx, (dw,) = ms.grad(net, grad_position=0, weights=net.trainable_params())(x)
    return net(x).asnumpy(), dx.asnumpy(), dw.asnumpy()


def depthwise_pair(channels, k, stride, same=False):
    """A built-in depthwise nn.Conv2d (padded k // 2, or "same") and the C++ depthwise op on its weight."""
    if same:
        builtin = nn.Conv2d(channels, channels, k, stride, pad_mode="same", group=channels)
    else:
        builtin = nn.Conv2d(channels, channels, k, stride, pad_mode="pad", padding=k // 2, group=channels)
    return builtin, KernelConv(builtin, depthwise_op(stride, same))


def assert_matches(expected, actual):
    """Forward bitwise, gradients within 1e-4 of their largest magnitude."""
    np.testing.assert_array_equal(actual[0], expected[0])
    for want, got in zip(expected[1:], actual[1:]):
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_kernel_library_builds():
    assert library.kernel_library() is not None


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE], indirect=True)
@pytest.mark.parametrize("k,stride,same", [(3, 1, False), (3, 2, False), (5, 1, False), (5, 2, False), (3, 2, True),
                                           (5, 2, True)])
@pytest.mark.parametrize("batch,height,width", SHAPES)
def test_depthwise_matches_builtin(mode, k, stride, same, batch, height, width):
    """Symmetric padding, and TensorFlow's "same" (MindSpore's pad_mode "same": at stride 2 on an even size one row
    and column less before, SHAPES has odd and even sizes)."""
    builtin, custom = depthwise_pair(3, k, stride, same)
    x = random_input(batch, 3, height, width)
    assert_matches(forward_and_grads(builtin, x), forward_and_grads(custom, x))


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE], indirect=True)
def test_depthwise_pynative_follows_changing_shapes(mode):
    for k, stride in [(3, 1), (5, 2), (3, 2), (5, 1)]:
        builtin, custom = depthwise_pair(4, k, stride)
        for seed, (batch, height, width) in enumerate(SHAPES):
            x = random_input(batch, 4, height, width, seed)
            assert_matches(forward_and_grads(builtin, x), forward_and_grads(custom, x))


def test_concurrent_builds_share_one_library(tmp_path):
    """Two processes compiling at once (each ~1 minute of g++ on a busy 2-core machine) end with one library."""
    code = "from src.kernels.library import kernel_library; print(kernel_library())"
    env = {"MOBILENET_ZOO_CACHE": str(tmp_path), "PYTHONPATH": ROOT_DIR, "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT_DIR, env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    paths = {proc.communicate(timeout=900)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(paths) == 1 and paths.pop().startswith(str(tmp_path))
    assert [p.suffix for p in tmp_path.iterdir()] == [".so"]


def composed_bias_act(x, bias, activation):
    """activation(x + bias[c]) from MindSpore's operators."""
    z = ops.bias_add(x, bias)
    if activation == "relu":
        return ops.relu(z)
    if activation == "relu6":
        return ops.relu6(z)
    if activation == "hswish":
        return z * ops.relu6(z + 3.0) / 6.0
    return z


class BiasAct(nn.Cell):
    """(activation(x + bias) * dy).sum() with the C++ op (`fused`) or bias_add + MindSpore's operators."""

    def __init__(self, activation, fused):
        super().__init__()
        self.op = bias_act_op(activation) if fused else None
        self.activation = activation

    def construct(self, x, bias, dy):
        if self.op is not None:
            return (self.op(x, bias) * dy).sum()
        return (composed_bias_act(x, bias, self.activation) * dy).sum()


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
@pytest.mark.parametrize("activation", [None, "relu", "relu6", "hswish"])
def test_bias_activation_matches_composed_ops(mode, activation):
    """activation(x + bias) in one C++ pass equals bias_add then MindSpore's operators, forward and gradients."""
    rng = np.random.default_rng(3)
    x = ms.Tensor(rng.uniform(-8, 8, (3, 5, 6, 7)).astype(np.float32))
    bias = ms.Tensor(rng.standard_normal(5).astype(np.float32))
    dy = ms.Tensor(rng.standard_normal((3, 5, 6, 7)).astype(np.float32))
    fused, composed = BiasAct(activation, True), BiasAct(activation, False)
    np.testing.assert_allclose(fused(x, bias, dy).asnumpy(), composed(x, bias, dy).asnumpy(), rtol=1e-6)
    for got, want in zip(ms.grad(fused, grad_position=(0, 1))(x, bias, dy),
                         ms.grad(composed, grad_position=(0, 1))(x, bias, dy)):
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-5, atol=1e-5)


class Im2ColConv(nn.Cell):
    """The convolution of a built-in dense 3x3 `nn.Conv2d` of 3 -> 8 channels (its weight) as C++ im2col + 1x1."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv
        self.im2col = im2col_op(3, conv.stride[0], conv.pad_mode == "same")

    def construct(self, x):
        return ops.conv2d(self.im2col(x), self.conv.weight.reshape(8, 27, 1, 1))


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
@pytest.mark.parametrize("stride,pad_mode", [(1, "pad"), (2, "pad"), (2, "same")])
def test_stem_im2col_matches_builtin_convolution(mode, stride, pad_mode):
    """The stem's dense 3x3 convolution as C++ im2col + 1x1 convolution equals MindSpore's Conv2D (padding 1, or
    "same"): output and input / weight gradients, for changing input shapes (odd, even, non-square)."""
    builtin = nn.Conv2d(3, 8, 3, stride, pad_mode=pad_mode, padding=1 if pad_mode == "pad" else 0, has_bias=False)
    fast = Im2ColConv(builtin)
    for shape in ((2, 3, 9, 11), (3, 3, 16, 16), (1, 3, 7, 6)):
        x = random_input(*shape)
        want, got = forward_and_grads(builtin, x), forward_and_grads(fast, x)
        for w, g in zip(want, got):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


class DepthwiseBiasAct(nn.Cell):
    """(activation(depthwise(x) + bias) * dy).sum() with the fused C++ op or as the depthwise op then MindSpore's
    operators."""

    def __init__(self, conv, activation, fused):
        super().__init__()
        self.conv = conv
        stride, same = conv.stride[0], conv.pad_mode == "same"
        self.op = depthwise_bias_act_op(stride, activation, same) if fused else depthwise_op(stride, same)
        self.fused, self.activation = fused, activation

    def construct(self, x, bias, dy):
        if self.fused:
            return (self.op(x, self.conv.weight, bias) * dy).sum()
        return (composed_bias_act(self.op(x, self.conv.weight), bias, self.activation) * dy).sum()


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
@pytest.mark.parametrize("activation,stride,pad_mode", [(None, 1, "pad"), ("relu", 2, "pad"), ("relu6", 1, "pad"),
                                                       ("hswish", 2, "pad"), ("relu6", 2, "same")])
def test_depthwise_with_bias_activation_matches_separate_ops(mode, activation, stride, pad_mode):
    """The inference epilogue fused into the depthwise kernel equals conv, bias_add, activation: forward and the
    gradients of input, weight and bias."""
    conv = nn.Conv2d(6, 6, 3, stride, pad_mode=pad_mode, padding=1 if pad_mode == "pad" else 0, group=6)
    rng = np.random.default_rng(5)
    x = random_input(2, 6, 9, 8)
    bias = ms.Tensor(rng.standard_normal(6).astype(np.float32))
    dy = ms.Tensor(rng.standard_normal((2, 6, (9 - 1) // stride + 1, (8 - 1) // stride + 1)).astype(np.float32))
    fused, separate = DepthwiseBiasAct(conv, activation, True), DepthwiseBiasAct(conv, activation, False)
    np.testing.assert_allclose(fused(x, bias, dy).asnumpy(), separate(x, bias, dy).asnumpy(), rtol=1e-5)
    grads = [ms.grad(net, grad_position=(0, 1), weights=[conv.weight])(x, bias, dy) for net in (fused, separate)]
    for got, want in zip([*grads[0][0], *grads[0][1]], [*grads[1][0], *grads[1][1]]):
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-5, atol=1e-5)
