"""Label-smoothing loss against a hand computation; weight-decay groups and one optimizer step."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.errors import UserError
from src.loss import CrossEntropySmooth
from src.optimizer import ExactRMSProp, create_optimizer, decay_groups

LOGITS = np.array([[2.0, 1.0, 0.1, -1.0],
                   [0.5, 0.5, 0.5, 0.5],
                   [-2.0, 3.0, 0.0, 1.0]], dtype=np.float32)
LABELS = np.array([0, 3, 1], dtype=np.int32)


def smoothed_cross_entropy(logits, labels, smooth):
    """Per-sample loss, zoo convention: on = 1 - eps, off = eps / (K - 1)."""
    num_classes = logits.shape[1]
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    target = np.full(logits.shape, smooth / (num_classes - 1))
    target[np.arange(len(labels)), labels] = 1.0 - smooth
    return -(target * log_softmax).sum(axis=1)


@pytest.mark.parametrize("smooth", [0.0, 0.1])
@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"], indirect=True)
def test_smoothed_loss_matches_hand_computation(mode, smooth):
    loss_fn = CrossEntropySmooth(class_num=4, smooth_factor=smooth)
    loss = loss_fn(ms.Tensor(LOGITS), ms.Tensor(LABELS)).asnumpy()
    assert loss.shape == ()
    assert loss == pytest.approx(smoothed_cross_entropy(LOGITS, LABELS, smooth).mean(), rel=1e-6)


def test_zero_smoothing_is_plain_cross_entropy():
    expected = -np.log(np.exp(LOGITS[[0, 1, 2], LABELS]) / np.exp(LOGITS).sum(axis=1))
    loss = CrossEntropySmooth(4, reduction="none")(ms.Tensor(LOGITS), ms.Tensor(LABELS)).asnumpy()
    assert loss == pytest.approx(expected, rel=1e-6)
    assert loss[1] == pytest.approx(np.log(4.0))


def test_sum_reduction_and_float16_logits():
    expected = smoothed_cross_entropy(LOGITS, LABELS, 0.1).sum()
    loss = CrossEntropySmooth(4, 0.1, reduction="sum")(ms.Tensor(LOGITS, ms.float16), ms.Tensor(LABELS))
    assert loss.dtype == ms.float32
    assert loss.asnumpy() == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("kwargs, key", [(dict(class_num=1), "class_num"),
                                         (dict(class_num=4, smooth_factor=-0.1), "smooth_factor")])
def test_loss_rejects_bad_values(kwargs, key):
    with pytest.raises(UserError, match=f"^{key}: "):
        CrossEntropySmooth(**kwargs)


class SubclassedConv(nn.Conv2d):
    """A Conv2d subclass (as a custom depthwise kernel would be): its weight still decays."""


class TinyNet(nn.Cell):
    """Conv (no bias) -> BN -> conv subclass (bias) -> dense (bias); `beta_head` traps name filters."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, has_bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv_bias = SubclassedConv(4, 4, 3, has_bias=True)
        self.flatten = nn.Flatten()
        self.beta_head = nn.Dense(4 * 6 * 6, 3, has_bias=True)

    def construct(self, x):
        return self.beta_head(self.flatten(self.conv_bias(self.bn(self.conv(x)))))


DECAY_NAMES = ["conv.weight", "conv_bias.weight", "beta_head.weight"]
NO_DECAY_NAMES = ["bn.gamma", "bn.beta", "conv_bias.bias", "beta_head.bias"]


def names(params):
    return [p.name for p in params]


def test_decay_groups_are_conv_and_dense_weights_exactly():
    net = TinyNet()
    decay, no_decay = decay_groups(net)
    assert names(decay) == DECAY_NAMES
    assert names(no_decay) == NO_DECAY_NAMES
    assert sorted(names(decay) + names(no_decay)) == sorted(names(net.trainable_params()))


def test_frozen_parameters_are_in_no_group():
    net = TinyNet()
    net.conv.weight.requires_grad = False
    net.bn.gamma.requires_grad = False
    decay, no_decay = decay_groups(net)
    assert names(decay) == ["conv_bias.weight", "beta_head.weight"]
    assert names(no_decay) == ["bn.beta", "conv_bias.bias", "beta_head.bias"]


