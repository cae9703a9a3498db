"""The ONNX file export.py writes, as ONNX Runtime runs it best: MindSpore's exporter (opset 11) writes h-swish as
four operators, x * Clip(x + 3, 0, 6) / 6, and h-sigmoid as three, and keeps each BatchNorm as an operator.  Here the
graph is moved to opset 14 (ONNX's own version converter) and rewritten with the `onnx` package: h-swish becomes one
`HardSwish`, h-sigmoid one `HardSigmoid(alpha=1/6, beta=0.5)`, and a BatchNorm after a convolution is folded into its
weight and bias.  The rest of the graph is unchanged; `onnx.checker` checks the result."""
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

OPSET = 14  # the first with HardSwish


class _Graph:
    """Producers, consumers and constant values of a graph's tensors."""

    def __init__(self, graph):
        self.graph = graph
        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.producer = {name: node for node in graph.node for name in node.output}
        self.uses = Counter(name for node in graph.node for name in node.input)
        self.uses.update(output.name for output in graph.output)

    def constant(self, name, value) -> bool:
        """Whether tensor `name` is a constant equal to `value` everywhere."""
        return name in self.constants and np.all(self.constants[name] == value)

    def single_use(self, name, op_type):
        """The node of `op_type` that makes tensor `name`, where nothing else reads `name`; else None."""
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type and self.uses[name] == 1 else None

    def clip_of_plus_3(self, name):
        """(x, [Add, Clip]) where tensor `name` is Clip(x + 3, 0, 6) read only once; else None."""
        clip = self.single_use(name, "Clip")
        if clip is None or len(clip.input) != 3 or not (self.constant(clip.input[1], 0) and
                                                         self.constant(clip.input[2], 6)):
            return None
        add = self.single_use(clip.input[0], "Add")
        if add is None:
            return None
        for x, three in (add.input, reversed(add.input)):
            if self.constant(three, 3):
                return x, [add, clip]
        return None


def _fuse_hard_activations(graph) -> Counter:
    """Replace x * Clip(x + 3, 0, 6) / 6 by HardSwish(x) and Clip(x + 3, 0, 6) / 6 by HardSigmoid(x)."""
    counts = Counter()
    view = _Graph(graph)
    replaced, new_nodes = set(), {}
    for div in graph.node:
        if div.op_type != "Div" or not view.constant(div.input[1], 6):
            continue
        gate = view.clip_of_plus_3(div.input[0])
        if gate is not None:
            x, nodes = gate
            new_nodes[id(div)] = helper.make_node("HardSigmoid", [x], list(div.output), alpha=1.0 / 6, beta=0.5)
            counts["HardSigmoid"] += 1
        else:
            mul = view.single_use(div.input[0], "Mul")
            if mul is None:
                continue
            for x, other in (mul.input, reversed(mul.input)):
                gate = view.clip_of_plus_3(other)
                if gate is not None and gate[0] == x:
                    break
            else:
                continue
            nodes = gate[1] + [mul]
            new_nodes[id(div)] = helper.make_node("HardSwish", [x], list(div.output))
            counts["HardSwish"] += 1
        replaced.update(id(node) for node in nodes)
    kept = [new_nodes.get(id(node), node) for node in graph.node if id(node) not in replaced]
    del graph.node[:]
    graph.node.extend(kept)
    return counts


def _fold_batchnorms(graph) -> int:
    """Fold each BatchNormalization that reads a convolution's output (read by nothing else) into the convolution:
    w' = w * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps), computed in float64."""
    view = _Graph(graph)
    folded, removed, new_initializers = 0, set(), []
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = view.single_use(bn.input[0], "Conv")
        if conv is None or not all(name in view.constants for name in [*conv.input[1:], *bn.input[1:]]):
            continue
        gamma, beta, mean, var = (view.constants[name].astype(np.float64) for name in bn.input[1:])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        weight = view.constants[conv.input[1]].astype(np.float64)
        bias = view.constants[conv.input[2]].astype(np.float64) if len(conv.input) > 2 else np.zeros(len(gamma))
        scale = gamma / np.sqrt(var + eps)
        names = (f"{conv.input[1]}_bn_folded", f"{conv.input[1]}_bn_folded_bias")
        new_initializers += [numpy_helper.from_array((weight * scale[:, None, None, None]).astype(np.float32),
                                                     names[0]),
                             numpy_helper.from_array(((bias - mean) * scale + beta).astype(np.float32), names[1])]
        conv.input[:] = [conv.input[0], *names]
        conv.output[:] = list(bn.output)
        removed.add(id(bn))
        folded += 1
    kept = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_initializers)
    used = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return folded


def optimize(model: onnx.ModelProto) -> tuple:
    """(the rewritten model, {what: how many}) for a model of MindSpore's ONNX exporter (see the module docstring)."""
    model = version_converter.convert_version(model, OPSET)
    counts = _fuse_hard_activations(model.graph)
    counts["BatchNorm folded"] = _fold_batchnorms(model.graph)
    onnx.checker.check_model(model)
    return model, counts


def optimize_file(path: str) -> Counter:
    """Rewrite the ONNX file `path` in place (see `optimize`); returns what was rewritten."""
    model, counts = optimize(onnx.load(path))
    onnx.save(model, path)
    return counts
