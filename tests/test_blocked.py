"""Inference on the blocked layout (src/kernels/blocked.py, blocked_kernel.cc on MindSpore's own oneDNN): the
lowered networks' features in eval mode compute the standard operators' logits, keep the padding channels zero, and
fall back to NCHW with one warning where oneDNN cannot be used."""
import ctypes
import logging
import resource
import time
from ctypes import CDLL

import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest

from src.kernels import library
from src.kernels.blocked import BlockedFeatures, BlockedPointwiseDepthwise, BlockedSqueezeExcite, DenseAct
from src.kernels.lowering import lower_for_cpu
from src.models import create_model, mobilenet_v3
from tests.test_lowering import assert_lowered_network_matches_standard_network, lowered, random_input, twins

pytestmark = pytest.mark.skipif(library.blocked_library() is None, reason="blocked-layout kernels unavailable")


def test_the_kernels_run_on_mindsporess_own_onednn_version_3():
    """MindSpore 2.10 ships oneDNN 3.10.1 (mindspore/lib/libdnnl.so.3), the one the kernels are linked to."""
    version = CDLL(library.blocked_library()).OneDNNVersion()
    assert version // 10000 == 3, version
    assert CDLL(library.blocked_library()).BlockSize() == library.blocked_block() == (
        16 if library.cpu_has_avx512() else 8)


# Every padding the kernels know (symmetric; TensorFlow's "same" at stride 2 in the stem and the depthwise layers),
# every activation (ReLU6, ReLU, h-swish, linear + shortcut), 3x3 and 5x5 depthwise (the 5x5 weight gradient is ours),
# channel counts that are not multiples of the block (8 in V1-0.25; 24, 40, 48, 72, 88, 120 in V3-small),
# squeeze-excite; the 1x1 + 3x3 depthwise pairs fused in inference (the last number: MobileNetV1's 12 pairs of a
# pointwise layer and the next block's depthwise one, of which 8 at stride 1 where its stride-2 ones are padded
# "same"; none in V3-small, whose 72 and 88 channels do not fill whole blocks; MobileNetV3-large's 4, with h-swish,
# and its squeeze-excite on up to 960 channels).  The logits after the training steps are computed from
# parameters that changed since the first inference: the folded weights the inference ops keep are computed again.
CASES = [("mobilenet_v1", 0.25, {}, 12), ("mobilenet_v1", 0.5, {"padding": "same", "activation": "relu"}, 8),
         ("mobilenet_v3_small", 1.0, {}, 0), ("mobilenet_v3_large", 1.0, {}, 4)]


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE], indirect=True)
@pytest.mark.parametrize("name,width,options,fused", CASES,
                         ids=[f"{n}-{w}-{'-'.join(o.values())}" for n, w, o, _ in CASES])
def test_blocked_features_compute_the_standard_operators_logits_and_gradients(mode, name, width, options, fused):
    """Inference logits before and after two training steps, every parameter's gradient and the losses, against the
    standard network (test_lowering's checks, here on the blocked layout)."""
    ms.set_seed(1)
    net = lower_for_cpu(create_model(name, class_num=10, width_mult=width, **options))
    assert type(net.features) is BlockedFeatures
    pairs = [cell for _, cell in net.cells_and_names() if isinstance(cell, BlockedPointwiseDepthwise)]
    assert len(pairs) == (fused if library.blocked_block() == 16 else len(pairs))
    assert_lowered_network_matches_standard_network(name, width_mult=width, **options)


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE], indirect=True)
@pytest.mark.parametrize("name,width,options,fused", CASES,
                         ids=[f"{n}-{w}-{'-'.join(o.values())}" for n, w, o, _ in CASES])
