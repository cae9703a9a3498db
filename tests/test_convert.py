"""convert_weights.py: the weights of timm (PyTorch-style and TensorFlow's), torchvision, the model zoo and mindcv make
our checkpoints with the source's logits, each with the model options its network needs; ours go back to the MindSpore
sources' own networks with their logits.  Fixtures: tests/fixtures/make_pretrained_fixtures.py (manifests of the real
source models and their logits; the weights are rebuilt here and written in the source's file format, so no torch or
mindcv is needed)."""
import glob
import json
import os
import re

import mindspore as ms
import numpy as np
import pytest
from safetensors.numpy import save_file

from src.checkpoint import build_network, read_checkpoint, save_checkpoint
from src.convert import (SOURCES, UNLABELLED, class_names, convert, evaluation_transform, export_weights, hub_config,
                         hub_model, read_weights, recognise)
from src.errors import UserError
from src.kernels.lowering import lower_for_cpu
from src.model_card import ARCHITECTURE_KEYS, card_entries, imagenet_class_names, read_card
from src.model_utils.config import get_config
from src.models import PAPER_OPTIONS, create_model
from tests.fixtures.make_pretrained_fixtures import digest, fixture_input, our_network, synthetic_weights
from tests.test_reliability import assert_user_error, run_script

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "pretrained")
CONVERTED = {  # fixture -> (our model, width, BatchNorm epsilon, model options beyond the paper's network)
    "timm_mobilenetv1_100": ("mobilenet_v1", 1.0, 1e-5, {}),
    "timm_mobilenetv3_small_075": ("mobilenet_v3_small", 0.75, 1e-5, {}),
    "timm_mobilenetv3_small_100": ("mobilenet_v3_small", 1.0, 1e-5, {}),
    "timm_mobilenetv3_large_075": ("mobilenet_v3_large", 0.75, 1e-5, {}),
    "timm_mobilenetv3_large_100": ("mobilenet_v3_large", 1.0, 1e-5, {}),
    "timm_tf_mobilenetv3_small_075": ("mobilenet_v3_small", 0.75, 1e-3, {"padding": "same"}),
    "timm_tf_mobilenetv3_small_100": ("mobilenet_v3_small", 1.0, 1e-3, {"padding": "same"}),
    "timm_tf_mobilenetv3_large_075": ("mobilenet_v3_large", 0.75, 1e-3, {"padding": "same"}),
    "timm_tf_mobilenetv3_large_100": ("mobilenet_v3_large", 1.0, 1e-3, {"padding": "same"}),
    "torchvision_mobilenet_v3_small": ("mobilenet_v3_small", 1.0, 1e-3, {}),
    "torchvision_mobilenet_v3_large": ("mobilenet_v3_large", 1.0, 1e-3, {}),
    "zoo_mobilenet_v1": ("mobilenet_v1", 1.0, 1e-5, {"padding": "same"}),
    "zoo_mobilenet_v3_small": ("mobilenet_v3_small", 1.0, 1e-5, {"head_width": 1280, "head_bias": False}),
    "zoo_mobilenet_v3_large": ("mobilenet_v3_large", 1.0, 1e-5, {"head_bias": False}),
    "mindcv_mobilenet_v1_025": ("mobilenet_v1", 0.25, 1e-5, {"activation": "relu"}),
    "mindcv_mobilenet_v1_050": ("mobilenet_v1", 0.5, 1e-5, {"activation": "relu"}),
    "mindcv_mobilenet_v1_075": ("mobilenet_v1", 0.75, 1e-5, {"activation": "relu"}),
    "mindcv_mobilenet_v1_100": ("mobilenet_v1", 1.0, 1e-5, {"activation": "relu"}),
    "mindcv_mobilenet_v3_small_100": ("mobilenet_v3_small", 1.0, 1e-5, {"padding": "same_depthwise"}),
    "mindcv_mobilenet_v3_large_100": ("mobilenet_v3_large", 1.0, 1e-5, {"padding": "same_depthwise"}),
}
EXPORTED = [f"{source}_{name}" for source, names in (
    ("mindcv", ["mobilenet_v1_025", "mobilenet_v1_050", "mobilenet_v1_075", "mobilenet_v1_100",
                "mobilenet_v3_small_100", "mobilenet_v3_large_100"]),
    ("zoo", ["mobilenet_v1", "mobilenet_v3_small", "mobilenet_v3_large"])) for name in names]


