"""Prediction pieces, the model card's rules and the terminal progress line (no training: fast)."""
import csv
import io
import json
import os

import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest
from mindspore.dataset import vision
from PIL import Image

from src.callbacks import TerminalProgress
from src.checkpoint import build_network, checkpoint_in, restore_training, save_checkpoint
from src.dataset import dataset_class_names, eval_transforms
from src.demo_data import cifar10_records
from src.errors import UserError
from src.model_card import card_entries, class_names, make_card
from src.model_utils.config import ROOT_DIR, get_config
from src.models import create_model
from src.predict import find_images, image_batches, top_classes, write_results
from tests.test_reliability import assert_user_error, run_script


class Terminal(io.StringIO):
    def isatty(self):
        return True


def config_for(*argv):
    return get_config(list(argv), config_path="default_config.yaml")


def test_progress_line_only_on_a_terminal():
    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        progress = TerminalProgress(3, stream=stream)
        for _ in range(3):
            progress.advance(32)
    assert pipe.getvalue() == ""
    lines = terminal.getvalue().split("\r")[1:]
    assert [line.split(",")[:2] for line in lines] == [["batch 1/3", " 32 images"], ["batch 2/3", " 64 images"],
                                                       ["batch 3/3", " 96 images"]]
    assert lines[-1].endswith("0:00:00 left\n") and not lines[0].endswith("\n")


def test_find_images_recurses_sorted_and_names_what_is_missing(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.JPG", "a.png", "b/1.jpeg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert find_images(str(tmp_path)) == [str(tmp_path / name) for name in ("a.png", "b/1.jpeg", "b/2.JPG")]
    assert find_images(str(tmp_path / "a.png")) == [str(tmp_path / "a.png")]
    with pytest.raises(UserError, match="image '.*nope' does not exist; expected an image file or a folder"):
        find_images(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="image folder '.*empty' holds no .bmp, .jpeg, .jpg, .png files"):
        find_images(str(tmp_path / "empty"))


def test_top_classes_are_softmax_probabilities_in_order():
    logits = np.array([[1.0, 3.0, 2.0], [0.0, 0.0, 5.0]], np.float32)
    top = top_classes(logits, ["a", "b", "c"], 2)
    expected = np.exp([3.0, 2.0]) / np.exp([1.0, 3.0, 2.0]).sum()
    assert [(index, name) for index, name, _ in top[0]] == [(1, "b"), (2, "c")]
    assert [p for _, _, p in top[0]] == pytest.approx(expected)
    assert top[1][0][:2] == (2, "c")


def test_results_as_csv_or_json(tmp_path):
    results = [("x.png", [(3, "cat", 0.75), (5, "dog", 0.25)])]
    write_results(str(tmp_path / "r.csv"), results)
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as src:
        assert list(csv.reader(src)) == [["image", "rank", "class", "name", "probability"],
                                         ["x.png", "1", "3", "cat", "0.750000"], ["x.png", "2", "5", "dog", "0.250000"]]
    write_results(str(tmp_path / "r.json"), results)
    assert json.loads((tmp_path / "r.json").read_text()) == [
        {"image": "x.png", "top": [{"rank": 1, "class": 3, "name": "cat", "probability": 0.75},
                                   {"rank": 2, "class": 5, "name": "dog", "probability": 0.25}]}]
    with pytest.raises(UserError, match="result_file '.*r.txt': expected a .csv or .json file name"):
        write_results(str(tmp_path / "r.txt"), results)


def test_prediction_prepares_images_as_evaluation_does(tmp_path):
    """A 32x32 image goes through exactly the operations evaluation maps (CIFAR: none but normalisation at 32); a
    larger one is first brought to CIFAR's 32x32."""
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(np.tile(pixels, (2, 2, 1))).save(tmp_path / "big.png")
    config = config_for("--image_size", "32", "--batch_size", "2")
    batch = next(image_batches(config, [str(tmp_path / "a.png"), str(tmp_path / "big.png")])
                 .create_dict_iterator(num_epochs=1, output_numpy=True))
    expected = pixels
    for operation in eval_transforms(config):
        expected = operation(expected)
    assert batch["image"].shape == (2, 3, 32, 32) and list(batch["index"]) == [0, 1]
    np.testing.assert_array_equal(batch["image"][0], expected)


def test_imagenet_evaluation_transform_follows_eval_resize_and_interpolation():
    config = config_for("--dataset", "imagenet2012", "--image_size", "224", "--eval_resize", "232", "--interpolation",
                        "bicubic")
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)
    out = image
    for operation in eval_transforms(config):
        out = operation(out)
    resized = vision.Resize(232, vision.Inter.BICUBIC)(image)
    assert resized.shape == (232, 309, 3) and out.shape == (3, 224, 224)
    expected = vision.CenterCrop(224)(resized)
    expected = vision.HWC2CHW()(vision.Normalize([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])(expected))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    default = config_for("--dataset", "imagenet2012", "--image_size", "224")
    assert [type(op).__name__ for op in eval_transforms(default)][:2] == ["Resize", "CenterCrop"]