def test_the_features_in_one_op_compute_bitwise_what_their_ops_do_one_by_one(mode, name, width, options, fused):
    """In inference the blocked features run as one op (BlockedNetwork: the layers' ops called in sequence inside
    it, their outputs in buffers it keeps); its logits are bitwise those of the same ops launched one by one by
    MindSpore (`network = None`): at two image sizes (the buffers grow, then are reused for the smaller one) and
    after a training step (the op folds the changed weights again)."""
    one, each = twins(lambda: lower_for_cpu(create_model(name, class_num=10, width_mult=width, **options)))
    assert one.features.network is not None
    each.features.network = None
    step = [nn.TrainOneStepCell(nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True)),
                                nn.Momentum(net.trainable_params(), 0.1, 0.9)) for net in (one, each)]
    for train in (False, True):
        if train:
            for s in step:
                s.set_train(True)
                s(random_input(4, 3, 64, 64) * 3, ms.Tensor(np.arange(4, dtype=np.int32)))
        for size in (96, 64):
            for net in (one, each):
                net.set_train(False)
            x = random_input(3, 3, size, size, seed=size) * 3
            got, want = one(x).asnumpy(), each(x).asnumpy()
            assert np.abs(want).max() > 1e-3 and np.array_equal(got, want), (train, size, np.abs(got - want).max())


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE], indirect=True)
def test_the_network_op_s_workers_sleep_between_calls(mode):
    """The network op's threads wait for work spinning while a network runs and sleep once it has returned: a second
    of idleness after inference costs the process (almost) no CPU time."""
    net = lower_for_cpu(create_model("mobilenet_v3_small", class_num=10))
    net.set_train(False)
    x = random_input(2, 3, 64, 64)
    for _ in range(3):
        net(x).asnumpy()

    def cpu_seconds():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    start = cpu_seconds()
    time.sleep(1)
    assert cpu_seconds() - start < 0.2


def test_the_network_op_takes_only_its_own_library_s_ops_on_valid_slots():
    """A layer names an op of the blocked library and writes a slot other than the ones it reads; else the network
    is refused (and the features run op by op)."""
    lib = CDLL(library.blocked_library())
    lib.BlockedNetworkNew.restype = ctypes.c_int64
    network = ctypes.c_int64(lib.BlockedNetworkNew())
    assert lib.BlockedNetworkAdd(network, b"BlockedPointwiseReLU", 0, -1, 1, 2, 6, 1, 0) == 0
    for symbol in (b"printf", b"BlockedPointwiseReLUx", b"BlockedNetwork", b"BlockedPointwiseTrain",
                   b"BlockedSqueezeExciteGrad", b"OneDNNVersion"):
        assert lib.BlockedNetworkAdd(network, symbol, 1, -1, 2, 8, 6, 1, 0) == -1, symbol
    assert lib.BlockedNetworkAdd(network, b"BlockedPointwiseReLU", 1, -1, 1, 8, 6, 1, 0) == -1  # out == in
    assert lib.BlockedNetworkAdd(network, b"BlockedPointwiseResidual", 1, 2, 2, 8, 6, 1, 0) == -1  # out == residual
    assert lib.BlockedNetworkAdd(ctypes.c_int64(10 ** 6), b"BlockedPointwiseReLU", 0, -1, 1, 2, 6, 1, 0) == -1


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE], indirect=True)
def test_padding_channels_stay_zero_through_every_layer(mode):
    """MobileNetV3-small's 24, 40, 48, 72, 88 and 120 channels do not fill their last block: after each blocked
    cell the padding is exactly zero, in training and in inference (the next 1x1 convolution sums over it), and the
    region's output is the standard features'."""
    ms.set_seed(1)
    fast, standard = twins(lambda: create_model("mobilenet_v3_small", class_num=10))
    lower_for_cpu(fast)
    fast.set_train(False)
    standard.set_train(False)
    got = fast.features(random_input(2, 3, 64, 64) * 3).asnumpy()
    want = standard.features(random_input(2, 3, 64, 64) * 3).asnumpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    block = library.blocked_block()
    for training in (True, False):  # batch statistics (our BatchNorm op), then folded (oneDNN's post-ops)
        fast.set_train(training)
        x, padded = random_input(2, 3, 64, 64) * 3, 0
        for cell in fast.features.blocked.cell_list:
            x = cell(x)
            y = x.asnumpy()
            assert y.ndim == 5 and y.shape[4] == block
            channels = cell.out_channels
            flat = y.transpose(0, 1, 4, 2, 3).reshape(y.shape[0], -1, y.shape[2], y.shape[3])
            assert np.all(flat[:, channels:] == 0) and np.any(flat[:, :channels] != 0)
            padded += channels % block != 0
        assert padded >= 10