def manifest(name):
    with open(os.path.join(FIXTURES, name + ".json"), encoding="utf-8") as src:
        return json.load(src)


def write_source_file(name, folder, with_hub_config=True, classes=0) -> str:
    """The fixture's weights in its source's own format: .safetensors for torch models (timm's in a hub folder with
    its config.json unless not `with_hub_config`), a MindSpore checkpoint for mindcv and the zoo (entries in the
    source network's order); `classes`: that many outputs instead of the fixture's (its last two tensors, the
    classifier's weight and bias, resized)."""
    spec = manifest(name)
    if classes:
        spec["tensors"][-2:] = [[key, [classes, *shape[1:]], dtype] for key, shape, dtype in spec["tensors"][-2:]]
        if "hub_config" in spec:
            spec["hub_config"]["num_classes"] = spec["hub_config"]["model_args"]["num_classes"] = classes
    weights = synthetic_weights(spec["tensors"])
    folder = os.path.join(folder, name)
    os.makedirs(folder, exist_ok=True)
    if spec["source"] in ("timm", "torchvision"):
        path = os.path.join(folder, "model.safetensors")
        save_file(weights, path)
        if "hub_config" in spec and with_hub_config:
            with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as out:
                json.dump(spec["hub_config"], out)
    else:
        path = os.path.join(folder, f"{name}.ckpt")
        ms.save_checkpoint([{"name": key, "data": ms.Tensor(value)} for key, value in weights.items()], path)
    return path


def convert_file(path, class_num=0):
    """What convert_weights.py does with `path`: (network, architecture, source)."""
    tensors = read_weights(path)
    hub_source, model, width = hub_model(hub_config(path), path)
    source = recognise(tensors, path, hub_source=hub_source)
    net, architecture = convert(tensors, source, path, model, width, class_num)
    return net, architecture, source


def relative_error(logits, reference):
    return float(np.max(np.abs(logits - reference)) / np.max(np.abs(reference)))


def logits_of(net, lowered=False):
    net.set_train(False)
    return (lower_for_cpu(net) if lowered else net)(ms.Tensor(fixture_input())).asnumpy()


def test_fixtures_cover_every_source_model_both_ways():
    names = {os.path.basename(path)[:-5] for path in glob.glob(os.path.join(FIXTURES, "*.json"))}
    assert names == set(CONVERTED) | {f"export_{name}" for name in EXPORTED}


@pytest.mark.parametrize("name", sorted(CONVERTED))
def test_converted_weights_reproduce_the_source_logits(name, tmp_path):
    """Recognised from names, shapes and (timm) the hub folder's config.json; the architecture recorded is the
    source's (model options, epsilon); logits within 1e-4 of the source's (relative to the logit scale) in the
    standard network and lowered for the CPU kernels; the fixture's logits depend on the input through every layer
    (the input alone moves them by far), so padding and activations show in them.  For the MindSpore sources, written
    back under their names: every tensor of the file, unchanged."""
    spec = manifest(name)
    net, architecture, source = convert_file(write_source_file(name, str(tmp_path)))
    model, width, bn_eps, options = CONVERTED[name]
    assert architecture == {"model": model, "width_mult": width, "class_num": spec["classes"], "bn_eps": bn_eps,
                            **PAPER_OPTIONS, **options}
    reference = np.array(spec["logits"])
    assert relative_error(logits_of(net), reference) < 1e-4
    assert relative_error(net(ms.Tensor(np.zeros_like(fixture_input()))).asnumpy(), reference) > 0.1
    if source.export_names:
        original = synthetic_weights(spec["tensors"])
        written = export_weights(net, architecture, source, name)
        assert set(written) == set(original) and all(np.array_equal(written[key], original[key]) for key in original)
    assert relative_error(logits_of(net, lowered=True), reference) < 1e-4


@pytest.mark.parametrize("name", ["mindcv_mobilenet_v1_025", "mindcv_mobilenet_v3_small_100", "zoo_mobilenet_v1",
                                  "timm_tf_mobilenetv3_small_075"])
