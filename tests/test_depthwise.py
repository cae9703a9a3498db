"""The C++ depthwise convolution equals MindSpore's built-in one: forward bitwise, gradients to rounding,
whole networks to 1e-5, with automatic fallback to the built-in convolution."""
import logging
import subprocess
import sys

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
import pytest

from src.kernels import library
from src.kernels.bias_act import bias_act_op
from src.models import create_model
from src.models.layers import (DepthwiseConv2d, UnfoldConv2d, conv_bn_act, depthwise_then_pointwise, separable_op,
                               use_portable_ops)
from src.model_utils.config import ROOT_DIR

SHAPES = [(1, 7, 7), (4, 8, 8), (1, 28, 28), (4, 14, 15)]  # (batch, height, width)


def pair(channels, k, stride):
    """A built-in depthwise nn.Conv2d and a DepthwiseConv2d with the same weight."""
    builtin = nn.Conv2d(channels, channels, k, stride, pad_mode="pad", padding=k // 2, group=channels)
    custom = DepthwiseConv2d(channels, channels, k, stride, pad_mode="pad", padding=k // 2, group=channels)
    custom.weight.set_data(builtin.weight.data)
    return builtin, custom


def forward_and_grads(net, x):
    """(output, input grad, weight grad) as numpy arrays."""
    dx, (dw,) = ms.grad(net, grad_position=0, weights=net.trainable_params())(x)
    return net(x).asnumpy(), dx.asnumpy(), dw.asnumpy()


def assert_matches(expected, actual):
    """Forward bitwise, gradients within 1e-4 of their largest magnitude."""
    np.testing.assert_array_equal(actual[0], expected[0])
    for want, got in zip(expected[1:], actual[1:]):
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def random_input(batch, channels, height, width, seed=0):
    return ms.Tensor(np.random.default_rng(seed).standard_normal((batch, channels, height, width), np.float32))


def use_depthwise_cells(net):
    """Replace the built-in depthwise convolutions of `net` by DepthwiseConv2d (a no-op once `conv_bn_act`
    builds DepthwiseConv2d itself)."""
    for _, cell in list(net.cells_and_names()):
        if isinstance(cell, nn.SequentialCell):
            for i, child in enumerate(list(cell)):
                if type(child) is nn.Conv2d and 1 < child.group == child.in_channels == child.out_channels:
                    k = child.kernel_size[0]
                    swapped = DepthwiseConv2d(child.group, child.group, k, child.stride[0], pad_mode="pad",
                                              padding=k // 2, group=child.group)
                    swapped.weight = child.weight
                    cell[i] = swapped
    return net


def use_builtin_cells(net):
    """Set `portable` on every DepthwiseConv2d of `net`: the built-in convolution runs."""
    for _, cell in net.cells_and_names():
        if isinstance(cell, DepthwiseConv2d):
            cell.portable = True
    return net


def refuse(*_):
    raise AssertionError("the C++ kernel ran")


def test_kernel_library_builds():
    assert library.kernel_library() is not None


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE], indirect=True)
@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (5, 1), (5, 2)])
@pytest.mark.parametrize("batch,height,width", SHAPES)
def test_layer_matches_builtin(mode, k, stride, batch, height, width):
    builtin, custom = pair(3, k, stride)
    x = random_input(batch, 3, height, width)
    assert_matches(forward_and_grads(builtin, x), forward_and_grads(custom, x))


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE], indirect=True)
def test_pynative_follows_changing_shapes(mode):
    for k, stride in [(3, 1), (5, 2), (3, 2), (5, 1)]:
        builtin, custom = pair(4, k, stride)
        for seed, (batch, height, width) in enumerate(SHAPES):
            x = random_input(batch, 4, height, width, seed)
            assert_matches(forward_and_grads(builtin, x), forward_and_grads(custom, x))


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE], indirect=True)
def test_portable_uses_builtin_convolution(mode):
    builtin, custom = pair(4, 3, 2)
    custom.portable = True
    custom.kernel = refuse
    x = random_input(2, 4, 9, 9)
    for want, got in zip(forward_and_grads(builtin, x), forward_and_grads(custom, x)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE], indirect=True)