@pytest.mark.parametrize("optimizer", ["momentum", "rmsprop"])
def test_optimizer_decay_flags_follow_parameter_order(optimizer):
    net = TinyNet()
    opt = create_optimizer(net, 0.1, optimizer=optimizer, weight_decay=1e-4)
    assert names(opt.parameters) == names(net.trainable_params())
    flags = dict(zip(names(opt.parameters), opt.decay_flags))
    assert flags == {**{n: True for n in DECAY_NAMES}, **{n: False for n in NO_DECAY_NAMES}}


def test_unknown_optimizer_names_key():
    with pytest.raises(UserError, match=r"^optimizer: got 'adam'.*momentum, rmsprop"):
        create_optimizer(TinyNet(), 0.1, optimizer="adam")


def expected_update(optimizer, grad, lr, rmsprop_decay, epsilon):
    """First update from fresh state: Momentum lr*g; RMSProp with its mean square initialised to 1."""
    if optimizer == "momentum":
        return lr * grad
    return lr * grad / np.sqrt(rmsprop_decay + (1 - rmsprop_decay) * grad ** 2 + epsilon)


@pytest.mark.parametrize("optimizer", ["momentum", "rmsprop"])
@pytest.mark.parametrize("lr_kind", ["float", "numpy", "tensor"])
def test_one_step_applies_decay_only_to_conv_and_dense_weights(optimizer, lr_kind):
    ms.set_seed(0)
    lr, wd, loss_scale = 0.1, 0.5, 8.0
    schedule = np.array([lr, lr / 2, lr / 4], dtype=np.float32)
    learning_rate = {"float": lr, "numpy": schedule, "tensor": ms.Tensor(schedule)}[lr_kind]
    net = TinyNet()
    net.set_train(True)
    opt = create_optimizer(net, learning_rate, optimizer=optimizer, momentum=0.9, weight_decay=wd,
                           loss_scale=loss_scale, rmsprop_decay=0.9, rmsprop_epsilon=1e-3)
    loss_fn = CrossEntropySmooth(3, 0.1)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32))
    y = ms.Tensor(np.array([0, 2], dtype=np.int32))
    grads = ms.grad(lambda a, b: loss_fn(net(a), b) * loss_scale, grad_position=None, weights=opt.parameters)(x, y)
    before = {p.name: p.asnumpy().copy() for p in opt.parameters}
    opt(grads)
    # ExactRMSProp replaces MindSpore's CPU ApplyRMSProp, whose vectorised path had ~5e-4 relative error
    rtol = 1e-5
    for param, grad in zip(opt.parameters, grads):
        weight = before[param.name]
        grad = grad.asnumpy() / loss_scale + (wd * weight if param.name in DECAY_NAMES else 0.0)
        expected = expected_update(optimizer, grad, lr, 0.9, 1e-3)
        np.testing.assert_allclose(weight - param.asnumpy(), expected, rtol=rtol, atol=1e-7, err_msg=param.name)
        assert np.abs(weight - param.asnumpy()).max() > 1e-4, param.name


def rmsprop_run(optimizer_class, steps=10):
    rng = np.random.default_rng(1)
    weight = ms.Parameter(ms.Tensor(np.ones((64, 96, 5, 5), np.float32)), name="w")
    opt = optimizer_class([weight], 0.05, decay=0.9, momentum=0.9, epsilon=1e-3)
    for _ in range(steps):
        opt((ms.Tensor(rng.standard_normal((64, 96, 5, 5)).astype(np.float32)),))
    return weight.asnumpy()