def test_class_names_from_the_data_the_card_or_imagenet(tmp_path):
    folder = tmp_path / "cifar"
    folder.mkdir()
    (folder / "data_batch_1.bin").write_bytes(cifar10_records(np.zeros((4, 32, 32, 3), np.uint8), np.arange(4)))
    config = config_for("--dataset_path", str(folder))
    assert dataset_class_names(config)[:2] == ["airplane", "automobile"]  # CIFAR-10's own
    (folder / "batches.meta.txt").write_text("\n".join(f"digit{d}" for d in range(10)) + "\n\n")
    assert dataset_class_names(config) == [f"digit{d}" for d in range(10)]
    for name in ("tulip", "rose"):
        (tmp_path / "flowers" / "train" / name).mkdir(parents=True)
    assert dataset_class_names(config_for("--dataset", "imagenet2012", "--dataset_path", str(tmp_path / "flowers"),
                                          "--class_num", "2")) == ["rose", "tulip"]
    assert class_names({}, 1000)[:2] == ["tench", "goldfish"] and class_names({}, 3) == ["0", "1", "2"]
    assert class_names({"class_names": ["a", "b"]}, 2) == ["a", "b"]


def test_the_model_card_settles_what_the_command_line_does_not(tmp_path, capsys):
    """A checkpoint of MobileNetV3-small 0.75 with epsilon 1e-5 loads under a config that says MobileNetV1 1.0; a
    key given on the command line is the user's word and is kept (then a network that does not fit is refused)."""
    source = config_for("--model", "mobilenet_v3_small", "--width_mult", "0.75", "--bn_eps", "1e-5", "--class_num", "7")
    net = create_model("mobilenet_v3_small", 7, 0.75, bn_eps=1e-5)
    path = str(tmp_path / "card.ckpt")
    save_checkpoint(net, path, card_entries(make_card(source, list("abcdefg"))))
    config = config_for()
    built, card = build_network(config, path)
    assert (config.model, config.width_mult, config.bn_eps, config.class_num) == ("mobilenet_v3_small", 0.75, 1e-5, 7)
    assert card["class_names"] == list("abcdefg")
    assert {cell.eps for _, cell in built.cells_and_names() if isinstance(cell, ms.nn.BatchNorm2d)} == {1e-5}
    assert (f"checkpoint {path}: model=mobilenet_v3_small, width_mult=0.75, bn_eps=1e-05, class_num=7 from its model "
            f"card") in capsys.readouterr().out
    config = config_for("--width_mult", "1.0", "--model", "mobilenet_v3_small")
    with pytest.raises(UserError, match="does not fit this network"):
        build_network(config, path)
    fine_tune = config_for("--class_num", "3")
    build_network(fine_tune, path, fine_tune=True)
    assert (fine_tune.model, fine_tune.class_num) == ("mobilenet_v3_small", 3)  # a new head: the class count stays


@pytest.mark.parametrize("args,message", [
    (["--image", "x.png"], "give one of --checkpoint_path CKPT or --model_file NAME.mindir|NAME.onnx"),
    (["--checkpoint_path", "a.ckpt"], "image is empty; expected --image FILE_OR_FOLDER"),
    (["--model_file", "net.pb", "--image", "x.png"], "model_file not found: net.pb"),
])
def test_predict_usage_errors_are_one_line(args, message, tmp_path):
    assert_user_error(run_script("predict.py", *args, cwd=str(tmp_path)), message.replace("|", r"\|")
                      .replace(".", r"\."))


def named(net) -> dict:
    """The parameters of `net` by their (checkpoint) names."""
    return {p.name: p for p in net.get_parameters()}


def test_a_checkpoint_with_an_ema_gives_its_averages_unless_use_ema_is_false(tmp_path, capsys):
    net = create_model("mobilenet_v1", 10, 0.25)
    averages = {f"ema.{p.name}": ms.Tensor(p.asnumpy() + 1.0) for p in net.trainable_params()}
    path = str(tmp_path / "ema.ckpt")
    save_checkpoint(net, path, averages)
    stem = "features.0.0.weight"
    built, _ = build_network(config_for("--width_mult", "0.25"), path)
    assert np.array_equal(named(built)[stem].asnumpy(), averages["ema." + stem].asnumpy())
    assert f"checkpoint {path}: using its EMA weights (--use_ema False for the trained ones)" in capsys.readouterr().out
    built, _ = build_network(config_for("--width_mult", "0.25", "--use_ema", "False"), path)
    assert np.array_equal(named(built)[stem].asnumpy(), named(net)[stem].asnumpy())


SHIPPED_CONFIGS = ("default_config.yaml", "default_config_imagenet.yaml", "default_config_gpu_imagenet.yaml",
                   "mobilenetv3_config.yaml")