def test_failed_build_falls_back_with_one_warning(mode, monkeypatch, tmp_path, caplog):
    broken = tmp_path / "broken.cc"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(library, "SOURCES", (broken,))
    monkeypatch.setattr(library, "_library", {})
    monkeypatch.setenv("MOBILENET_ZOO_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger=library.__name__):
        layers = [pair(4, 3, 1), pair(4, 5, 2)]
    assert len(caplog.records) == 1
    x = random_input(2, 4, 8, 8)
    for builtin, custom in layers:
        assert custom.kernel is None
        np.testing.assert_array_equal(custom(x).asnumpy(), builtin(x).asnumpy())


def test_concurrent_builds_share_one_library(tmp_path):
    code = "from src.kernels.library import kernel_library; print(kernel_library())"
    env = {"MOBILENET_ZOO_CACHE": str(tmp_path), "PYTHONPATH": ROOT_DIR, "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT_DIR, env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    paths = {proc.communicate(timeout=120)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(paths) == 1 and paths.pop().startswith(str(tmp_path))
    assert [p.suffix for p in tmp_path.iterdir()] == [".so"]


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE], indirect=True)
@pytest.mark.parametrize("name,steps", [("mobilenet_v3_small", 3),
                                        pytest.param("mobilenet_v1", 2, marks=pytest.mark.slow)])
def test_network_matches_builtin(mode, name, steps):
    """Logits, gradients and the losses of a few training steps (MobileNetV1 on 64x64 images amplifies
    rounding differences chaotically from its third step: its losses differ by 1e-2 there)."""
    custom = use_depthwise_cells(create_model(name, class_num=10, dropout=0.0))
    builtin = use_builtin_cells(create_model(name, class_num=10, dropout=0.0))
    assert any(isinstance(cell, DepthwiseConv2d) and cell.kernel for _, cell in custom.cells_and_names())
    weights = {name: ms.Parameter(param.asnumpy(), name) for name, param in custom.parameters_dict().items()}
    assert ms.load_param_into_net(builtin, weights, strict_load=True) == ([], [])
    images = random_input(4, 3, 64, 64)
    labels = ms.Tensor(np.arange(4, dtype=np.int32))
    logits, grads, losses = [], [], []
    for net in (custom, builtin):
        net.set_train(False)
        logits.append(net(images).asnumpy())
        net.set_train(True)
        loss_net = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
        grads.append(ms.grad(loss_net, grad_position=None, weights=net.trainable_params())(images, labels))
        step = nn.TrainOneStepCell(loss_net, nn.Momentum(net.trainable_params(), 0.01, 0.9))
        losses.append([float(step(images, labels).asnumpy()) for _ in range(steps)])
    np.testing.assert_allclose(logits[0], logits[1], rtol=0, atol=1e-5)
    for got, want in zip(*grads):
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=0,
                                   atol=1e-4 * np.abs(want.asnumpy()).max() + 1e-7)
    np.testing.assert_allclose(losses[0], losses[1], rtol=0, atol=1e-5)


class BiasAct(nn.Cell):
    """(activation(x + bias) * dy).sum() with the C++ op (`fused`) or bias_add + MindSpore's operators."""

    def __init__(self, activation, fused):
        super().__init__()
        self.op = bias_act_op(activation) if fused else None
        self.activation = activation

    def construct(self, x, bias, dy):
        if self.op is not None:
            return (self.op(x, bias) * dy).sum()
        z = ops.bias_add(x, bias)
        if self.activation == "relu":
            z = ops.relu(z)
        elif self.activation == "relu6":
            z = ops.relu6(z)
        elif self.activation == "hswish":
            z = z * ops.relu6(z + 3.0) / 6.0
        return (z * dy).sum()


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
@pytest.mark.parametrize("activation", [None, "relu", "relu6", "hswish"])
def test_bias_activation_matches_composed_ops(mode, activation):
    """activation(x + bias) in one C++ pass equals bias_add then MindSpore's operators, forward and gradients."""
    assert bias_act_op(activation) is not None
    rng = np.random.default_rng(3)
    x = ms.Tensor(rng.uniform(-8, 8, (3, 5, 6, 7)).astype(np.float32))
    bias = ms.Tensor(rng.standard_normal(5).astype(np.float32))
    dy = ms.Tensor(rng.standard_normal((3, 5, 6, 7)).astype(np.float32))
    fused, composed = BiasAct(activation, True), BiasAct(activation, False)
    np.testing.assert_allclose(fused(x, bias, dy).asnumpy(), composed(x, bias, dy).asnumpy(), rtol=1e-6)
    for got, want in zip(ms.grad(fused, grad_position=(0, 1))(x, bias, dy),
                         ms.grad(composed, grad_position=(0, 1))(x, bias, dy)):
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-5, atol=1e-5)