def test_each_model_option_of_a_source_is_needed(name, tmp_path):
    """The same weights in the network without one of the source's options (the paper's value instead) miss the
    source's logits by far: each option recorded is what makes the logits exact (mindcv's ReLU in V1, its "same" on
    the depthwise convolutions of V3, TensorFlow's and the zoo's "same" on every strided convolution, whose stem
    "same_depthwise" misses; the head options change the parameters' shapes: a file with them fits no other)."""
    net, architecture, _ = convert_file(write_source_file(name, str(tmp_path)))
    reference = np.array(manifest(name)["logits"])
    params = {p.name: p for p in net.get_parameters()}
    others = [{key: PAPER_OPTIONS[key]} for key in ("padding", "activation") if architecture[key] != PAPER_OPTIONS[key]]
    if architecture["padding"] == "same":
        others.append({"padding": "same_depthwise"})
    assert others
    for other_options in others:
        other = {**architecture, **other_options}
        other_net = create_model(other.pop("model"), other.pop("class_num"), **other)
        ms.load_param_into_net(other_net, params, strict_load=True)
        assert relative_error(logits_of(other_net), reference) > 0.05, other_options


def test_the_batchnorm_epsilon_is_what_makes_timm_weights_exact(tmp_path):
    """The same timm weights in a network with our default epsilon (1e-3) miss the source's logits: the epsilon
    recorded with the checkpoint is needed, not decoration."""
    name = "timm_mobilenetv3_small_100"
    net, _, _ = convert_file(write_source_file(name, str(tmp_path)))
    wrong_eps = create_model("mobilenet_v3_small", 10, 1.0)  # bn_eps 1e-3
    ms.load_param_into_net(wrong_eps, {p.name: p for p in net.get_parameters()})
    assert relative_error(logits_of(wrong_eps), np.array(manifest(name)["logits"])) > 1e-2


def test_the_model_card_rebuilds_a_sources_network_without_keys_on_the_command_line(tmp_path):
    """The zoo's MobileNetV3-small (a 1280-wide head without bias) converted: under the default config (MobileNetV1)
    build_network, as eval/predict/export call it, builds the source's network from the card and gives its logits;
    fine-tuning with another class count keeps that network and replaces the classifier only."""
    name = "zoo_mobilenet_v3_small"
    net, architecture, _ = convert_file(write_source_file(name, str(tmp_path)))
    path = str(tmp_path / "converted.ckpt")
    save_checkpoint(net, path, card_entries(architecture))
    config = get_config([])
    built, _ = build_network(config, path)
    assert {key: getattr(config, key) for key in architecture} == architecture
    assert relative_error(logits_of(built), np.array(manifest(name)["logits"])) < 1e-4
    fine_tune = get_config(["--class_num", "3"])
    tuned, _ = build_network(fine_tune, path, fine_tune=True)
    assert (tuned.head[0].out_channels, tuned.head[0].has_bias, tuned.classifier.out_channels) == (1280, False, 3)


def test_timm_tensorflow_weights_are_never_taken_for_the_pytorch_style_ones(tmp_path):
    """timm's tf_mobilenetv3_* have the tensor names and shapes of its mobilenetv3_*: without the hub folder's
    config.json the file is refused unless --source names it; read as the PyTorch-style network it would give other
    logits; a --source contradicting config.json is refused."""
    name = "timm_tf_mobilenetv3_small_075"
    path = write_source_file(name, str(tmp_path), with_hub_config=False)
    tensors = read_weights(path)
    with pytest.raises(UserError) as err:
        recognise(tensors, path)
    assert str(err.value).endswith("put the hub folder's config.json beside the file or name the source with "
                                   "--source timm or --source timm_tf")
    reference = np.array(manifest(name)["logits"])
    net, architecture = convert(tensors, recognise(tensors, path, "timm_tf"), path)
    assert architecture["padding"] == "same" and relative_error(logits_of(net), reference) < 1e-4
    as_pytorch_style, _ = convert(tensors, recognise(tensors, path, "timm"), path)
    assert relative_error(logits_of(as_pytorch_style), reference) > 0.1
    with pytest.raises(UserError, match="--source says timm, the config.json beside it timm_tf"):
        recognise(tensors, path, "timm", "timm_tf")
    with pytest.raises(UserError, match="--source says mindcv, but its tensors are those of timm or timm_tf"):
        recognise(tensors, path, "mindcv")


