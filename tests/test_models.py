"""The networks are exactly the papers' models: parameter counts, MACs, shapes, gradients, init."""
import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest

from src.errors import UserError
from src.models import count_macs, count_params, create_model
from src.models import layers
from src.models.layers import Dropout, HSwish, use_portable_ops
from src.models.mobilenet_v3 import InvertedResidual, SqueezeExcite

# DESIGN.md section 3: trainable parameters (1000 classes) and MACs at 224x224
REFERENCE = [
    ("mobilenet_v1", 0.25, 470_072, 41.0e6),
    ("mobilenet_v1", 0.5, 1_331_592, 149.5e6),
    ("mobilenet_v1", 0.75, 2_585_560, 325.4e6),
    ("mobilenet_v1", 1.0, 4_231_976, 568.7e6),
    ("mobilenet_v3_small", 0.75, 2_041_872, 43.4e6),
    ("mobilenet_v3_small", 1.0, 2_542_856, 56.5e6),
    ("mobilenet_v3_large", 0.75, 3_993_528, 154.6e6),
    ("mobilenet_v3_large", 1.0, 5_483_032, 216.6e6),
]
NAMES = ["mobilenet_v1", "mobilenet_v3_small", "mobilenet_v3_large"]


@pytest.fixture(autouse=True)
def pynative():
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=previous)


@pytest.mark.parametrize("name,width,params,macs", REFERENCE)
def test_parameter_count_and_macs_match_reference(name, width, params, macs):
    net = create_model(name, class_num=1000, width_mult=width)
    assert count_params(net) == params
    assert abs(count_macs(net, 224) - macs) < 0.1e6


def test_macs_scale_with_input_size():
    net = create_model("mobilenet_v1", class_num=1000, width_mult=1.0)
    head = 1024 * 1000  # the dense head does not depend on the input size
    assert count_macs(net, 448) - head == 4 * (count_macs(net, 224) - head)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [224, 32])
@pytest.mark.parametrize("train", [True, False])
def test_forward_shapes(name, size, train):
    net = create_model(name, class_num=7)
    net.set_train(train)
    out = net(ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)))
    assert out.shape == (2, 7)
    assert np.isfinite(out.asnumpy()).all()


