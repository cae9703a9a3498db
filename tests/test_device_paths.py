"""What GPU and Ascend runs do that CPU runs never show, reproduced on CPU by driving the same MindSpore mechanism
(each test names the MindSpore 2.10 source it mirrors, under site-packages/mindspore/): mixed precision, loss
scale, data sink and its callbacks, resume and evaluation with sink, AIR export, dropout's operators; and a dry run
of train.py / eval.py for every shipped config on GPU and Ascend (everything decided before the first step)."""
import json
import os
import re
import signal

import mindspore as ms
import mindspore.dataset as ds
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
import pytest
from mindspore import context
from mindspore.amp import FixedLossScaleManager, auto_mixed_precision, build_train_network
from mindspore.train import Model, amp
from mindspore.train import model as model_module
from mindspore.train.dataset_helper import _DatasetIter

import eval as eval_script
import train as train_script
from src import callbacks as callbacks_module
from src.callbacks import CheckpointSaver, EvalMonitor, Progress, StopOnSignal, TrainMonitor
from src.errors import UserError
from src.loss import CrossEntropySmooth, LossRecorder
from src.model_utils.config import ROOT_DIR, get_config
from src.model_utils.device import set_seed
from src.models import create_model
from src.models.layers import HASH_LEVELS, HASH_MULTIPLIERS, HASH_SHIFTS, Dropout
from src.training import (CountingDynamicLossScaleManager, CountingLossScaleUpdateCell, DataSink, build_model,
                          data_sink, optimizer_steps, precision_settings, train_arguments)