class SumWith(nn.Cell):
    """(net(x) * dy).sum()"""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x, dy):
        return (self.net(x) * dy).sum()


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
@pytest.mark.parametrize("activation", [None, "relu", "relu6", "hswish"])
def test_training_batchnorm_op_matches_builtin(mode, activation):
    """conv -> BatchNorm -> activation in training mode with the C++ BatchNorm + activation op equals
    MindSpore's BatchNorm and activation: output, gradients of input and every parameter, moving statistics."""
    nets = [conv_bn_act(4, 6, 3, activation=activation) for _ in range(2)]
    fused, builtin = nets
    use_portable_ops(builtin)
    assert fused.bn_act is not None
    rng = np.random.default_rng(4)
    for param in fused.get_parameters():
        if param.name.endswith(("gamma", "beta", "moving_mean")):
            param.set_data(ms.Tensor(rng.normal(0.5, 0.5, param.shape).astype(np.float32)))
    ms.load_param_into_net(builtin, {p.name: p.clone() for p in fused.get_parameters()})
    x = ms.Tensor((rng.standard_normal((3, 4, 9, 8)) * 2 + 1).astype(np.float32))
    dy = ms.Tensor(rng.standard_normal((3, 6, 9, 8)).astype(np.float32))
    results = []
    for net in nets:
        net.set_train(True)
        out = net(x).asnumpy()
        grads = ms.grad(SumWith(net), grad_position=0, weights=net.trainable_params())(x, dy)
        results.append([out, grads[0].asnumpy(), *[g.asnumpy() for g in grads[1]],
                        net[1].moving_mean.asnumpy(), net[1].moving_variance.asnumpy()])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
@pytest.mark.parametrize("stride", [1, 2])
def test_stem_im2col_matches_builtin_convolution(mode, stride):
    """The stem's dense 3x3 convolution as C++ im2col + 1x1 convolution equals MindSpore's Conv2D: output and
    input / weight gradients, for changing input shapes (odd, even, non-square)."""
    fast = UnfoldConv2d(3, 8, 3, stride, pad_mode="pad", padding=1)
    builtin = nn.Conv2d(3, 8, 3, stride, pad_mode="pad", padding=1, has_bias=False)
    builtin.weight.set_data(fast.weight.data.copy())
    assert fast.im2col is not None
    for shape in ((2, 3, 9, 11), (3, 3, 16, 16), (1, 3, 7, 6)):
        x = random_input(*shape)
        want, got = forward_and_grads(builtin, x), forward_and_grads(fast, x)
        for w, g in zip(want, got):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