def test_non_square_and_odd_sizes():
    net = create_model("mobilenet_v3_small", class_num=3, width_mult=0.75)
    net.set_train(False)
    assert net(ms.Tensor(np.zeros((1, 3, 45, 61), np.float32))).shape == (1, 3)


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_gradient_and_loss_decreases(name):
    ms.set_seed(0)
    net = create_model(name, class_num=4, dropout=0.0)
    net.set_train(True)
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    params = net.trainable_params()
    grad_fn = ms.value_and_grad(lambda x, y: loss_fn(net(x), y), None, params)
    rng = np.random.default_rng(1)
    images = ms.Tensor(rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    labels = ms.Tensor(np.array([0, 1, 2, 3] * 2, np.int32))
    loss, grads = grad_fn(images, labels)
    zero = [p.name for p, g in zip(params, grads) if not np.any(g.asnumpy())]
    assert not zero, f"parameters without gradient: {zero}"
    optimizer = nn.Momentum(params, learning_rate=0.05, momentum=0.9)
    losses = [float(loss.asnumpy())]
    for _ in range(8):
        loss, grads = grad_fn(images, labels)
        optimizer(grads)
        losses.append(float(loss.asnumpy()))
    assert losses[-1] < losses[0] * 0.8, losses


def test_v3_structure_follows_the_paper():
    small = create_model("mobilenet_v3_small", class_num=1000, width_mult=0.75)
    blocks = [c for _, c in small.cells_and_names() if isinstance(c, InvertedResidual)]
    assert len(blocks) == 11
    # second block: expansion from the scaled input (16 * 72/16), not 72 * 0.75 = 54 -> 56
    assert blocks[1].block[0][0].out_channels == 72
    ses = [c for _, c in small.cells_and_names() if isinstance(c, SqueezeExcite)]
    assert all(se.reduce.has_bias and se.expand.has_bias for se in ses)
    dense_head, act = small.head[0], small.head[1]
    assert (dense_head.in_channels, dense_head.out_channels, dense_head.has_bias) == (432, 1024, True)
    assert isinstance(act, HSwish)
    assert small.classifier.in_channels == 1024
    assert isinstance(small.dropout, Dropout) and small.dropout.p == pytest.approx(0.2)
    large = create_model("mobilenet_v3_large", class_num=1000)
    assert (large.head[0].in_channels, large.head[0].out_channels) == (960, 1280)
    bns = [c for _, c in large.cells_and_names() if isinstance(c, nn.BatchNorm2d)]
    # MindSpore keeps 1 - momentum internally: momentum 0.99 is stored as 0.01
    assert all(abs(bn.momentum - 0.01) < 1e-6 and abs(bn.eps - 1e-3) < 1e-9 for bn in bns)


def test_v1_structure():
    net = create_model("mobilenet_v1", class_num=10, width_mult=0.25)
    convs = [c for _, c in net.cells_and_names() if isinstance(c, nn.Conv2d)]
    assert len(convs) == 27  # stem + 13 x (depthwise + pointwise)
    assert [c.out_channels for c in convs[:3]] == [8, 8, 16]  # max(int(32 * 0.25), 8) = 8
    assert convs[1].group == 8 and not any(c.has_bias for c in convs)
    assert all(isinstance(c[-1], nn.ReLU6) for c in net.features)


@pytest.mark.parametrize("name", NAMES)
def test_weight_init(name):
    ms.set_seed(3)
    net = create_model(name, class_num=1000)
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d):
            assert np.all(cell.gamma.asnumpy() == 1) and np.all(cell.beta.asnumpy() == 0)
        if isinstance(cell, (nn.Dense, nn.Conv2d)) and cell.has_bias:
            assert np.all(cell.bias.asnumpy() == 0)
    last_dense = net.classifier.weight.asnumpy()
    if name == "mobilenet_v1":
        assert last_dense.std() == pytest.approx(0.02 * 0.88, rel=0.05)  # normal(0.02) truncated at 2 sigma
        assert np.abs(last_dense).max() <= 0.04 + 1e-6
        stem = net.features[0][0].weight.asnumpy()
        limit = np.sqrt(6.0 / (3 * 9 + 32 * 9))  # Xavier-uniform bound
        assert np.abs(stem).max() <= limit and stem.std() == pytest.approx(limit / np.sqrt(3), rel=0.15)
    else:
        assert last_dense.std() == pytest.approx(0.01, rel=0.05)
        pointwise = net.features[-1][0].weight.asnumpy()  # He-normal, fan_out = out channels * 1 * 1
        assert pointwise.std() == pytest.approx(np.sqrt(2.0 / pointwise.shape[0]), rel=0.05)


def test_unknown_model_and_width_list_valid_ones():
    with pytest.raises(UserError, match="unknown model 'mobilenet_v2'; valid models: mobilenet_v1, "
                                        "mobilenet_v3_small, mobilenet_v3_large"):
        create_model("mobilenet_v2")
    with pytest.raises(UserError, match="width_mult 0.5 is not available for mobilenet_v3_small; "
                                        "valid widths: 0.75, 1"):
        create_model("mobilenet_v3_small", width_mult=0.5)