SHIPPED_CONFIGS = ("default_config.yaml", "default_config_imagenet.yaml", "default_config_gpu_imagenet.yaml",
                   "mobilenetv3_config.yaml")


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    """`StopOnSignal` installs SIGTERM / SIGINT handlers: put pytest's back."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def config_for(overrides=None, config_file="demo_config.yaml"):
    return get_config([], config_path=os.path.join(ROOT_DIR, config_file), overrides=overrides or {})


def custom_ops(net):
    """Names of the cells of `net` that hold a C++ kernel (`ops.Custom`)."""
    return [name for name, cell in net.cells_and_names() if any(isinstance(v, ops.Custom) for v in vars(cell).values())]


def images(batch=2, size=32, seed=0):
    return ms.Tensor(np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32))


# ---- 1. amp O2 rewrites the network in place; evaluation afterwards ----

@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
def test_o2_network_trains_and_evaluates(mode):
    """`build_train_network(level="O2")` (mindspore/train/amp.py: `_do_keep_batchnorm_fp32`, lines 562-576, wraps
    every BatchNorm of a SequentialCell in `_OutputTo16` and rebuilds `cell_list`) on the network: a training step,
    then inference equals the float32 network with the same weights to float16 precision, and checkpoint names are
    unchanged."""
    set_seed(1)
    net = create_model("mobilenet_v3_small", 10, 0.75)
    reference = create_model("mobilenet_v3_small", 10, 0.75)
    names = [p.name for p in net.get_parameters()]
    optimizer = nn.Momentum(net.trainable_params(), 0.01, 0.9, loss_scale=1024.0)
    train_net = build_train_network(net, optimizer, CrossEntropySmooth(10), level="O2",
                                    loss_scale_manager=FixedLossScaleManager(1024.0, drop_overflow_update=False))
    assert sum(type(cell).__name__ == "_OutputTo16" for _, cell in net.cells_and_names()) == 34  # every BatchNorm
    loss = train_net(images(4), ms.Tensor(np.array([1, 2, 3, 4], np.int32)))
    assert np.isfinite(loss.asnumpy())
    net.set_train(False)
    logits = net(images()).asnumpy()
    assert logits.dtype == np.float16 and logits.shape == (2, 10)
    ms.load_param_into_net(reference, {p.name: p for p in net.get_parameters()}, strict_load=True)
    reference.set_train(False)
    want = reference(images()).asnumpy()
    assert np.abs(logits.astype(np.float32) - want).max() <= 0.02 * np.abs(want).max()
    assert [p.name for p in net.get_parameters()] == names


# ---- 2. amp O1 ----

def test_mindspore_o1_rewrite_fails_on_these_networks(tmp_path, monkeypatch):
    """Why O1 is ours (`mixed_precision_o1`): MindSpore's O1 (`_auto_mixed_precision_rewrite`, amp.py line 345) fails
    on MobileNetV3, in whatever way: on the standard network of src/models the rewritten classes assign into nested
    SequentialCells, whose `__setitem__` fails on their parameter names (IndexError in `_get_prefix_and_index`,
    nn/layer/container.py line 91); importing them where .venv is a symbolic link fails (ImportError).  Any exception
    raised inside MindSpore is the canary's answer; it fails when a MindSpore release's O1 succeeds: then use its O1
    again."""
    monkeypatch.chdir(tmp_path)  # it writes rewritten_network/ into the working folder
    net = create_model("mobilenet_v3_small", 10, 0.75)
    with pytest.raises(Exception) as failed:
        auto_mixed_precision(net, "O1")
    assert any("mindspore" in str(entry.path) for entry in failed.traceback[1:]), failed.getrepr()


def test_o1_runs_convolutions_and_dense_in_float16_and_trains_the_evaluated_network():
    """amp O1 through `build_model`: every convolution and dense layer computes in float16, every BatchNorm in
    float32 (forward hooks, PyNative); a training step through `Model` changes the weights of the network that
    evaluation and the best checkpoint use (the network object given to `build_model`)."""
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        set_seed(1)
        config = config_for({"model": "mobilenet_v3_small", "width_mult": 0.75, "device_target": "GPU",
                             "amp_level": "O1", "loss_scale": 1024.0})
        net = create_model("mobilenet_v3_small", 10, 0.75)
        optimizer = nn.Momentum(net.trainable_params(), 0.01, 0.9, loss_scale=1024.0)
        model = build_model(config, net, LossRecorder(CrossEntropySmooth(10)), optimizer, precision_settings(config))
        dtypes = {}

        def record(cell, _inputs, output):
            dtypes.setdefault(type(cell).__name__, set()).add(output.dtype)

        for _, cell in net.cells_and_names():
            if isinstance(cell, (nn.Conv2d, nn.Dense, nn.BatchNorm2d)):
                cell.register_forward_hook(record)
        before = net.classifier.weight.asnumpy().copy()
        loss = model.train_network(images(4), ms.Tensor(np.array([1, 2, 3, 4], np.int32)))
        assert np.isfinite(loss.asnumpy())
        assert dtypes == {"Conv2d": {ms.float16}, "Dense": {ms.float16}, "BatchNorm2d": {ms.float32}}
        assert not np.array_equal(net.classifier.weight.asnumpy(), before)
        assert model.eval_network._network is net  # pylint: disable=protected-access  (evaluates what was trained)
    finally:
        ms.set_context(mode=previous)


# ---- 3. the loss-scale manager is explicit; skipped steps are counted ----

@pytest.mark.parametrize("amp_level", ["O0", "O1", "O2", "O3"])
@pytest.mark.parametrize("loss_scale", [1.0, 1024.0])
@pytest.mark.parametrize("scale_type", ["fixed", "dynamic"])
def test_every_precision_setting_has_an_explicit_manager(amp_level, loss_scale, scale_type):
    """amp.py `_config_level` (line 591) gives O2 a `DynamicLossScaleManager` when no manager is passed, so
    `loss_scale: 1` must still pass one: fixed -> `FixedLossScaleManager(scale, drop_overflow_update=False)`, its
    scale divided out by the optimizer; dynamic -> a manager that counts the steps it skips."""
    precision = precision_settings(config_for({"device_target": "GPU", "amp_level": amp_level,
                                               "loss_scale": loss_scale, "loss_scale_type": scale_type}))
    manager = precision.loss_scale_manager
    assert precision.amp_level == amp_level
    if scale_type == "fixed":
        assert type(manager) is FixedLossScaleManager and not manager.get_drop_overflow_update()
        assert manager.get_loss_scale() == loss_scale == precision.optimizer_loss_scale
        assert not precision.skips_steps
    else:
        assert isinstance(manager, CountingDynamicLossScaleManager) and manager.get_loss_scale() == loss_scale
        assert precision.optimizer_loss_scale == 1.0 and precision.skips_steps


def test_cpu_trains_in_float32_with_a_fixed_scale(capsys):
    """CPU: amp levels fall back to O0 and a dynamic loss scale to a fixed one (amp.py line 771 refuses a loss-scale
    update cell on CPU), each with a warning."""
    precision = precision_settings(config_for({"device_target": "CPU", "amp_level": "O2", "loss_scale": 128.0,
                                               "loss_scale_type": "dynamic"}))
    assert precision.amp_level == "O0" and type(precision.loss_scale_manager) is FixedLossScaleManager
    assert precision.loss_scale_manager.get_loss_scale() == precision.optimizer_loss_scale == 128.0
    err = capsys.readouterr().err
    assert "WARNING: amp_level O2 is for GPU and Ascend: training in float32 (O0) on CPU" in err
    assert "WARNING: loss_scale_type dynamic is for GPU and Ascend: a fixed loss scale of 128 on CPU" in err


def test_o2_with_loss_scale_1_trains_without_a_dynamic_manager():
    """On CPU a dynamic manager cannot even be built (amp.py line 771 refuses its update cell there), which shows
    which manager `Model(amp_level="O2")` picks when given none: with the explicit fixed manager it builds a plain
    `TrainOneStepCell` that never skips a step."""
    config = config_for({"device_target": "GPU", "amp_level": "O2", "loss_scale": 1.0})
    with pytest.raises(ValueError, match="loss_scale_manager"):
        Model(create_model("mobilenet_v1", 10, 0.25), CrossEntropySmooth(10),
              nn.Momentum(create_model("mobilenet_v1", 10, 0.25).trainable_params(), 0.1, 0.9), amp_level="O2")
    net = create_model("mobilenet_v1", 10, 0.25)
    model = build_model(config, net, CrossEntropySmooth(10), nn.Momentum(net.trainable_params(), 0.1, 0.9),
                        precision_settings(config))
    assert type(model.train_network) is nn.TrainOneStepCell


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
def test_counting_update_cell_matches_mindspore_and_counts_skips(mode):
    """The dynamic manager's update cell (nn/wrap/loss_scale.py `DynamicLossScaleUpdateCell.construct`) runs
    inside the train step on the device; ours updates the scale exactly as MindSpore's and counts overflows."""
    ours, theirs = CountingLossScaleUpdateCell(1024.0, 2, 3), nn.DynamicLossScaleUpdateCell(1024.0, 2, 3)
    scales = [ms.Parameter(ms.Tensor(1024.0, ms.float32), name=f"scale_{i}") for i in range(2)]
    overflows = [False, True, False, False, False, True, True, False]
    for overflow in overflows:
        for cell, scale in zip((ours, theirs), scales):
            cell(scale, ms.Tensor(overflow))
        assert scales[0].asnumpy() == scales[1].asnumpy()
    assert float(scales[0].asnumpy()) == 256.0  # halved 3 times, doubled once after 3 clean steps
    assert int(ours.skipped_steps.asnumpy()) == sum(overflows) == 3