def test_a_hub_config_of_another_architecture_is_refused(tmp_path):
    path = write_source_file("timm_mobilenetv3_small_100", str(tmp_path))
    hub = {**hub_config(path), "architecture": "tf_mobilenetv3_small_minimal_100"}
    with pytest.raises(UserError, match="names timm's architecture 'tf_mobilenetv3_small_minimal_100', which is none "
                                        "of this repository's networks"):
        hub_model(hub, path)


@pytest.mark.parametrize("name", ["mindcv_mobilenet_v1_025", "zoo_mobilenet_v1"])
def test_a_1001_output_file_is_kept_or_drops_the_output_its_labels_never_use(name, tmp_path):
    """mindcv's and the zoo's MobileNetV1 have 1001 outputs but were trained on ImageFolderDataset labels 0..999
    (mindcv's create_dataset, the zoo's create_dataset2: class folders in sorted order), so output 1000 is never a
    target: kept, the classes are ImageNet's plus UNLABELLED last; with class_num 1000 the logits are the source's
    without output 1000.  Another class count is refused."""
    path = write_source_file(name, str(tmp_path))
    reference = np.array(manifest(name)["logits"])
    _, kept, source = convert_file(path)
    names = class_names(source, kept["class_num"])
    assert kept["class_num"] == 1001 and names[:1000] == imagenet_class_names() and names[1000] == UNLABELLED
    net, dropped, _ = convert_file(path, class_num=1000)
    assert dropped["class_num"] == 1000
    assert relative_error(logits_of(net), np.delete(reference, 1000, axis=1)) < 1e-4
    with pytest.raises(UserError, match="has 1001 classes, --class_num says 999"):
        convert_file(path, class_num=999)


@pytest.mark.parametrize("name", EXPORTED)
def test_our_checkpoints_load_into_the_mindspore_sources_own_networks_with_their_logits(name):
    """export_<source>_<model>.json: our network with the source's options and seeded weights, written by
    `export_weights`, was loaded by the source's own code (mindcv's create_model(checkpoint_path=...), the zoo's
    network + load_param_into_net), which loaded every one of its parameters from it and computed these logits.  Now:
    the same names, shapes and values are written, and our network gives those logits (lowered: the conversion test
    of the same architecture)."""
    spec = manifest(f"export_{name}")
    source = next(each for each in SOURCES if each.key == spec["source"])
    net, architecture = our_network(spec["source"], spec["model"], spec["classes"])
    assert architecture == spec["architecture"]
    weights = export_weights(net, architecture, source, name)
    assert [[key, list(value.shape), digest(value)] for key, value in weights.items()] == spec["tensors"]
    assert relative_error(logits_of(net), np.array(spec["logits"])) < 1e-4


def test_a_network_the_source_does_not_compute_is_not_written_for_it():
    """Our paper's MobileNetV1 for mindcv (whose V1 has ReLU and epsilon 1e-5) and a MobileNetV3 at a width mindcv
    builds with other channel counts are refused, saying what differs."""
    mindcv = next(each for each in SOURCES if each.key == "mindcv")
    paper = {"model": "mobilenet_v1", "width_mult": 1.0, "bn_eps": 1e-3, **PAPER_OPTIONS}
    with pytest.raises(UserError) as err:
        export_weights(create_model("mobilenet_v1"), paper, mindcv, "v1.ckpt")
    assert str(err.value) == ("v1.ckpt: mindcv's mobilenet_v1 computes otherwise than this checkpoint's network: it "
                              "has bn_eps 1e-05 (this one 0.001), activation relu (this one relu6); train with "
                              "--bn_eps 1e-05 --activation relu to hand the weights to mindcv")
    narrow = {**paper, "model": "mobilenet_v3_small", "width_mult": 0.75, "bn_eps": 1e-5, "padding": "same_depthwise"}
    with pytest.raises(UserError, match="mindcv builds mobilenet_v3_small at width 0.75 with other channel counts"):
        export_weights(create_model("mobilenet_v3_small", width_mult=0.75), narrow, mindcv, "v3.ckpt")


def test_a_checkpoint_of_ours_is_not_converted(tmp_path):
    path = str(tmp_path / "ours.ckpt")
    ms.save_checkpoint(create_model("mobilenet_v1", 10, 0.25), path)
    with pytest.raises(UserError, match=re.escape("ours.ckpt: cannot convert (this repository): it is already a "
                                                  "checkpoint of this repository: use it as it is")):
        recognise(read_weights(path), path)


