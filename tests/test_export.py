"""export.py writes MINDIR and ONNX for every model family; reloaded outputs match the checkpoint's network,
computed independently of export.py."""
import os
import subprocess
import sys

import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest

from src.model_utils.config import ROOT_DIR
from src.models import create_model

pytestmark = pytest.mark.slow


def distinct_weights(net, seed=0):
    """Give every parameter of `net` (BatchNorm statistics included) values no initialisation gives: each element
    scaled by a random factor in [0.5, 1.5] plus noise; variances stay positive."""
    rng = np.random.default_rng(seed)
    for param in net.get_parameters():
        value = param.asnumpy()
        value = value * rng.uniform(0.5, 1.5, value.shape) + 0.05 * rng.standard_normal(value.shape)
        if param.name.endswith("moving_variance"):
            value = np.abs(value) + 0.5
        param.set_data(ms.Tensor(value.astype(np.float32)))
    return net


def reference_logits(name, width, checkpoint, images):
    """Logits of the checkpoint's network, computed here: a network of `name` loaded by MindSpore's own loader."""
    net = create_model(name, class_num=10, width_mult=width)
    assert not ms.load_param_into_net(net, ms.load_checkpoint(checkpoint), strict_load=True)[0]
    net.set_train(False)
    return net(ms.Tensor(images)).asnumpy()


def exported_logits(path, file_format, images):
    """Logits of the exported file, run by MindSpore's own loader (MINDIR) or by ONNX Runtime."""
    if file_format == "ONNX":
        import onnxruntime  # pylint: disable=import-outside-toplevel
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: images})[0]
    return nn.GraphCell(ms.load(path))(ms.Tensor(images)).asnumpy()


@pytest.mark.parametrize("name,width", [("mobilenet_v1", 0.25), ("mobilenet_v3_small", 1.0),
                                        ("mobilenet_v3_large", 0.75)])
@pytest.mark.parametrize("file_format", ["MINDIR", "ONNX"])
def test_export_and_reload(tmp_path, name, width, file_format):
    """The exported file, reloaded by MindSpore or ONNX Runtime, gives the logits of the checkpoint's network
    (every weight and BatchNorm statistic set to values no initialisation gives), computed independently here."""
    checkpoint = str(tmp_path / "weights.ckpt")
    ms.save_checkpoint(distinct_weights(create_model(name, class_num=10, width_mult=width)), checkpoint)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT_DIR, "export.py"), "--config_path", os.path.join(ROOT_DIR, "demo_config.yaml"),
         "--model", name, "--width_mult", str(width), "--ckpt_file", checkpoint, "--file_format", file_format,
         "--file_name", str(tmp_path / "net"), "--batch_size", "2", "--height", "64", "--width", "48"],
        cwd=ROOT_DIR, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = str(tmp_path / f"net.{file_format.lower()}")
    assert os.path.getsize(path) > 100_000
    assert "input 2x3x64x48" in proc.stdout
    images = np.random.default_rng(1).standard_normal((2, 3, 64, 48)).astype(np.float32)
    want = reference_logits(name, width, checkpoint, images)
    got = exported_logits(path, file_format, images)
    assert got.shape == want.shape == (2, 10)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), (got, want)