@pytest.mark.slow
def test_dynamic_loss_scale_stop_and_resume_continue_bit_for_bit(loss_scale_on_cpu, monkeypatch, demo_data, tmp_path,
                                                                  capsys):
    """train.py with `loss_scale_type dynamic` on GPU, played on CPU by `loss_scale_on_cpu` (no sink), from an initial
    scale of 2**127 that the first steps overflow: MindSpore skips the optimizer on those steps (nn/wrap/loss_scale.py
    lines 433-434), so its `global_step` lags the batches trained.  A SIGTERM held at global step 13 (epoch 2 step
    3) saves, beside the weights, the scale and its update cell's counters (lines 153-154, 399-402) and our skipped
    count; `--resume auto` starts at batch 13 (not at the optimizer's step), logs the LR the optimizer applies, and
    ends bit for bit where an uninterrupted run ends (every checkpoint entry, scale and counters included)."""
    raw = open(os.path.join(demo_data["cifar10"], "data_batch_1.bin"), "rb").read()
    data = tmp_path / "data"
    data.mkdir()
    (data / "data_batch_1.bin").write_bytes(raw[:160 * 3073])  # 10 steps of 16
    fast_recovery = ms.dataset.config.get_fast_recovery()
    monkeypatch.setattr(train_script, "setup_device", lambda config: (ms.set_context(mode=ms.GRAPH_MODE),
                                                                       set_seed(config.seed)))
    stop_at = {"step": 0}
    step_end = StopOnSignal.on_train_step_end

    def held(self, run_context):  # the signal arrives at a known step: after step `stop_at`
        if self.progress.global_step(run_context.original_args()) == stop_at["step"]:
            os.kill(os.getpid(), signal.SIGTERM)
        step_end(self, run_context)

    monkeypatch.setattr(StopOnSignal, "on_train_step_end", held)

    def train(out, *extra):
        monkeypatch.setattr("sys.argv", ["train.py", "--config_path", os.path.join(ROOT_DIR, "demo_config.yaml"),
                                         "--dataset_path", str(data), "--device_target", "GPU", "--width_mult", "0.25",
                                         "--batch_size", "16", "--epoch_size", "2", "--warmup_epochs", "0",
                                         "--loss_scale_type", "dynamic", "--loss_scale", str(2.0 ** 127),
                                         "--dataset_sink_mode", "False", "--run_eval", "False", "--log_interval", "1",
                                         "--num_parallel_workers", "1", "--save_checkpoint_path", str(out), *extra])
        code = train_script.main()
        return code, capsys.readouterr().out

    try:
        code, log = train(tmp_path / "whole")
        assert code == 0
        stop_at["step"] = 13
        assert train(tmp_path / "stopped")[0] == 128 + signal.SIGTERM
        stop_at["step"] = 0
        code, resumed_log = train(tmp_path / "stopped", "--resume", "auto")
        assert code == 0
    finally:
        ms.dataset.config.set_fast_recovery(fast_recovery)
    state = ms.load_checkpoint(str(tmp_path / "stopped" / "ckpt_0" / "mobilenet_v1-2_3.ckpt"))
    skipped = int(state["skipped_steps"].asnumpy())
    applied = int(state["global_step"].asnumpy()[0])
    assert skipped > 0 and applied == 13 - skipped
    assert float(state["scale_sense"].asnumpy()) < 2.0 ** 127
    lr = state["learning_rate"].asnumpy()
    assert (f"resumed {tmp_path / 'stopped' / 'ckpt_0' / 'mobilenet_v1-2_3.ckpt'}: 1 epochs and 3 steps done, global "
            f"step 13, lr {lr[applied - 1]:.6g} ({skipped} steps skipped by the loss scale)") in resumed_log
    assert "epoch: 2 step: 3," not in resumed_log and "epoch: 2 step: 4," in resumed_log
    whole = ms.load_checkpoint(str(tmp_path / "whole" / "ckpt_0" / "mobilenet_v1-2_10.ckpt"))
    final = ms.load_checkpoint(str(tmp_path / "stopped" / "ckpt_0" / "mobilenet_v1-2_10.ckpt"))
    assert whole.keys() == final.keys() and {"scale_sense", "current_iterator_step", "last_overflow_iterator_step",
                                             "skipped_steps"} <= whole.keys()
    assert [name for name in whole if not np.array_equal(whole[name].asnumpy(), final[name].asnumpy())] == []
    last_applied = int(whole["global_step"].asnumpy()[0])
    assert last_applied < 20 and re.search(rf"^epoch: 2 step: 10, loss is [\d.]+, lr: {lr[last_applied - 1]:.6g}$",
                                           log, re.MULTILINE)


# ---- 4. data sink: MindSpore's own loop, with the device's part played on CPU ----

class ReportedAs:
    """`mindspore.context` as one MindSpore module sees it, with another `device_target`: `Model._train` then takes
    its sink branch (mindspore/train/model.py lines 1091-1098; on CPU it trains without sink), and
    `build_train_network` builds a dynamic loss scale's update cell (amp.py line 770 refuses it on CPU)."""

    def __init__(self, target):
        self.target = target

    def get_context(self, key):
        return self.target if key == "device_target" else context.get_context(key)

    def __getattr__(self, name):
        return getattr(context, name)


class DeviceSink(nn.Cell):
    """The device's part of data sink, played on CPU: what `Model._exec_preprocess` returns with sink on GPU or Ascend
    (model.py lines 807-836), the dataset helper and the network connected to the data set, as one object.  As the
    helper it yields once per sink in graph mode (`_DatasetIterMSLoopSink`: one `op()` per sink of `sink_size()`
    steps, dataset_helper.py lines 662-679) and once per step in PyNative (`_DatasetIterPyNative`, lines 646-659);
    as the network (`_DataWrapper`, line 87: holds the train network, no name prefix) each call trains that many
    steps on the next of `batches` (the device's GetNext).  `on_step(global_step)` runs after every step;
    `outputs` keeps every step's outputs."""

    def __init__(self, network, batches, sink_steps, start_step=0, on_step=None):
        super().__init__(auto_prefix=False)
        self.network, self.batches, self.sink_steps, self.step = network, batches, sink_steps, start_step
        self.on_step, self.outputs = on_step or (lambda step: None), []
        self.graph = ms.get_context("mode") == ms.GRAPH_MODE

    def __iter__(self):
        return iter([()] * (1 if self.graph else self.sink_steps))

    def sink_size(self):
        return self.sink_steps

    def continue_send(self):
        pass

    def stop_send(self):
        pass

    def release(self):
        pass

    def __call__(self, *_inputs):
        for _ in range(self.sink_steps if self.graph else 1):
            images, labels = self.batches[self.step % len(self.batches)]
            output = self.network(ms.Tensor(images), ms.Tensor(labels))
            self.step += 1
            self.outputs.append(tuple(o.asnumpy() for o in output) if isinstance(output, tuple) else output.asnumpy())
            self.on_step(self.step)
        return output