def to_blocked(x: np.ndarray, block: int) -> np.ndarray:
    """(N, C, H, W) -> (N, ceil(C / block), H, W, block), padding channels zero."""
    n, c, h, w = x.shape
    padded = np.zeros((n, -(-c // block) * block, h, w), x.dtype)
    padded[:, :c] = x
    return padded.reshape(n, -1, block, h, w).transpose(0, 1, 3, 4, 2)


def from_blocked(y: np.ndarray, channels: int) -> np.ndarray:
    """(N, Cb, H, W, B) -> (N, channels, H, W)."""
    n, cb, h, w, block = y.shape
    return y.transpose(0, 1, 4, 2, 3).reshape(n, cb * block, h, w)[:, :channels]


class WeightedSum(nn.Cell):
    """(net(x) * dy).sum(): its gradients are net's backward pass for the output gradient dy."""

    def __init__(self, net, dy):
        super().__init__()
        self.net, self.dy = net, dy

    def construct(self, x):
        return (self.net(x) * self.dy).sum()


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
def test_squeeze_excite_in_one_op_matches_the_standard_cell(mode):
    """The blocked squeeze-excite (one op: channel means, reduce + bias + ReLU, expand + bias, h-sigmoid gate,
    scaling; its gradient one op too) equals mobilenet_v3.SqueezeExcite on 20 channels (padding lanes in blocks of 8
    and 16, which stay zero), with weights large enough that the ReLU and both kinks of the gate are crossed:
    inference output, and in training the output, the input gradient and the four parameter gradients."""
    rng = np.random.default_rng(5)
    block = library.blocked_block()
    fast, standard = twins(lambda: mobilenet_v3.SqueezeExcite(20))
    for param, twin in zip(fast.get_parameters(), standard.get_parameters()):
        value = rng.normal(0, 0.6, param.shape).astype(np.float32)
        param.set_data(ms.Tensor(value))
        twin.set_data(ms.Tensor(value.copy()))
    x = (rng.standard_normal((3, 20, 7, 9)) + rng.normal(0, 3, (3, 20, 1, 1))).astype(np.float32)
    hidden = standard.reduce(standard.pool(ms.Tensor(x))).asnumpy()
    logits = standard.expand(standard.relu(ms.Tensor(hidden))).asnumpy()
    assert (hidden < 0).mean() > 0.1 and (hidden > 0).mean() > 0.1
    assert (logits < -3).mean() > 0.1 and (logits > 3).mean() > 0.1 and (np.abs(logits) < 3).mean() > 0.1
    blocked = BlockedSqueezeExcite(lowered(fast))
    dy = to_blocked(rng.standard_normal(x.shape).astype(np.float32), block)
    for training in (False, True):
        blocked.set_train(training)
        standard.set_train(training)
        got = [blocked(ms.Tensor(to_blocked(x, block))).asnumpy()]
        want = [to_blocked(standard(ms.Tensor(x)).asnumpy(), block)]
        assert np.all(from_blocked(got[0], 32)[:, 20:] == 0)
        if training:
            dx, dweights = ms.grad(WeightedSum(blocked, ms.Tensor(dy)), grad_position=0,
                                   weights=blocked.trainable_params())(ms.Tensor(to_blocked(x, block)))
            got += [dx.asnumpy()] + [g.asnumpy() for g in dweights]
            dx, dweights = ms.grad(WeightedSum(standard, ms.Tensor(from_blocked(dy, 20))), grad_position=0,
                                   weights=standard.trainable_params())(ms.Tensor(x))
            want += [to_blocked(dx.asnumpy(), block)] + [g.asnumpy() for g in dweights]
            assert [p.name for p in blocked.trainable_params()] == [p.name for p in standard.trainable_params()]
            assert np.all(from_blocked(got[1], 32)[:, 20:] == 0)
        assert len(got) == (6 if training else 1)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * np.abs(w).max())


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
@pytest.mark.parametrize("activation", ["relu", "relu6", "hswish"])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_and_activation_in_one_op_match_the_cells(mode, activation, bias):
    """A dense layer and its activation (MobileNetV3's head) as one oneDNN inner product with the bias and the
    activation fused equals the two cells in inference, for inputs that cross the activation's kinks; in training,
    and in inference on a 3-D input, the cells themselves run (bitwise theirs, with their gradients)."""
    cell = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.HSwish}[activation]
    fast, standard = twins(lambda: nn.SequentialCell([nn.Dense(37, 21, has_bias=bias), cell()]))
    rng = np.random.default_rng(3)
    for param, twin in zip(fast.get_parameters(), standard.get_parameters()):
        value = rng.normal(0, 0.5, param.shape).astype(np.float32)
        param.set_data(ms.Tensor(value))
        twin.set_data(ms.Tensor(value.copy()))
    fast = lowered(fast)
    assert type(fast[0]) is DenseAct and type(fast[1]) is nn.Identity
    assert (fast[0].in_channels, fast[0].out_channels, fast[0].has_bias) == (37, 21, bias)
    x = ms.Tensor(rng.normal(0, 2, (5, 37)).astype(np.float32))
    for net in (fast, standard):
        net.set_train(False)
    want = standard(x).asnumpy()
    assert (want == 0).mean() > 0.1 and (want > 0).mean() > 0.1
    if activation == "relu6":
        assert (want == 6).mean() > 0.05
    if activation == "hswish":
        assert ((want > -0.375) & (want < 0)).mean() > 0.05 and (want > 3).mean() > 0.05
    np.testing.assert_allclose(fast(x).asnumpy(), want, rtol=0, atol=1e-5 * np.abs(want).max())
    x3 = ms.Tensor(rng.normal(0, 2, (2, 3, 37)).astype(np.float32))
    assert np.array_equal(fast(x3).asnumpy(), standard(x3).asnumpy())
    for net in (fast, standard):
        net.set_train(True)
    dy = ms.Tensor(rng.standard_normal((5, 21)).astype(np.float32))
    got, want = [ms.grad(WeightedSum(net, dy), grad_position=0, weights=net.trainable_params())(x)
                 for net in (fast, standard)]
    assert np.array_equal(got[0].asnumpy(), want[0].asnumpy())
    assert all(np.array_equal(g.asnumpy(), w.asnumpy()) for g, w in zip(got[1], want[1]))


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE], indirect=True)
def test_without_onednn_the_network_keeps_nchw_with_one_warning(mode, monkeypatch, caplog):
    monkeypatch.setattr(library, "onednn_paths", lambda: None)
    monkeypatch.setattr(library, "_library", {"path": library.kernel_library()})
    net, standard = twins(lambda: create_model("mobilenet_v1", 10, 0.25))
    with caplog.at_level(logging.WARNING, logger=library.__name__):
        lower_for_cpu(net)
        lower_for_cpu(create_model("mobilenet_v1", 10, 0.25))
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and "blocked-layout CPU kernels unavailable, the network keeps NCHW" in messages[0]
    assert type(net.features) is nn.SequentialCell
    net.set_train(False)
    standard.set_train(False)
    x = random_input(2, 3, 32, 32)
    np.testing.assert_allclose(net(x).asnumpy(), standard(x).asnumpy(), rtol=0, atol=1e-5)
