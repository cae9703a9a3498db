"""The ONNX file as ONNX Runtime runs it best (src/onnx_graph.py): h-swish and h-sigmoid as one operator each,
BatchNorm folded into the convolutions, opset 14, the outputs of MindSpore's network unchanged."""
from collections import Counter

import mindspore as ms
import numpy as np
import onnx
import onnxruntime
import pytest
from mindspore.onnx import export as export_onnx

from src.models import create_model
from src.models.layers import HSigmoid, HSwish
from src.onnx_graph import OPSET, optimize


def trained_like(net):
    """BatchNorm statistics and affine of a trained network, so that folding them is exercised."""
    rng = np.random.default_rng(0)
    for param in net.get_parameters():
        if param.name.endswith(("moving_mean", "beta")):
            param.set_data(ms.Tensor(rng.normal(0, 0.3, param.shape).astype(np.float32)))
        elif param.name.endswith(("moving_variance", "gamma")):
            param.set_data(ms.Tensor(rng.uniform(0.5, 1.5, param.shape).astype(np.float32)))
    net.set_train(False)
    return net


@pytest.mark.parametrize("name,width", [("mobilenet_v3_small", 0.75), ("mobilenet_v1", 0.25)])
def test_rewritten_graph_has_one_operator_per_activation_and_the_same_outputs(name, width, tmp_path):
    net = trained_like(create_model(name, 10, width))
    cells = Counter(type(cell) for _, cell in net.cells_and_names())
    convs = sum(isinstance(cell, ms.nn.Conv2d) for _, cell in net.cells_and_names())
    bns = sum(isinstance(cell, ms.nn.BatchNorm2d) for _, cell in net.cells_and_names())
    x = np.random.default_rng(1).standard_normal((2, 3, 96, 96)).astype(np.float32) * 2
    want = net(ms.Tensor(x)).asnumpy()
    path = str(tmp_path / "net")
    export_onnx(net, ms.Tensor(x), file_name=path, input_names=["image"], output_names=["logits"])
    model, counts = optimize(onnx.load(path + ".onnx"))
    ops = Counter(node.op_type for node in model.graph.node)
    assert (counts["HardSwish"], counts["HardSigmoid"], counts["BatchNorm folded"]) == (cells[HSwish],
                                                                                     cells[HSigmoid], bns)
    assert ops["HardSwish"] == cells[HSwish] and ops["HardSigmoid"] == cells[HSigmoid] and ops["Conv"] == convs
    assert not {"BatchNormalization", "Div"} & set(ops)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    onnx.save(model, path + "_fast.onnx")
    got = onnxruntime.InferenceSession(path + "_fast.onnx", providers=["CPUExecutionProvider"]).run(
        None, {"image": x})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert len(model.graph.initializer) < len(onnx.load(path + ".onnx").graph.initializer)