@pytest.fixture
def sink_train(monkeypatch):
    """`sink_train(model, callbacks, batches, sink_steps, epoch, initial_epoch=0, on_step=None)`: `Model.train` with
    data sink, as on a GPU: `Model.train` -> `_train` -> `_train_dataset_sink_process` run as written, only
    `_exec_preprocess` returns a `DeviceSink`.  Returns it."""
    monkeypatch.setattr(model_module, "context", ReportedAs("GPU"))

    def train(model, callbacks, batches, sink_steps, epoch, initial_epoch=0, on_step=None):
        sink = DeviceSink(model.train_network, batches, sink_steps, initial_epoch * sink_steps, on_step)

        def exec_preprocess(self, is_train, dataset, dataset_sink_mode, sink_size=-1, epoch_num=1,
                            dataset_helper=None):
            assert is_train and dataset_sink_mode and sink_size == sink_steps and dataset_helper in (None, sink)
            self._train_network.set_train(True)  # pylint: disable=protected-access
            self._backbone_is_train = True  # pylint: disable=protected-access
            return sink, sink

        monkeypatch.setattr(Model, "_exec_preprocess", exec_preprocess)
        dataset = ds.NumpySlicesDataset(np.zeros(len(batches), np.float32), shuffle=False)  # read: its size
        model.train(epoch, dataset, callbacks=callbacks, dataset_sink_mode=True, sink_size=sink_steps,
                    initial_epoch=initial_epoch)
        return sink

    return train