def test_dropout_is_reproducible_and_drops_the_right_share():
    drop = Dropout(0.2, seed=5)
    drop.set_train(True)
    x = ms.Tensor(np.ones((64, 1024), np.float32))
    first, second = drop(x).asnumpy(), drop(x).asnumpy()
    assert int(drop.calls.asnumpy()) == 2
    assert abs((first == 0).mean() - 0.2) < 0.01 and np.allclose(first[first != 0], 1 / 0.8)
    assert 0.6 < (first == second).mean() < 0.76  # independent masks per call (0.8^2 + 0.2^2 = 0.68)
    again = Dropout(0.2, seed=5)
    again.set_train(True)
    assert np.array_equal(again(x).asnumpy(), first)  # same seed and call count: same mask
    drop.set_train(False)
    assert np.array_equal(drop(x).asnumpy(), x.asnumpy())


def test_each_rank_drops_its_own_units(monkeypatch):
    """Dropout is seeded with the global seed plus the rank: ranks drop different units, a rank the same ones again."""
    x = ms.Tensor(np.ones((64, 1024), np.float32))
    masks = []
    for rank in (0, 1, 1):
        monkeypatch.setattr(layers, "rank_and_size", lambda rank=rank: (rank, 2))
        ms.set_seed(3)
        drop = layers.make_dropout(0.2)
        drop.set_train(True)
        masks.append(drop(x).asnumpy() != 0)
    assert np.array_equal(masks[1], masks[2])
    assert 0.6 < (masks[0] == masks[1]).mean() < 0.76  # independent (0.8^2 + 0.2^2 = 0.68)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v3_small", "mobilenet_v3_large"])
def test_fast_ops_match_portable_form(name):
    """The speed-ups (fused h-swish / h-sigmoid, pooling as avg_pool2d, depthwise kernel, stem as unfold + 1x1,
    BatchNorm folded into the convolution with one bias + activation pass in inference) leave logits and the
    training loss sequence unchanged."""
    ms.set_seed(5)
    fused = create_model(name, class_num=10, dropout=0.0)
    primitive = use_portable_ops(create_model(name, class_num=10, dropout=0.0))
    initial = {p.name: p.clone() for p in fused.get_parameters()}
    rng = np.random.default_rng(7)
    for param in fused.get_parameters():  # BatchNorm statistics and affine of a trained net: folding is exercised
        if param.name.endswith(("moving_mean", "beta")):
            param.set_data(ms.Tensor(rng.normal(0, 0.3, param.shape).astype(np.float32)))
        elif param.name.endswith(("moving_variance", "gamma")):
            param.set_data(ms.Tensor(rng.uniform(0.5, 1.5, param.shape).astype(np.float32)))
    ms.load_param_into_net(primitive, {p.name: p.clone() for p in fused.get_parameters()})
    images = ms.Tensor(np.random.default_rng(2).standard_normal((4, 3, 64, 64)).astype(np.float32) * 3)
    labels = ms.Tensor(np.array([1, 3, 5, 7], np.int32))
    for net in (fused, primitive):
        net.set_train(False)
    assert np.abs(fused(images).asnumpy() - primitive(images).asnumpy()).max() < 1e-5
    for net in (fused, primitive):  # training from the initialisation, as a run starts
        ms.load_param_into_net(net, {name: p.clone() for name, p in initial.items()})
    sequences = []
    for net in (fused, primitive):
        net.set_train(True)
        if name == "mobilenet_v1":
            # V1 with batch statistics of 4 images is chaotic: a 1e-7 relative change of the input alone moves
            # the second loss by ~1e-2 (measured), so its sequence is compared with BN on moving statistics.
            for _, cell in net.cells_and_names():
                if isinstance(cell, nn.BatchNorm2d):
                    cell.use_batch_statistics = False
        loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        lr = 0.3 if name == "mobilenet_v1" else 0.05
        step = nn.TrainOneStepCell(nn.WithLossCell(net, loss_fn), nn.Momentum(net.trainable_params(), lr, 0.9))
        sequences.append([float(step(images, labels).asnumpy()) for _ in range(4)])
    assert np.allclose(sequences[0], sequences[1], rtol=0, atol=1e-5), sequences
    assert sequences[0][-1] < sequences[0][0] - 0.05, sequences  # it trained