def test_a_file_that_fits_none_of_our_models_names_the_first_tensor(tmp_path):
    spec = manifest("torchvision_mobilenet_v3_small")
    weights = synthetic_weights(spec["tensors"])
    weights["features.4.block.0.0.weight"] = np.zeros((90, 24, 1, 1), np.float32)  # 96 expansion channels: now 90
    weights["features.4.block.0.1.weight"] = np.zeros(90, np.float32)
    path = str(tmp_path / "odd.safetensors")
    save_file(weights, path)
    tensors = read_weights(path)
    with pytest.raises(UserError) as err:
        convert(tensors, recognise(tensors, path), path)
    assert str(err.value) == (f"{path} (torchvision) fits any of our models nowhere: closest is mobilenet_v3_small "
                              f"x1, where tensor 'features.4.block.0.0.weight' has shape (90, 24, 1, 1), the "
                              f"network's 'features.4.block.0.0.weight' (96, 24, 1, 1)")


def test_torch_files_without_torch_and_unknown_files_are_one_line_errors(tmp_path):
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"\x80\x02}q\x00.")
    other = tmp_path / "model.h5"
    other.write_bytes(b"x")
    result = run_script("convert_weights.py", "--input", str(pth), "--output", str(tmp_path / "out.ckpt"))
    if not _torch_installed():  # the test environment has no torch (requirements-test.txt)
        assert_user_error(result, re.escape("reading a PyTorch file needs torch (pip install torch); or download the "
                                            "model's .safetensors file instead"))
    result = run_script("convert_weights.py", "--input", str(other), "--output", str(tmp_path / "out.ckpt"))
    assert_user_error(result, re.escape("unknown weight file type '.h5'; expected .safetensors, .pth, .pt, .bin or "
                                        ".ckpt"))
    assert not (tmp_path / "out.ckpt").exists()


def _torch_installed():
    import importlib.util  # pylint: disable=import-outside-toplevel
    return importlib.util.find_spec("torch") is not None