@pytest.fixture
def loss_scale_on_cpu(monkeypatch):
    """MindSpore's dynamic loss scale on CPU: `build_train_network` builds `TrainOneStepWithLossScaleCell` with the
    manager's update cell (amp.py lines 764-782), which checks overflow as on an Ascend 910B in INFNAN mode without
    AllFinite: `IsFinite` on every gradient (nn/wrap/loss_scale.py lines 492-502 and 518-525), the one of its checks
    that CPU has kernels for (GPU's `FloatStatus`, line 513, and the 910A float-status registers have none).  The rest
    of the cell (the optimizer skipped on overflow, lines 433-434; the update cell) runs as written."""
    monkeypatch.setattr(amp, "context", ReportedAs("GPU"))
    init = nn.TrainOneStepWithLossScaleCell.__init__

    def with_infnan_check(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.ascend_910b_target, self.enable_allfinite = True, False

    monkeypatch.setattr(nn.TrainOneStepWithLossScaleCell, "__init__", with_infnan_check)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(callbacks_module.time, "time", fake.time)
    return fake


class FakeModel:
    """`Model.eval` for `EvalMonitor`: takes 100 s on the fake clock, returns fixed sums (`EvalSums`) of 360
    images: top-1 0.5, top-5 0.9, loss 1.25."""

    def __init__(self, clock):
        self.clock, self.sink_modes = clock, []

    def eval(self, _dataset, callbacks, dataset_sink_mode):
        self.sink_modes.append(dataset_sink_mode)
        self.clock.now += 100.0
        return {"sums": (np.array([180, 324, 450.0, 360]), np.zeros((10, 10), np.int64))}


def batches(count, seed=0, scale=1.0):
    """`count` batches of 4 samples of 6 features and labels of 10 classes."""
    rng = np.random.default_rng(seed)
    return [((scale * rng.standard_normal((4, 6))).astype(np.float32), rng.integers(0, 10, 4).astype(np.int32))
            for _ in range(count)]


def small_model(lr, loss_scale_manager=None):
    """(Model, recorder, optimizer) for a Dense network trained as train.py trains: loss through a `LossRecorder`,
    a per-step LR array."""
    set_seed(1)
    net = nn.Dense(6, 10)
    recorder = LossRecorder(CrossEntropySmooth(10))
    optimizer = nn.Momentum(net.trainable_params(), ms.Tensor(lr), 0.9)
    kwargs = {"loss_scale_manager": loss_scale_manager} if loss_scale_manager else {}
    return Model(net, recorder, optimizer, **kwargs), recorder, optimizer


def device_sum(losses):
    """The sum `LossRecorder` keeps on the device: float32, one step after another."""
    total = np.float32(0)
    for loss in losses:
        total = np.float32(total + np.float32(loss))
    return float(total)


def read_rows(path):
    import csv  # pylint: disable=import-outside-toplevel
    with open(path, newline="", encoding="utf-8") as src:
        return list(csv.DictReader(src))


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
def test_sink_mode_logs_and_metrics_count_every_step(mode, sink_train, clock, tmp_path, capsys):
    """8 steps per epoch, sinks of 4 steps, 2 epochs, evaluation (100 s) and checkpoints every epoch, 0.5 s per step,
    through MindSpore's loop (model.py lines 1104-1192: graph mode calls step end once per sink with `cur_step_num`
    advanced by the sink size, lines 1162 and 1173; PyNative once per step, line 1164; epoch end once per sink, line
    1178): per-step time, img/s and the metrics row come from the steps each call covered, the loss logged is the mean
    of the steps the call covered (the sink's, not its last; in PyNative the step's own), the row's the epoch's mean,
    evaluation time is not in the epoch time, and evaluation, checkpoints and rows happen at epoch ends only."""
    lr = np.linspace(0.1, 0.0, 16, dtype=np.float32)
    model, recorder, _ = small_model(lr)
    progress = Progress(8)
    metrics_path = str(tmp_path / "metrics.csv")
    evaluator = FakeModel(clock)
    saver = CheckpointSaver(progress, str(tmp_path), "net", every_epochs=1, keep=5, total_epochs=2)
    callbacks = [EvalMonitor(progress, evaluator, None, model.train_network.network, 1),
                 TrainMonitor(progress, recorder, lr, 32, 4, 2, metrics_path), saver, StopOnSignal(progress, saver)]
    sink = sink_train(model, callbacks, batches(16), 4, 4, on_step=lambda step: setattr(clock, "now", clock.now + 0.5))
    out = capsys.readouterr().out
    losses = [float(loss) for loss in sink.outputs]
    assert len(losses) == 16 and len(set(losses)) == 16
    assert evaluator.sink_modes == [False, False]  # evaluation never sinks
    assert sorted(os.listdir(tmp_path)) == ["metrics.csv", "metrics.png", "net-1_8.ckpt", "net-2_8.ckpt"]
    assert int(ms.load_checkpoint(str(tmp_path / "net-1_8.ckpt"))["step_num"].asnumpy()) == 8
    rows = read_rows(metrics_path)
    assert [(row["epoch"], row["global_step"]) for row in rows] == [("1", "8"), ("2", "16")]
    for epoch, row in enumerate(rows):
        assert float(row["epoch_seconds"]) == 4.0  # 8 steps of 0.5 s; the 100 s evaluation excluded
        assert float(row["images_per_second"]) == 64.0  # 32 images x 8 steps / 4 s
        assert float(row["loss"]) == pytest.approx(np.mean(losses[8 * epoch:8 * epoch + 8]), abs=1e-6)
        assert float(row["lr"]) == pytest.approx(lr[8 * epoch + 7])
        assert row["top_1_accuracy"] == "0.500000"
    assert "Epoch time: 4000.000, per step time: 500.000, 64.0 img/s, time left: 0:00:04" in out
    for epoch, step in ((1, 4), (2, 8)):
        end = 8 * (epoch - 1) + step
        covered = losses[end - 4:end] if mode == ms.GRAPH_MODE else losses[end - 1:end]
        assert f"epoch: {epoch} step: {step}, loss is {device_sum(covered) / len(covered):.6f}," in out
    assert out.count("eval: top_1_accuracy") == 2


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
def test_sink_mode_non_finite_step_inside_a_sink_stops_the_run(mode, sink_train, tmp_path):
    """A NaN batch at step 6 of 8, inside the second sink: the run stops at the first call after it, before that
    epoch's checkpoint, naming the steps the call covered (graph: the sink's 5-8; PyNative: step 6)."""
    model, recorder, _ = small_model(np.full(16, 0.1, np.float32))
    progress = Progress(8)
    data = batches(16)
    data[5] = (np.full_like(data[5][0], np.nan), data[5][1])
    saver = CheckpointSaver(progress, str(tmp_path), "net", every_epochs=1, keep=5, total_epochs=2)
    callbacks = [TrainMonitor(progress, recorder, np.full(16, 0.1), 32, 4, 2), saver]
    where = "steps 5-8 \\(global step 8\\)" if mode == ms.GRAPH_MODE else "step 6 \\(global step 6\\)"
    with pytest.raises(UserError, match=f"loss is not finite at epoch 1 {where}: training"):
        sink_train(model, callbacks, data, 4, 4)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
def test_sink_mode_counts_skipped_steps_and_logs_the_lr_applied(mode, sink_train, loss_scale_on_cpu, capsys):
    """MindSpore's `TrainOneStepWithLossScaleCell` with our counting manager (initial scale 2**126, window 2: the
    scale overflows the gradients again and again) in sinks of 4: every overflow that the cell reports
    (its `cond` output) is counted on the device, logged for the call that covered it and summed per epoch; the
    optimizer skipped those steps (loss_scale.py lines 433-434), so its `global_step` lags the batches, and the
    learning rate logged is the one it last applied, not the batch's."""
    lr = np.linspace(0.1, 0.001, 16, dtype=np.float32)
    manager = CountingDynamicLossScaleManager(2.0 ** 126, 2, 2)
    model, recorder, optimizer = small_model(lr, manager)
    assert type(model.train_network) is nn.TrainOneStepWithLossScaleCell
    progress = Progress(8)
    callbacks = [TrainMonitor(progress, recorder, lr, 32, 4, 2, skipped_steps=manager.skipped_steps,
                              optimizer=optimizer)]
    sink = sink_train(model, callbacks, batches(16, scale=10.0), 4, 4)
    out = capsys.readouterr().out
    overflows = [bool(cond) for _, cond, _ in sink.outputs]
    assert 2 <= sum(overflows) <= 14 and manager.skipped_steps() == sum(overflows)
    assert optimizer_steps(optimizer) == 16 - sum(overflows)
    calls = [(end - 4, end) for end in (4, 8, 12, 16)] if mode == ms.GRAPH_MODE else [(i, i + 1) for i in range(16)]
    for first, end in calls:
        skipped = sum(overflows[first:end])
        epoch, step = first // 8 + 1, end - 8 * (end > 8)
        label = f"steps: {step - 3}-{step}" if mode == ms.GRAPH_MODE else f"step: {step}"
        assert (f"epoch: {epoch} {label}, gradient overflow: {skipped} step(s) skipped" in out) == bool(skipped)
        if step % 4 == 0:
            applied = end - sum(overflows[:end])
            assert f"epoch: {epoch} step: {step}, loss is " in out
            assert re.search(rf"epoch: {epoch} step: {step}, loss is [\d.]+, lr: {lr[applied - 1]:.6g}\n", out)
    for epoch in (1, 2):
        assert f"skipped steps: {sum(overflows[8 * epoch - 8:8 * epoch])}" in out


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
def test_sink_mode_stop_signal_saves_at_the_sink_end_and_resumes_there(mode, sink_train, clock, tmp_path):
    """SIGTERM after step 9, the first of the third sink (epoch 2), at 0.5 s per step: graph mode calls back only at
    the sink's end (model.py line 1173), so the run stops and saves there, at epoch 2 step 4 (global step 12), 4
    steps and 2 s after the end of the step before the signal.  PyNative calls back every step (line 1164) and so
    saves at step 9, but checks the stop request only after the sink (line 1183): MindSpore trains on to step 12,
    which the checkpoint does not hold (why train.py turns sink off in PyNative).  `train_arguments` resumes the
    graph-mode checkpoint at sink 3 of 4."""
    model, recorder, _ = small_model(np.full(16, 0.1, np.float32))
    progress = Progress(8)
    saver = CheckpointSaver(progress, str(tmp_path), "net", every_epochs=5, keep=5, total_epochs=2)
    stop = StopOnSignal(progress, saver)
    callbacks = [TrainMonitor(progress, recorder, np.full(16, 0.1), 32, 8, 2), saver, stop]

    def step_done(step):
        clock.now += 0.5
        if step == 9:
            os.kill(os.getpid(), signal.SIGTERM)

    sink = sink_train(model, callbacks, batches(16), 4, 4, on_step=step_done)
    stopped = 12 if mode == ms.GRAPH_MODE else 9
    assert sink.step == 12 and stop.signal_name == "SIGTERM"
    assert stop.stopped_at == (2, stopped - 8) and stop.latency == (stopped - 8, 0.5 * (stopped - 8))
    assert os.listdir(tmp_path) == [f"net-2_{stopped - 8}.ckpt"]
    saved = ms.load_checkpoint(str(tmp_path / f"net-2_{stopped - 8}.ckpt"))
    assert int(saved["step_num"].asnumpy()) == stopped and int(saved["epoch_num"].asnumpy()) == 2
    config = config_for({"device_target": "GPU", "epoch_size": 2, "sink_size": 4})
    assert train_arguments(config, data_sink(config, 8, 12), 8, 12) == {
        "epoch": 4, "initial_epoch": 3, "dataset_sink_mode": True, "sink_size": 4}


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE], indirect=True)  # where sink is used (PyNative: off)
def test_default_sink_size_bounds_the_stop_latency(mode, sink_train, clock, tmp_path, capsys):
    """Preemption with data sink: `sink_size` -1 (the default) sizes the sinks for `stop_seconds` (here 2 s) at
    `step_seconds` (0.5 s): 12 steps per epoch -> sinks of 4 (12's largest divisor up to 2 / 0.5).  A SIGTERM mid-epoch
    (after step 13, the first of the fourth sink, the worst place: just after a callback) is honoured at that sink's
    end, through MindSpore's graph-mode loop (model.py lines 1162-1183): epoch 2 step 4, 4 steps and 2 s after the
    end of the step before it, within the bound; the checkpoint resumes with the same sinks.  On a device 3x slower
    than `step_seconds` the second sink (the first compiles) took 6 s: a warning names the step time measured and
    the sinks it gives."""
    config = config_for({"device_target": "GPU", "epoch_size": 2, "stop_seconds": 2.0, "step_seconds": 0.5})
    sink = data_sink(config, 12)
    assert sink == DataSink(True, 4)

    def run(folder, seconds_per_step, signal_after):
        folder.mkdir()
        model, recorder, _ = small_model(np.full(24, 0.1, np.float32))
        progress = Progress(12)
        saver = CheckpointSaver(progress, str(folder), "net", every_epochs=5, keep=5, total_epochs=2)
        stop = StopOnSignal(progress, saver)
        callbacks = [TrainMonitor(progress, recorder, np.full(24, 0.1), 32, 12, 2, stop_seconds=config.stop_seconds),
                     saver, stop]

        def step_done(step):
            clock.now += seconds_per_step
            if step == signal_after:
                os.kill(os.getpid(), signal.SIGTERM)

        arguments = train_arguments(config, sink, 12, 0)
        sink_train(model, callbacks, batches(24), sink.steps, arguments["epoch"], on_step=step_done)
        return stop

    stop = run(tmp_path / "bounded", 0.5, 13)
    assert stop.stopped_at == (2, 4) and stop.latency == (4, 2.0) and stop.latency[1] <= config.stop_seconds
    assert os.listdir(tmp_path / "bounded") == ["net-2_4.ckpt"]
    assert data_sink(config, 12, 16) == sink and train_arguments(config, sink, 12, 16)["initial_epoch"] == 4
    assert "WARNING" not in capsys.readouterr().err
    stop = run(tmp_path / "slow", 1.5, 13)
    assert stop.latency == (4, 6.0)
    assert capsys.readouterr().err.count(
        "WARNING: a data sink of 4 steps took 6.0 s (1.5 s per step), more than stop_seconds 2: a stop (SIGTERM, "
        "Ctrl-C) waits for the sink's end; next time set --step_seconds 1.5 (sinks of 1 steps)") == 1