class DepthwiseBiasAct(nn.Cell):
    """(activation(depthwise(x) + bias) * dy).sum() with the fused C++ op or as separate operators."""

    def __init__(self, conv, activation, fused):
        super().__init__()
        self.conv = conv
        self.op = conv.bias_act_op(activation) if fused else None
        self.act = BiasAct(activation, False)

    def construct(self, x, bias, dy):
        if self.op is not None:
            return (self.op(x, self.conv.weight, bias) * dy).sum()
        return self.act(self.conv(x), bias, dy)


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
@pytest.mark.parametrize("activation,stride", [(None, 1), ("relu", 2), ("relu6", 1), ("hswish", 2)])
def test_depthwise_with_bias_activation_matches_separate_ops(mode, activation, stride):
    """The inference epilogue fused into the depthwise kernel equals conv, bias_add, activation: forward and the
    gradients of input, weight and bias."""
    conv = DepthwiseConv2d(6, 6, 3, stride, pad_mode="pad", padding=1, group=6)
    rng = np.random.default_rng(5)
    x = random_input(2, 6, 9, 8)
    bias = ms.Tensor(rng.standard_normal(6).astype(np.float32))
    dy = ms.Tensor(rng.standard_normal((2, 6, (9 - 1) // stride + 1, (8 - 1) // stride + 1)).astype(np.float32))
    fused, separate = DepthwiseBiasAct(conv, activation, True), DepthwiseBiasAct(conv, activation, False)
    np.testing.assert_allclose(fused(x, bias, dy).asnumpy(), separate(x, bias, dy).asnumpy(), rtol=1e-5)
    grads = [ms.grad(net, grad_position=(0, 1), weights=[conv.weight])(x, bias, dy) for net in (fused, separate)]
    for got, want in zip([*grads[0][0], *grads[0][1]], [*grads[1][0], *grads[1][1]]):
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-5, atol=1e-5)



def output_and_grads(net, x):
    """net(x), and the gradients of (net(x) * fixed random weights).sum() for x and every parameter."""
    out = net(x)
    dy = ms.Tensor(np.random.default_rng(9).standard_normal(out.shape).astype(np.float32))
    dx, dweights = ms.grad(SumWith(net), grad_position=0, weights=net.trainable_params())(x, dy)
    return [out.asnumpy(), dx.asnumpy()] + [g.asnumpy() for g in dweights]


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
def test_squeeze_excite_and_shortcut_ops_match_builtin(mode):
    """The C++ global mean, h-sigmoid gate (x * relu6(g + 3) / 6) and bias + shortcut ops equal the built-in
    operators: a squeeze-excite block in training (output, input and parameter gradients; inputs large enough
    that some gates saturate), global pooling, and an inverted residual block with its shortcut in inference."""
    from src.models.mobilenet_v3 import InvertedResidual, SqueezeExcite  # pylint: disable=import-outside-toplevel
    from src.models.layers import GlobalAvgPool  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(3)
    x = ms.Tensor((rng.standard_normal((3, 24, 7, 9)) + rng.normal(0, 3, (3, 24, 1, 1))).astype(np.float32))
    for make in (lambda: SqueezeExcite(24), GlobalAvgPool, lambda: GlobalAvgPool(keep_dims=True)):
        fast, builtin = make(), use_portable_ops(make())
        if isinstance(fast, SqueezeExcite):
            assert fast.gate_and_scale is not None
            for param in fast.get_parameters():
                param.set_data(ms.Tensor(rng.normal(0, 0.5, param.shape).astype(np.float32)))
            logits = fast.expand(fast.relu(fast.reduce(fast.pool(x)))).asnumpy()
            assert (np.abs(logits) > 3).mean() > 0.1 and (np.abs(logits) < 3).mean() > 0.1  # both sides of the kinks
        else:
            assert fast.mean is not None
        ms.load_param_into_net(builtin, {p.name: p.clone() for p in fast.get_parameters()})
        for want, got in zip(output_and_grads(builtin, x), output_and_grads(fast, x)):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))
    blocks = [InvertedResidual(24, 3, 72, 24, True, "hswish", 1) for _ in range(2)]
    fast, builtin = blocks[0], use_portable_ops(blocks[1])
    assert fast.block[-1].bias_residual is not None
    ms.load_param_into_net(builtin, {p.name: p.clone() for p in fast.get_parameters()})
    for block in blocks:
        block.set_train(False)
    want, got = builtin(x).asnumpy(), fast(x).asnumpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
@pytest.mark.parametrize("activation", ["relu", "hswish"])
def test_stem_in_inference_matches_builtin(mode, activation):
    """The stem (3x3 at stride 2, 3 -> 8 channels) in inference as one direct C++ op (BatchNorm folded, bias +
    activation in its epilogue) equals conv -> BatchNorm -> activation: output, input and parameter gradients,
    for odd, even and non-square images (outputs not a multiple of the kernel's 16-column block)."""
    nets = [conv_bn_act(3, 8, 3, 2, activation=activation) for _ in range(2)]
    fast, builtin = nets[0], use_portable_ops(nets[1])
    assert fast.conv_bias_act is not None
    rng = np.random.default_rng(5)
    for param in fast.get_parameters():
        if param.name.endswith(("gamma", "beta", "moving_mean", "moving_variance")):
            param.set_data(ms.Tensor(rng.uniform(0.5, 1.5, param.shape).astype(np.float32)))
    ms.load_param_into_net(builtin, {p.name: p.clone() for p in fast.get_parameters()})
    for net in nets:
        net.set_train(False)
    for seed, shape in enumerate(((2, 3, 9, 11), (3, 3, 16, 16), (1, 3, 7, 6), (2, 3, 40, 37))):
        x = random_input(*shape, seed=seed)
        for want, got in zip(output_and_grads(builtin, x), output_and_grads(fast, x)):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))