def test_each_source_records_the_transform_its_accuracy_was_measured_with(tmp_path):
    """timm's hub config.json gives its own (tf_*: 256 bilinear, mean = std = 0.5; the ra4 MobileNetV3-large's crop_pct
    0.95: 235 bicubic, mean = std = 0.5); without one timm's MobileNetV3
    weights were measured with 256 bicubic and ImageNet's statistics, its MobileNetV1 weights with 256 bicubic and
    mean = std = 0.5 (its pretrained_cfg: crop_pct 0.875 at 224); torchvision's with 256 bilinear, its
    MobileNetV3-large IMAGENET1K_V2 file (by its name) 232; the zoo's and mindcv's 256 bilinear.  Options override."""
    imagenet = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    inception = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    sources = {source.key: source for source in SOURCES}
    tf_path = write_source_file("timm_tf_mobilenetv3_large_100", str(tmp_path))
    assert evaluation_transform(sources["timm_tf"], "mobilenet_v3_large", {}, tf_path, hub_config(tf_path)) == {
        "eval_resize": 256, "interpolation": "bilinear", **inception}
    ra4 = {"architecture": "mobilenetv3_large_100", "pretrained_cfg": {  # mobilenetv3_large_100.ra4_e3600_r224_in1k
        "input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 0.95, "mean": [0.5] * 3, "std": [0.5] * 3}}
    assert evaluation_transform(sources["timm"], "mobilenet_v3_large", {}, "model.safetensors", ra4) == {
        "eval_resize": 235, "interpolation": "bicubic", **inception}
    assert evaluation_transform(sources["timm"], "mobilenet_v1", {}) == {
        "eval_resize": 256, "interpolation": "bicubic", **inception}
    assert evaluation_transform(sources["timm"], "mobilenet_v3_large", {"eval_resize": 0}) == {
        "eval_resize": 256, "interpolation": "bicubic", **imagenet}
    assert evaluation_transform(sources["torchvision"], "mobilenet_v3_large", {}, "x/mobilenet_v3_large-5c1a4163.pth") \
        == {"eval_resize": 232, "interpolation": "bilinear", **imagenet}
    assert evaluation_transform(sources["torchvision"], "mobilenet_v3_small", {"eval_resize": 240, "input": "x.pth"}) \
        == {"eval_resize": 240, "interpolation": "bilinear", **imagenet}
    for key in ("zoo", "mindcv"):
        assert evaluation_transform(sources[key], "mobilenet_v1", {}) == {
            "eval_resize": 256, "interpolation": "bilinear", **imagenet}


def test_convert_weights_command_line_mistakes_are_one_line(tmp_path):
    source = write_source_file("timm_mobilenetv3_small_075", str(tmp_path))
    assert_user_error(run_script("convert_weights.py", "--input", source, "--output", str(tmp_path / "o.ckpt"),
                                 "--image_std", "0.5"),
                      re.escape("command line: argument --image_std: expected three comma-separated numbers, got "
                                "'0.5'"))
    assert_user_error(run_script("convert_weights.py", "--input", source, "--output", str(tmp_path / "o.ckpt"),
                                 "--to", "mindcv", "--class_num", "1000"),
                      re.escape("--to writes the checkpoint --input as it is; --class_num: for converting another "
                                        "source's weights into this repository's"))


def test_convert_weights_writes_a_checkpoint_that_eval_and_export_take_as_it_is(tmp_path):
    """The command end to end on timm's TensorFlow weights in their hub folder: the checkpoint holds the model card
    (model, width, epsilon 1e-3, padding same, the config.json's evaluation transform, class names) and export.py
    rebuilds the exact network from it alone."""
    source = write_source_file("timm_tf_mobilenetv3_small_075", str(tmp_path))
    out = str(tmp_path / "converted.ckpt")
    result = run_script("convert_weights.py", "--input", source, "--output", out)
    assert result.returncode == 0, result.stderr
    assert (f"(timm's TensorFlow ports, mobilenet_v3_small x0.75, 10 classes, BatchNorm eps 0.001, padding same) "
            f"-> {out}; evaluation: shorter side 256 (bilinear), centre crop 224, mean [0.5, 0.5, 0.5], std [0.5, 0.5, "
            f"0.5]") in result.stdout
    card = read_card(read_checkpoint(out), out)
    assert {key: card[key] for key in ARCHITECTURE_KEYS + ("class_num", "eval_resize", "interpolation")} == {
        "model": "mobilenet_v3_small", "width_mult": 0.75, "bn_eps": 1e-3, **PAPER_OPTIONS, "padding": "same",
        "class_num": 10, "eval_resize": 256, "interpolation": "bilinear"}
    result = run_script("export.py", "--config_path", "default_config.yaml", "--ckpt_file", out, "--file_name",
                        str(tmp_path / "converted"), "--file_format", "MINDIR", "--image_size", "64")
    assert result.returncode == 0, result.stderr
    assert "padding=same" in result.stdout and "from its model card" in result.stdout
    assert "dataset=imagenet2012" in result.stdout
    assert "max abs difference from the checkpoint's network 0\n" in result.stdout
    with open(tmp_path / "converted.json", encoding="utf-8") as src:
        assert json.load(src)["padding"] == "same"


def test_convert_weights_to_mindcv_writes_mindcvs_own_file_back(tmp_path):
    """mindcv's MobileNetV1 file -> ours with class_num 1000 (output 1000 dropped) -> --to mindcv: mindcv's names and
    values, less output 1000."""
    name = "mindcv_mobilenet_v1_025"
    source = write_source_file(name, str(tmp_path))
    ours, theirs = str(tmp_path / "ours.ckpt"), str(tmp_path / "theirs.ckpt")
    result = run_script("convert_weights.py", "--input", source, "--output", ours, "--class_num", "1000")
    assert result.returncode == 0, result.stderr
    assert "(mindcv, mobilenet_v1 x0.25, 1000 classes, BatchNorm eps 1e-05, activation relu)" in result.stdout
    result = run_script("convert_weights.py", "--input", ours, "--output", theirs, "--to", "mindcv")
    assert result.returncode == 0, result.stderr
    written = {key: value.asnumpy() for key, value in ms.load_checkpoint(theirs).items()}
    original = synthetic_weights(manifest(name)["tensors"])
    original["classifier.weight"] = original["classifier.weight"][:1000]
    original["classifier.bias"] = original["classifier.bias"][:1000]
    assert set(written) == set(original) and all(np.array_equal(written[key], original[key]) for key in original)