# ---- 5. resume with data sink ----

def test_data_sink_settings(capsys):
    """`sink_size` -1: the largest divisor of the epoch whose sink runs within `stop_seconds` (10) at `step_seconds`
    (0.5 unless set): 5004 = 2^2 x 3^2 x 139 steps -> 18 (at most 20), at 0.12 s -> 36 (at most 83), `stop_seconds` 0 ->
    the epoch; resuming at global step 5040 -> a divisor of gcd(5004, 5040) = 36 as well.  An explicit size must
    divide the epoch.  CPU and `dataset_sink_mode False` do not sink (model.py line 1091: MindSpore's CPU trains
    without sink anyway), nor does PyNative, where MindSpore feeds a sink step by step (model.py line 1164,
    dataset_helper.py `_DatasetIterPyNative` line 646): with a warning."""
    assert data_sink(config_for({"device_target": "GPU"}), 5004) == DataSink(True, 18)
    assert data_sink(config_for({"device_target": "Ascend", "step_seconds": 0.12}), 5004) == DataSink(True, 36)
    assert data_sink(config_for({"device_target": "GPU", "stop_seconds": 0}), 5004) == DataSink(True, 5004)
    assert data_sink(config_for({"device_target": "GPU"}), 5004, 5040) == DataSink(True, 18)
    assert data_sink(config_for({"device_target": "GPU", "step_seconds": 30}), 5004) == DataSink(True, 1)
    assert data_sink(config_for({"device_target": "Ascend", "sink_size": 139}), 5004) == DataSink(True, 139)
    assert data_sink(config_for({"device_target": "CPU"}), 5004) == DataSink(False, 1)
    assert data_sink(config_for({"device_target": "GPU", "dataset_sink_mode": False}), 5004) == DataSink(False, 1)
    assert capsys.readouterr().err == ""
    assert data_sink(config_for({"device_target": "GPU", "mode": "pynative"}), 5004) == DataSink(False, 1)
    assert capsys.readouterr().err == ("WARNING: dataset_sink_mode: in pynative mode MindSpore feeds a data sink one "
                                       "step at a time, which gains nothing; training without data sink "
                                       "(--dataset_sink_mode False says so)\n")
    with pytest.raises(UserError, match=r"sink_size 100 does not divide the 5004 steps of an epoch; use one of "
                                        r"278, 417, 556, 834, 1251, 1668, 2502, 5004 \(or -1"):
        data_sink(config_for({"device_target": "GPU", "sink_size": 100}), 5004)