def test_rmsprop_is_reproducible_and_exact():
    """Repeated RMSProp runs give bitwise identical weights that match the formula (MindSpore's CPU kernel
    splits large tensors across threads with an approximate vector path; its results vary between runs)."""
    results = [rmsprop_run(ExactRMSProp) for _ in range(4)]
    assert all(np.array_equal(results[0], other) for other in results[1:])
    rng = np.random.default_rng(1)
    weight, mean_square, moment = np.ones((64, 96, 5, 5), np.float32), 1.0, 0.0
    for _ in range(10):
        grad = rng.standard_normal((64, 96, 5, 5)).astype(np.float32)
        mean_square = 0.9 * mean_square + 0.1 * grad * grad
        moment = 0.9 * moment + 0.05 * grad / np.sqrt(mean_square + 1e-3)
        weight = weight - moment
    np.testing.assert_allclose(results[0], weight, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer,warmup", [("rmsprop", True), ("momentum", False)])
def test_ema_is_the_closed_form_average_of_the_recorded_weights(optimizer, warmup):
    """After each of 6 steps (graph mode, a real network with BatchNorm) the optimizer's `ema.<name>` equal
    d_n * ema + (1 - d_n) * w_n over the weights and BN statistics recorded after step n, from ema_0 = w_0; with warm-up
    d_n = min(0.9, (1 + n) / (10 + n)).  `ema_applied` swaps them in and back."""
    ms.set_context(mode=ms.GRAPH_MODE)
    from src.models import create_model  # pylint: disable=import-outside-toplevel
    from src.optimizer import averaged_parameters, ema_applied  # pylint: disable=import-outside-toplevel
    net = create_model("mobilenet_v1", 10, 0.25)
    opt = create_optimizer(net, np.full(6, 0.05, np.float32), optimizer, weight_decay=1e-4, ema_decay=0.9,
                           ema_warmup=warmup)
    assert [p.name for p in opt.ema.averages] == ["ema." + p.name for p in averaged_parameters(net)]
    assert any(p.name.endswith("moving_mean") for p in averaged_parameters(net))
    step = nn.TrainOneStepCell(nn.WithLossCell(net, CrossEntropySmooth(10)), opt)
    rng = np.random.default_rng(0)
    expected = {p.name: p.asnumpy().astype(np.float64) for p in averaged_parameters(net)}
    for n in range(1, 7):
        step(ms.Tensor(rng.standard_normal((8, 3, 32, 32)).astype(np.float32)),
             ms.Tensor(rng.integers(0, 10, 8).astype(np.int32)))
        decay = min(0.9, (1 + n) / (10 + n)) if warmup else 0.9
        for param in averaged_parameters(net):
            expected[param.name] = decay * expected[param.name] + (1 - decay) * param.asnumpy()
    for average in opt.ema.averages:
        np.testing.assert_allclose(average.asnumpy(), expected[average.name[4:]], rtol=1e-5, atol=1e-6)
    trained = {p.name: p.asnumpy() for p in net.get_parameters()}
    with ema_applied(opt):
        assert all(np.array_equal(p.asnumpy(), opt.ema.averages[i].asnumpy())
                   for i, p in enumerate(averaged_parameters(net)))
    assert all(np.array_equal(p.asnumpy(), trained[p.name]) for p in net.get_parameters())


def test_momentum_keeps_the_same_ema():
    from src.models import create_model  # pylint: disable=import-outside-toplevel
    from src.optimizer import EMAMomentum, averaged_parameters  # pylint: disable=import-outside-toplevel
    net = create_model("mobilenet_v1", 10, 0.25)
    opt = create_optimizer(net, 0.1, "momentum", ema_decay=0.99)
    assert isinstance(opt, EMAMomentum) and not opt.ema.warmup and opt.ema.decay == 0.99
    assert [p.name for p in opt.ema.averages] == ["ema." + p.name for p in averaged_parameters(net)]
    assert not any(p.requires_grad for p in opt.ema.averages)
    stem = averaged_parameters(net)[0]
    stem.set_data(ms.Tensor(stem.asnumpy() + 1.0))  # e.g. weights loaded from a checkpoint without an EMA
    assert not np.array_equal(opt.ema.averages[0].asnumpy(), stem.asnumpy())
    opt.ema.restart()
    assert all(np.array_equal(a.asnumpy(), p.asnumpy()) for a, p in zip(opt.ema.averages, averaged_parameters(net)))