class WithShortcut(nn.Cell):
    """net(x, shortcut)"""

    def __init__(self, net, shortcut):
        super().__init__()
        self.net = net
        self.shortcut = shortcut

    def construct(self, x):
        return self.net(x, self.shortcut)


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
@pytest.mark.parametrize("activation", [None, "relu6", "hswish", "shortcut"])
def test_pointwise_in_inference_matches_builtin(mode, activation):
    """A 1x1 conv -> BatchNorm -> activation (or + shortcut) in inference as one C++ GEMM with the folded BatchNorm's
    bias and the activation in its epilogue equals the built-in operators: output, input and parameter gradients,
    for pixel counts that are and are not multiples of the pixel block (48 with AVX-512) and output channels
    not a multiple of the register block's 8 (6 with AVX2)."""
    act = None if activation == "shortcut" else activation
    nets = [conv_bn_act(20, 13, 1, activation=act) for _ in range(2)]
    fast, builtin = nets[0], use_portable_ops(nets[1])
    assert (fast.conv_bias_residual if activation == "shortcut" else fast.conv_bias_act) is not None
    rng = np.random.default_rng(6)
    for param in fast.get_parameters():
        if param.name.endswith(("gamma", "beta", "moving_mean", "moving_variance")):
            param.set_data(ms.Tensor(rng.uniform(0.5, 1.5, param.shape).astype(np.float32)))
    ms.load_param_into_net(builtin, {p.name: p.clone() for p in fast.get_parameters()})
    for seed, shape in enumerate(((2, 20, 4, 4), (3, 20, 7, 5), (1, 20, 9, 11))):
        x = random_input(*shape, seed=seed)
        shortcut = random_input(shape[0], 13, *shape[2:], seed=seed + 10)
        pair_ = [WithShortcut(net, shortcut) if activation == "shortcut" else net for net in nets]
        for net in pair_:
            net.set_train(False)
        for want, got in zip(output_and_grads(pair_[1], x), output_and_grads(pair_[0], x)):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))


class DepthwisePointwise(nn.Cell):
    """pointwise(depthwise(x)) (+ shortcut) through `depthwise_then_pointwise`."""

    def __init__(self, depthwise, pointwise, shortcut=None):
        super().__init__()
        self.depthwise, self.pointwise, self.shortcut = depthwise, pointwise, shortcut

    def construct(self, x):
        return depthwise_then_pointwise(self.depthwise, self.pointwise, x, self.shortcut)


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
@pytest.mark.parametrize("depthwise_activation,activation,stride", [
    ("relu6", "relu6", 1), ("relu6", "relu6", 2), ("relu", None, 2), ("hswish", "shortcut", 1)])
def test_depthwise_and_pointwise_in_one_op_equal_the_two_layers(mode, depthwise_activation, activation, stride):
    """A depthwise and a 1x1 conv -> BatchNorm -> activation (or linear + shortcut) in inference as one C++ op equal
    the two layers' own kernels bit for bit and the built-in operators to 1e-5 (output, input and parameter
    gradients), for tasks of several small images and for strips of rows of one large image (C x Ho x Wo above 512
    KB: a 48x48 output of 64 channels is a strip of 42 rows and one of 6)."""
    shortcut = activation == "shortcut"
    layers = [[conv_bn_act(64, 64, 3, stride, groups=64, activation=depthwise_activation),
               conv_bn_act(64, 64 if shortcut else 40, 1, activation=None if shortcut else activation)]
              for _ in range(3)]
    rng = np.random.default_rng(8)
    for param in [*layers[0][0].get_parameters(), *layers[0][1].get_parameters()]:
        if param.name.endswith(("gamma", "beta", "moving_mean", "moving_variance")):
            param.set_data(ms.Tensor(rng.uniform(0.5, 1.5, param.shape).astype(np.float32)))
    for copy in layers[1:]:
        for source, target in zip(layers[0], copy):
            ms.load_param_into_net(target, {p.name: p.clone() for p in source.get_parameters()})
    use_portable_ops(layers[2][0]), use_portable_ops(layers[2][1])
    layers[0][1].separable = separable_op(*layers[0], shortcut)
    assert layers[0][1].separable is not None and layers[1][1].separable is None
    for seed, shape in enumerate(((3, 64, 9, 11), (1, 64, 48 * stride, 48 * stride))):
        x = random_input(*shape, seed=seed)
        out_shape = (shape[0], 64, (shape[2] - 1) // stride + 1, (shape[3] - 1) // stride + 1)
        extra = random_input(*out_shape, seed=seed + 10) if shortcut else None
        nets = [DepthwisePointwise(*pair_, extra) for pair_ in layers]
        for net in nets:
            net.set_train(False)
        one_op, two_ops = nets[0](x).asnumpy(), nets[1](x).asnumpy()
        np.testing.assert_array_equal(one_op, two_ops)
        for want, got in zip(output_and_grads(nets[2], x), output_and_grads(nets[0], x)):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))