class NoDeviceQueue:
    """The device queue `_DatasetIter.__init__` sends a data set to (`__transfer_dataset__`, dataset_helper.py lines
    555-603): none on CPU, nothing is sent."""
    queue_name = "none"

    def send(self, epoch_num):
        pass

    stop_send = release = continue_send = get_data_info = get_mbuf_queue_size = get_send_info = send


def mindspore_start_step(init_step, sink_steps):
    """The step MindSpore's data sink starts a data set of 44 batches at when asked to start at `init_step`:
    `_DatasetIter.__init__` (dataset_helper.py lines 562-568) run as written."""
    dataset = ds.NumpySlicesDataset(np.zeros((88, 3), np.float32), shuffle=False).batch(2)
    dataset.set_init_step(init_step)
    dataset.__transfer_dataset__ = NoDeviceQueue()
    _DatasetIter(dataset, sink_steps, 1)
    return dataset.get_init_step()


def test_mid_sink_checkpoint_is_refused_with_what_to_do():
    """MindSpore's data sink moves a data set whose initial step is inside a sink back to the sink's start, with only
    a warning (dataset_helper.py lines 562-568, driven here): the run would train those steps twice and run past the
    LR array.  An explicit sink size that does not divide the resume step is refused, naming sizes that fit; sink_size
    -1 picks one that divides it, which MindSpore then keeps."""
    config = config_for({"device_target": "GPU", "epoch_size": 3, "sink_size": 44})
    sink = data_sink(config, 44)
    assert train_arguments(config, sink, 44, 88) == {"epoch": 3, "initial_epoch": 2, "dataset_sink_mode": True,
                                                     "sink_size": 44}
    assert mindspore_start_step(88, 44) == 88
    with pytest.raises(UserError, match=r"resume checkpoint c.ckpt stopped at global step 66, inside a data sink of "
                                        r"44 steps; resume with --sink_size 22 .*, -1 .* or --dataset_sink_mode False"):
        train_arguments(config, sink, 44, 66, "c.ckpt")
    assert mindspore_start_step(66, 44) == 44  # what the refusal prevents
    auto = config_for({"device_target": "GPU", "epoch_size": 3})
    fitting = data_sink(auto, 44, 66)
    assert fitting == DataSink(True, 11)  # the largest divisor of gcd(44, 66) = 22 within 10 s at 0.5 s per step
    assert train_arguments(auto, fitting, 44, 66) == {"epoch": 12, "initial_epoch": 6, "dataset_sink_mode": True,
                                                      "sink_size": 11}
    assert mindspore_start_step(66, 11) == 66
    assert train_arguments(config_for({"epoch_size": 3}), data_sink(config_for(), 44), 44, 66) == {
        "epoch": 3, "initial_epoch": 1, "dataset_sink_mode": False}


# ---- 8. dropout: int32 operators that exist on every target ----

