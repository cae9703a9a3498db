"""The networks are exactly the papers' models, built from MindSpore's standard cells: parameter counts, MACs, shapes,
gradients, init; and the backbone API (forward_features / forward_head, feature_info, features_only)."""
import os

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
import onnxruntime
import pytest
from mindspore.onnx import export as export_onnx

from src.errors import UserError
from src.models import count_macs, count_params, create_model
from src.models import layers
from src.kernels.lowering import lower_for_cpu
from src.models.layers import Dropout, FeatureMaps, GlobalAvgPool, HSigmoid, HSwish
from src.models.mobilenet_v1 import MobileNetV1
from src.models.mobilenet_v3 import InvertedResidual, MobileNetV3, SqueezeExcite

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


# ---- model options for other sources' weights (their logits: tests/test_convert.py) ----

def _padding_of(net):
    """(kernel, stride, group > 1, pad_mode) of every convolution with a kernel larger than 1."""
    return [(c.kernel_size[0], c.stride[0], c.group > 1, c.pad_mode) for _, c in net.cells_and_names()
            if isinstance(c, nn.Conv2d) and c.kernel_size[0] > 1]


@pytest.mark.parametrize("name", NAMES)
def test_same_padding_is_mindspores_same_at_stride_2_and_symmetric_where_it_is_the_same(name):
    """"same" pads TF-style every strided convolution ("same_depthwise": the depthwise ones only); at stride 1 TF's
    "same" is the symmetric k // 2, kept as pad_mode "pad" (so the CPU kernels still take those layers)."""
    for padding, stem in (("same", "same"), ("same_depthwise", "pad")):
        convs = _padding_of(create_model(name, 10, padding=padding))
        assert convs[0][:3] == (3, 2, False) and convs[0][3] == stem
        assert all(mode == ("same" if stride == 2 else "pad") for _, stride, depthwise, mode in convs[1:])
        assert all(depthwise for _, stride, depthwise, _ in convs[1:] if stride == 2)
    assert {mode for *_, mode in _padding_of(create_model(name, 10))} == {"pad"}


def test_same_padding_pads_the_bottom_and_right_at_stride_2():
    """At stride 2 on an even size "same" pads k // 2 - 1 rows and columns before and k // 2 after (the 3x3 stem: none
    at the top and left, one at the bottom and right), checked against the convolution written out in numpy."""
    net = create_model("mobilenet_v1", 10, 0.25, padding="same")
    net.set_train(False)
    stem = net.features[0][0]
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    weight = stem.weight.asnumpy()
    padded = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))
    expected = np.zeros((1, 8, 8, 8), np.float32)
    for i in range(8):
        for j in range(8):
            expected[0, :, i, j] = np.tensordot(weight, padded[0, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3], 3)
    np.testing.assert_allclose(stem(ms.Tensor(x)).asnumpy(), expected, rtol=1e-5, atol=1e-5)


def test_mobilenet_v1_activation_and_v3_head_options():
    assert all(isinstance(c[-1], nn.ReLU) for c in create_model("mobilenet_v1", 10, activation="relu").features)
    zoo_small = create_model("mobilenet_v3_small", 1000, head_width=1280, head_bias=False)
    assert (zoo_small.head[0].out_channels, zoo_small.head[0].has_bias, zoo_small.classifier.in_channels) == (
        1280, False, 1280)
    assert count_params(zoo_small) == 2_542_856 + 576 * 256 - 1024 + 1000 * 256  # 1280 wide, no head bias


def test_options_of_the_other_family_are_refused():
    with pytest.raises(UserError, match="activation relu: the option is MobileNetV1's"):
        create_model("mobilenet_v3_small", activation="relu")
    with pytest.raises(UserError, match="mobilenet_v1 takes activation relu6 or relu and has no head layer"):
        create_model("mobilenet_v1", head_width=1280)
    with pytest.raises(UserError, match="padding 'valid' is not one of symmetric, same, same_depthwise"):
        create_model("mobilenet_v1", padding="valid")


def test_same_padding_exports_to_onnx(tmp_path):
    """ONNX Runtime computes MindSpore's "same" padding the same (weights that pass the input on, see the pretrained
    fixtures)."""
    from tests.fixtures.make_pretrained_fixtures import synthetic_weights  # pylint: disable=import-outside-toplevel
    net = create_model("mobilenet_v3_small", 10, padding="same")
    weights = synthetic_weights([[p.name, list(p.shape), "float32"] for p in net.get_parameters()
                                 if not p.name.endswith("calls")])
    ms.load_param_into_net(net, {key: ms.Parameter(ms.Tensor(value), key) for key, value in weights.items()})
    net.set_train(False)
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)
    path = str(tmp_path / "net")
    export_onnx(net, ms.Tensor(x), file_name=path, input_names=["image"], output_names=["logits"])
    got = onnxruntime.InferenceSession(path + ".onnx", providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    want = net(ms.Tensor(x)).asnumpy()
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


# Cells a network may hold: MindSpore's standard cells and our standard-operator ones, nothing else (no custom op).
STANDARD_CELLS = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Dense, nn.SequentialCell, nn.Identity, HSwish,
                  HSigmoid, GlobalAvgPool, Dropout, SqueezeExcite, InvertedResidual, MobileNetV1, MobileNetV3)