@pytest.mark.slow
def test_an_exported_model_prepares_images_by_its_card_whatever_the_config(tmp_path):
    """A 224-px model of an ImageNet-style data set, exported with its card: predict.py gives the same probabilities
    with every shipped config as written (the CIFAR-10 one would squash photos to 32x32 first; the GPU ones run on
    CPU here), namely those of the card's transform computed here from MindSpore's operations."""
    import onnxruntime  # pylint: disable=import-outside-toplevel
    from mindspore.onnx import export as export_onnx  # pylint: disable=import-outside-toplevel
    config = get_config([], config_path="default_config_imagenet.yaml",
                        overrides={"class_num": 10, "width_mult": 0.25, "eval_resize": 240, "interpolation": "bicubic",
                                   "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]})
    ms.set_seed(0)
    net = create_model("mobilenet_v1", 10, 0.25)
    net.set_train(False)
    model = str(tmp_path / "model")
    export_onnx(net, ms.Tensor(np.zeros((1, 3, 224, 224), np.float32)), file_name=model, input_names=["image"],
                output_names=["logits"])
    with open(model + ".json", "w", encoding="utf-8") as out:
        json.dump({**make_card(config, list("abcdefghij")), "input_shape": [1, 3, 224, 224]}, out)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for name, (height, width) in (("wide.png", (240, 400)), ("tall.png", (500, 330))):
        pattern = np.kron(rng.integers(0, 256, (height // 10, width // 10, 3)), np.ones((10, 10, 1)))
        Image.fromarray(pattern.astype(np.uint8)).save(photos / name)
    session = onnxruntime.InferenceSession(model + ".onnx", providers=["CPUExecutionProvider"])
    expected = {}
    for name in ("tall.png", "wide.png"):
        image = np.array(Image.open(photos / name).convert("RGB"))
        for operation in eval_transforms(config):
            image = operation(image)
        logits = session.run(None, {"image": image[None].astype(np.float32)})[0]
        expected[str(photos / name)] = [(c, p) for c, _, p in top_classes(logits, list("abcdefghij"), 10)[0]]
    for config_file in SHIPPED_CONFIGS:
        result = tmp_path / f"{config_file}.csv"
        proc = run_script("predict.py", "--config_path", config_file, "--model_file", model + ".onnx", "--image",
                          photos, "--top_k", 10, "--result_file", result)
        assert proc.returncode == 0, proc.stderr[-2000:]
        with open(result, newline="", encoding="utf-8") as src:
            rows = list(csv.DictReader(src))
        got = {}
        for row in rows:
            got.setdefault(row["image"], []).append((int(row["class"]), float(row["probability"])))
        assert sorted(got) == sorted(expected), config_file
        for image, top in got.items():
            assert [c for c, _ in top] == [c for c, _ in expected[image]], (config_file, image)
            np.testing.assert_allclose([p for _, p in top], [p for _, p in expected[image]], atol=2e-6)


def test_a_folder_as_checkpoint_takes_its_best_else_its_newest(tmp_path, capsys):
    """eval/predict/export/--pre_trained given a run's output folder: its best checkpoint, else its newest, and say
    which; a folder without checkpoints is a one-line error."""
    folder = tmp_path / "run"
    (folder / "ckpt_0").mkdir(parents=True)
    net = create_model("mobilenet_v1", 10, 0.25)
    for age, name in ((30, "mobilenet_v1-1_44.ckpt"), (10, "mobilenet_v1-3_44.ckpt"), (20, "mobilenet_v1-2_44.ckpt")):
        path = folder / "ckpt_0" / name
        save_checkpoint(net, str(path))
        os.utime(path, (path.stat().st_mtime - age,) * 2)
    assert checkpoint_in(str(folder), "checkpoint_path") == str(folder / "ckpt_0" / "mobilenet_v1-3_44.ckpt")
    assert (f"checkpoint_path {folder} is a folder: using its newest checkpoint "
            f"{folder / 'ckpt_0' / 'mobilenet_v1-3_44.ckpt'}") in capsys.readouterr().out
    best = folder / "ckpt_0" / "mobilenet_v1_best.ckpt"
    save_checkpoint(net, str(best))
    os.utime(best, (best.stat().st_mtime - 100,) * 2)
    assert checkpoint_in(str(folder / "ckpt_0"), "checkpoint_path") == str(best)
    assert "using its best checkpoint" in capsys.readouterr().out
    built, _ = build_network(config_for("--width_mult", "0.25"), str(folder))
    assert built is not None
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="checkpoint_path .*empty is a folder without checkpoints"):
        checkpoint_in(str(tmp_path / "empty"), "checkpoint_path")


def test_resume_of_another_length_says_how_to_train_on(tmp_path):
    path = os.path.join(ROOT_DIR, "tests", "fixtures", "run_f8e7126", "mobilenet_v1-1_44.ckpt")  # a run of 88 steps
    net = create_model("mobilenet_v1", 10, 0.25)
    optimizer = nn.Momentum(net.trainable_params(), 0.1, 0.9)
    with pytest.raises(UserError, match=f"belongs to a run of 88 steps, this run has 176: resume with the same "
                                        f"epoch_size, .*; to train on from it with other settings, start a new run "
                                        f"from its weights: --pre_trained {path} "):
        restore_training(path, net, optimizer, 176)