def mix_reference(h):
    """`hash16` in numpy int64, checking the bounds that keep it exact on every target."""
    first, second, third = HASH_SHIFTS
    for shift, multiplier in ((first, HASH_MULTIPLIERS[0]), (second, HASH_MULTIPLIERS[1]), (third, None)):
        assert h.max() < 2 ** 24  # floor division by 2**shift: exact through float32 (Ascend's int32 FloorDiv)
        h = h ^ (h // 2 ** shift)
        if multiplier is not None:
            assert (h * multiplier).max() < 2 ** 31  # no int32 overflow
            h = (h * multiplier) % HASH_LEVELS
    return h


def keep_reference(size, calls, seed, p):
    h = np.int64(0)
    for word in (seed % HASH_LEVELS, seed // HASH_LEVELS % HASH_LEVELS, calls % HASH_LEVELS, calls // HASH_LEVELS):
        h = mix_reference(np.asarray(h ^ word))
    index = np.arange(size, dtype=np.int64)
    h = mix_reference(h ^ (index // HASH_LEVELS))
    return mix_reference(mix_reference(h ^ (index % HASH_LEVELS))) >= round(p * HASH_LEVELS)


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE], indirect=True)
def test_dropout_mask_is_an_exact_int32_hash(mode):
    """The mask was float64 `sin`/`floor`, which Ascend's AI Core kernels lack (TBE Sin/Floor: float16/float32).
    Now int32 add, multiply, bitwise and/xor and floor division, every intermediate below 2**31 (and below 2**24
    where divided): bit for bit the numpy reference, unbiased, uncorrelated between neighbours and calls."""
    dropout = Dropout(0.2, seed=123_457)
    dropout.set_train(True)
    x = ms.Tensor(np.ones((4, 70_000), np.float32))
    masks = []
    for calls in (1, 2, 3):
        out = dropout(x).asnumpy()
        keep = keep_reference(x.size, calls, 123_457, 0.2).reshape(x.shape)
        np.testing.assert_array_equal(out != 0, keep)
        assert np.all(out[keep] == np.float32(HASH_LEVELS / (HASH_LEVELS - 13_107)))
        masks.append(keep.ravel().astype(np.float64))
    assert abs(masks[0].mean() - 0.8) < 1e-4  # each block of 65,536 elements holds every level once
    assert abs(np.corrcoef(masks[0][:-1], masks[0][1:])[0, 1]) < 0.01
    assert abs(np.corrcoef(masks[0], masks[1])[0, 1]) < 0.01
    grad = ms.grad(dropout)(x).asnumpy()
    assert set(np.unique(grad)) == {0.0, np.float32(HASH_LEVELS / (HASH_LEVELS - 13_107))}


# ---- dry runs of train.py and eval.py on GPU and Ascend: everything decided before the first step ----

@pytest.fixture
def dry_run(monkeypatch):
    """Run `script.main()` in this process with `argv`, as on `device_target`: the device set-up is skipped
    (only seeds and the mode), `Model.train` / `Model.eval` record their arguments instead of running."""
    recorded = {}

    def fake_setup(config):
        ms.set_context(mode=ms.GRAPH_MODE)
        set_seed(config.seed)

    def record_train(model, **kwargs):
        recorded.update(model=model, **kwargs)

    real_eval = Model.eval

    def record_eval(model, dataset, **kwargs):
        recorded["eval_sink"] = kwargs.get("dataset_sink_mode")
        return real_eval(model, dataset, dataset_sink_mode=False)

    monkeypatch.setattr(Model, "train", record_train)
    monkeypatch.setattr(Model, "eval", record_eval)
    mode, fast_recovery = ms.get_context("mode"), ms.dataset.config.get_fast_recovery()

    def run(script, argv):
        monkeypatch.setattr(script, "setup_device", fake_setup)
        monkeypatch.setattr("sys.argv", [script.__file__, *map(str, argv)])
        recorded.clear()
        assert script.main() == 0
        return recorded

    yield run
    ms.set_context(mode=mode)
    ms.dataset.config.set_fast_recovery(fast_recovery)


# sinks of the 84 steps of 1437 images at batch 17 (divisors 1, 2, 3, 4, 6, 7, 12, 14, 21, 28, 42, 84) that last at
# most stop_seconds (10) at each config's step_seconds: 0.5 (the default) -> 20 steps, 0.12 -> 83, 0.26 -> 38,
# 0.43 -> 23
SHIPPED_SINKS = {"default_config.yaml": 14, "default_config_imagenet.yaml": 42,
                 "default_config_gpu_imagenet.yaml": 28, "mobilenetv3_config.yaml": 21}


@pytest.mark.parametrize("config_file", SHIPPED_CONFIGS)
@pytest.mark.parametrize("target", ["GPU", "Ascend"])
def test_train_dry_run_of_each_shipped_config(dry_run, demo_data, tmp_path, config_file, target):
    """train.py with each shipped config on GPU and Ascend: the precision and explicit loss-scale manager of the
    config, data sinks sized for a stop within stop_seconds at the config's step_seconds, no C++ CPU kernel in the
    network, the callbacks built with the sink in mind, evaluation without sink."""
    config = config_for({}, config_file)
    data = demo_data["imagefolder"] if config.dataset == "imagenet2012" else demo_data["cifar10"]
    recorded = dry_run(train_script, ["--config_path", os.path.join(ROOT_DIR, config_file), "--dataset_path", data,
                                      "--device_target", target, "--class_num", 10, "--batch_size", 17,
                                      "--image_size", 32, "--save_checkpoint_path", tmp_path, "--run_eval", True,
                                      "--num_parallel_workers", 1])
    steps_per_epoch, sink = 1437 // 17, SHIPPED_SINKS[config_file]
    assert {key: recorded[key] for key in ("epoch", "initial_epoch", "dataset_sink_mode", "sink_size")} == {
        "epoch": config.epoch_size * steps_per_epoch // sink, "initial_epoch": 0, "dataset_sink_mode": True,
        "sink_size": sink}
    model = recorded["model"]
    assert model._amp_level == config.amp_level  # pylint: disable=protected-access
    manager = model._loss_scale_manager  # pylint: disable=protected-access
    assert type(manager) is FixedLossScaleManager and manager.get_loss_scale() == config.loss_scale
    assert not manager.get_drop_overflow_update()
    train_network = model.train_network
    assert type(train_network) is nn.TrainOneStepCell and train_network.sens == config.loss_scale
    assert not custom_ops(train_network)
    kinds = [type(callback).__name__ for callback in recorded["callbacks"]]
    assert kinds == ["EvalMonitor", "TrainMonitor", "CheckpointSaver", "StopOnSignal"]
    monitor = recorded["callbacks"][1]
    assert monitor.progress == Progress(steps_per_epoch, 0) and monitor.skipped_steps is None
    assert monitor.stop_seconds == 10.0 and monitor.optimizer is model._optimizer  # pylint: disable=protected-access
    assert isinstance(monitor.recorder, LossRecorder)


def test_eval_dry_run_on_gpu_evaluates_every_image_without_sink(dry_run, demo_data, tmp_path):
    """eval.py on GPU with the last batch partial (360 images, batch 32): no sink (the sink's shapes come from the
    first batch, model.py line 817), and the result equals eval.py on CPU for the same checkpoint."""
    checkpoint = str(tmp_path / "v1.ckpt")
    ms.save_checkpoint(create_model("mobilenet_v1", 10, 0.25), checkpoint)
    results = []
    for target in ("GPU", "CPU"):
        result_file = tmp_path / f"{target}.json"
        recorded = dry_run(eval_script, ["--config_path", os.path.join(ROOT_DIR, "demo_config.yaml"),
                                         "--dataset_path", demo_data["cifar10"], "--width_mult", 0.25,
                                         "--checkpoint_path", checkpoint, "--device_target", target,
                                         "--result_file", result_file])
        assert recorded["eval_sink"] is False
        results.append(json.loads(result_file.read_text()))
    for key in ("top_1_accuracy", "top_5_accuracy"):
        assert results[0][key] == results[1][key]
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-5)