@pytest.mark.parametrize("name", NAMES)
def test_networks_hold_only_standard_cells(name):
    for _, cell in create_model(name, 10).cells_and_names():
        assert type(cell) in STANDARD_CELLS, type(cell)
        assert not any(isinstance(value, ops.Custom) for value in vars(cell).values())


# ---- backbone API ----

# (channels, reduction, module) of each stage: timm's feature_info for mobilenetv1_100 and the MobileNetV3s
# (channels 64/128/256/512/1024; 16/16/24/48/576; 16/24/40/112/960), the modules counted by hand in the tables.
STAGES = {
    ("mobilenet_v1", 1.0): [(64, 2, 2), (128, 4, 6), (256, 8, 10), (512, 16, 22), (1024, 32, 26)],
    ("mobilenet_v1", 0.25): [(16, 2, 2), (32, 4, 6), (64, 8, 10), (128, 16, 22), (256, 32, 26)],
    ("mobilenet_v3_small", 1.0): [(16, 2, 0), (16, 4, 1), (24, 8, 3), (48, 16, 8), (576, 32, 12)],
    ("mobilenet_v3_large", 1.0): [(16, 2, 1), (24, 4, 3), (40, 8, 6), (112, 16, 12), (960, 32, 16)],
}


@pytest.mark.parametrize("name,width", sorted(STAGES))
def test_feature_info_and_feature_maps(name, width):
    net = create_model(name, 10, width)
    assert [(s["num_chs"], s["reduction"], s["module"]) for s in net.feature_info] == [
        (chs, reduction, f"features.{index}") for chs, reduction, index in STAGES[name, width]]
    backbone = create_model(name, 10, width, features_only=True)
    backbone.set_train(False)
    maps = backbone(ms.Tensor(np.zeros((1, 3, 64, 96), np.float32)))
    assert [m.shape for m in maps] == [(1, chs, 64 // reduction, 96 // reduction)
                                       for chs, reduction, _ in STAGES[name, width]]


@pytest.mark.parametrize("name,pre_logits", [("mobilenet_v1", 1024), ("mobilenet_v3_small", 1024),
                                             ("mobilenet_v3_large", 1280)])
def test_head_of_features_is_the_network(name, pre_logits):
    net = create_model(name, 10)
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    features = net.forward_features(x)
    assert features.shape == (2, net.feature_info[-1]["num_chs"], 2, 2)
    np.testing.assert_array_equal(net.forward_head(features).asnumpy(), net(x).asnumpy())
    assert net.forward_head(features, pre_logits=True).shape == (2, pre_logits)


def test_features_only_selects_stages_loads_classifier_weights_and_lowers():
    """out_indices picks stages (the backbone stops at the last one); the parameters keep the classifier's names, so
    its checkpoint loads; the lowered backbone gives the standard one's maps."""
    net = create_model("mobilenet_v3_small", 10, 0.75)
    backbone = create_model("mobilenet_v3_small", 10, 0.75, features_only=True, out_indices=(1, 3))
    assert [s["reduction"] for s in backbone.feature_info] == [4, 16]
    assert len(backbone.features) == net.feature_info[3]["index"] + 1
    params = {p.name: p for p in net.get_parameters()}
    assert all(p.name in params and p.shape == params[p.name].shape for p in backbone.get_parameters())
    ms.load_param_into_net(backbone, params)
    fast = create_model("mobilenet_v3_small", 10, 0.75, features_only=True, out_indices=(1, 3))
    ms.load_param_into_net(fast, params)
    lower_for_cpu(fast)
    x = ms.Tensor(np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32))
    for model in (net, backbone, fast):
        model.set_train(False)
    maps, fast_maps = backbone(x), fast(x)
    np.testing.assert_array_equal(maps[1].asnumpy(), net.features[:net.feature_info[3]["index"] + 1](x).asnumpy())
    for want, got in zip(maps, fast_maps):
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-5, atol=1e-5 * np.abs(want.asnumpy()).max())
    with pytest.raises(ValueError, match="out_indices"):
        FeatureMaps(net, (5,))


@pytest.mark.parametrize("file_format", ["MINDIR", "ONNX"])
def test_features_only_exports_one_output_per_stage(file_format, tmp_path):
    backbone = create_model("mobilenet_v1", 10, 0.25, features_only=True, out_indices=(2, 3, 4))
    backbone.set_train(False)
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)
    want = [m.asnumpy() for m in backbone(ms.Tensor(x))]
    path = str(tmp_path / "backbone")
    if file_format == "ONNX":
        export_onnx(backbone, ms.Tensor(x), file_name=path, input_names=["image"],
                    output_names=["stage2", "stage3", "stage4"])
        got = onnxruntime.InferenceSession(path + ".onnx", providers=["CPUExecutionProvider"]).run(None, {"image": x})
    else:
        ms.export(backbone, ms.Tensor(x), file_name=path, file_format="MINDIR")
        got = [m.asnumpy() for m in nn.GraphCell(ms.load(path + ".mindir"))(ms.Tensor(x))]
    assert os.path.isfile(path + "." + file_format.lower())
    assert [g.shape for g in got] == [(1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max())
