"""train.py -> checkpoints and metrics -> eval.py -> export.py, fine-tuning and resume, as a user runs them."""
import csv
import json
import os
import re
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

from src.demo_data import cifar10_records
from src.model_card import read_card
from src.lr_generator import get_lr
from src.model_utils.config import ROOT_DIR
from src.models import PAPER_OPTIONS

pytestmark = pytest.mark.slow

FAST = ["--config_path", os.path.join(ROOT_DIR, "demo_config.yaml"), "--width_mult", "0.25",
        "--num_parallel_workers", "2", "--log_interval", "20", "--lr_max", "0.1", "--warmup_epochs", "0"]
STEPS_PER_EPOCH = 1437 // 32


def run_script(script, *args, check=True):
    proc = subprocess.run([sys.executable, os.path.join(ROOT_DIR, script), *map(str, args)], cwd=ROOT_DIR,
                          capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.csv"), newline="", encoding="utf-8") as src:
        return list(csv.DictReader(src))


def weights(path):
    return {name: p.asnumpy() for name, p in ms.load_checkpoint(path).items()}


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory):
    """Three epochs of MobileNetV1-0.25 on the demo CIFAR files, evaluating every epoch."""
    out = str(tmp_path_factory.mktemp("run"))
    proc = run_script("train.py", *FAST, "--dataset_path", demo_data["cifar10"], "--epoch_size", 3,
                      "--save_checkpoint_path", out, "--keep_checkpoint_max", 3, "--run_eval", "True")
    return {"out": out, "log": proc.stdout, "data": demo_data["cifar10"]}


def test_training_writes_checkpoints_metrics_and_logs(trained):
    out, log = trained["out"], trained["log"]
    ckpt_dir = os.path.join(out, "ckpt_0")
    assert sorted(os.listdir(ckpt_dir)) == ["mobilenet_v1-1_44.ckpt", "mobilenet_v1-2_44.ckpt",
                                            "mobilenet_v1-3_44.ckpt", "mobilenet_v1_best.ckpt"]
    rows = read_metrics(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [int(r["global_step"]) for r in rows] == [44, 88, 132]
    assert all(0 <= float(r["top_1_accuracy"]) <= 1 and float(r["images_per_second"]) > 0 for r in rows)
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert re.search(r"^epoch: 3 step: 44, loss is \d+\.\d+", log, re.MULTILINE)
    assert re.search(r"^Epoch time: \d+\.\d+, per step time: \d+\.\d+, [\d.]+ img/s, time left: 0:00:00$",
                     log, re.MULTILINE)
    saved = open(os.path.join(out, "config.yaml"), encoding="utf-8").read()
    assert "width_mult: 0.25" in saved and "epoch_size: 3" in saved
    state = weights(os.path.join(ckpt_dir, "mobilenet_v1-3_44.ckpt"))
    assert int(state["global_step"].reshape(-1)[0]) == 132 and int(state["epoch_num"]) == 3
    assert any(name.startswith("moments.") for name in state)  # optimizer state travels with the weights
    # the model card: a checkpoint says what it is; the class names are the demo data's batches.meta.txt
    card = read_card(ms.load_checkpoint(os.path.join(ckpt_dir, "mobilenet_v1_best.ckpt")), "best")
    assert card == {"model": "mobilenet_v1", "width_mult": 0.25, "bn_eps": 1e-3, **PAPER_OPTIONS, "dataset": "cifar10",
                    "class_num": 10, "image_size": 32, "eval_resize": 0, "interpolation": "bilinear",
                    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
                    "class_names": [str(d) for d in range(10)]}
    with open(os.path.join(out, "metrics.png"), "rb") as picture:
        assert picture.read(8) == b"\x89PNG\r\n\x1a\n"


def test_eval_scores_best_checkpoint(trained, tmp_path):
    best = os.path.join(trained["out"], "ckpt_0", "mobilenet_v1_best.ckpt")
    result_file = tmp_path / "result.json"
    proc = run_script("eval.py", *FAST, "--dataset_path", trained["data"], "--checkpoint_path", best,
                      "--result_file", result_file, "--confusion_matrix", tmp_path / "confusion.png")
    line = re.search(r"^result: \{'top_1_accuracy': ([\d.]+), 'top_5_accuracy': ([\d.]+), 'loss': ([\d.]+)\} "
                     r"ckpt=(.+)$", proc.stdout, re.MULTILINE)
    assert line and line.group(4) == best
    result = json.loads(result_file.read_text())
    assert result["top_1_accuracy"] == pytest.approx(float(line.group(1)))
    best_epoch_top1 = max(float(r["top_1_accuracy"]) for r in read_metrics(trained["out"]))
    assert result["top_1_accuracy"] == pytest.approx(best_epoch_top1, abs=1e-6)
    assert result["top_1_accuracy"] * 360 == pytest.approx(round(result["top_1_accuracy"] * 360), abs=1e-6)
    # the confusion matrix (counts as CSV beside the picture) and the per-class table agree with the accuracy
    with open(tmp_path / "confusion.csv", newline="", encoding="utf-8") as src:
        rows = list(csv.reader(src))
    assert rows[0] == ["true \\ predicted"] + [str(d) for d in range(10)]
    counts = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    assert counts.sum() == 360 and np.trace(counts) == round(result["top_1_accuracy"] * 360)
    assert [(c["class"], c["images"]) for c in result["per_class"]] == [(str(d), counts[d].sum()) for d in range(10)]
    assert [c["top_1_accuracy"] for c in result["per_class"]] == pytest.approx(counts.diagonal() / counts.sum(1))
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert "\r" not in proc.stderr  # no progress line when stderr is not a terminal


@pytest.mark.parametrize("file_format,suffix", [("MINDIR", ".mindir"), ("ONNX", ".onnx")])
def test_export_reloads_with_same_output(trained, tmp_path, file_format, suffix):
    best = os.path.join(trained["out"], "ckpt_0", "mobilenet_v1_best.ckpt")
    name = tmp_path / "exported"
    proc = run_script("export.py", *FAST, "--ckpt_file", best, "--file_name", name, "--file_format", file_format)
    assert os.path.isfile(f"{name}{suffix}")
    assert "input 1x3x32x32" in proc.stdout
    difference = re.search(r"max abs difference from the checkpoint's network ([\d.e+-]+)", proc.stdout)
    assert difference and float(difference.group(1)) < 1e-4


def test_predict_agrees_with_eval_and_with_the_exported_models(trained, tmp_path):
    """The 360 test digits as PNG files (lossless) in class folders, plus a file that is no image: predict.py's top-1
    scores what eval.py scores on the CIFAR files, the undecodable file is skipped by name, and the MINDIR and ONNX
    files export.py writes give the checkpoint's probabilities."""
    raw = np.fromfile(os.path.join(trained["data"], "test_batch.bin"), np.uint8).reshape(-1, 3073)
    images = tmp_path / "images"
    for index, record in enumerate(raw):
        folder = images / str(record[0])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(record[1:].reshape(3, 32, 32).transpose(1, 2, 0)).save(folder / f"{index:04d}.png")
    (images / "notes.png").write_bytes(b"not an image")
    best = os.path.join(trained["out"], "ckpt_0", "mobilenet_v1_best.ckpt")
    proc = run_script("predict.py", *FAST, "--checkpoint_path", best, "--image", images, "--top_k", 3,
                      "--result_file", tmp_path / "checkpoint.json")
    assert f"WARNING: {images / 'notes.png'}: skipped, cannot decode it as an image" in proc.stderr
    assert f"predicted 360 of 361 images with {best}" in proc.stdout
    predicted = json.loads((tmp_path / "checkpoint.json").read_text())
    assert len(predicted) == 360 and all(len(p["top"]) == 3 for p in predicted)
    top1 = np.mean([p["top"][0]["name"] == os.path.basename(os.path.dirname(p["image"])) for p in predicted])
    evaluated = run_script("eval.py", *FAST, "--dataset_path", trained["data"], "--checkpoint_path", best)
    assert float(re.search(r"'top_1_accuracy': ([\d.]+)", evaluated.stdout).group(1)) == pytest.approx(top1, abs=1e-9)
    some = images / "7"
    for file_format, suffix in (("MINDIR", ".mindir"), ("ONNX", ".onnx")):
        run_script("export.py", *FAST, "--ckpt_file", best, "--file_name", tmp_path / "net", "--file_format",
                   file_format)
        run_script("predict.py", *FAST, "--model_file", tmp_path / f"net{suffix}", "--image", some, "--top_k", 10,
                   "--result_file", tmp_path / f"{file_format}.csv")
        with open(tmp_path / f"{file_format}.csv", newline="", encoding="utf-8") as src:
            exported = {(row["image"], row["name"]): float(row["probability"]) for row in csv.DictReader(src)}
        reference = {(p["image"], c["name"]): c["probability"] for p in predicted if p["image"].startswith(str(some))
                     for c in p["top"]}
        assert len(exported) == 10 * len(os.listdir(some))
        assert all(abs(exported[key] - value) < 1e-4 for key, value in reference.items())


# matplotlib's first colours (its default cycle): a run's colour, in the order the runs are given
RUN_COLOURS = [(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C), (0xD6, 0x27, 0x28)]


def curve_extents(panel: np.ndarray) -> list:
    """For each colour of `RUN_COLOURS`: the fraction of the panel's width its pixels span (0 when absent)."""
    extents = []
    for colour in RUN_COLOURS:
        columns = np.nonzero((np.abs(panel[:, :, :3].astype(int) - colour) <= 12).all(axis=2).any(axis=0))[0]
        extents.append((columns[-1] - columns[0] + 1) / panel.shape[1] if columns.size else 0.0)
    return extents


def test_plot_metrics_overlays_runs(trained, tmp_path):
    """Two runs overlaid, as a user compares them: the run of this module and a copy in a folder of the same name
    whose every value differs. Each of the four panels of the 1100x700 picture (loss, LR; accuracy, images/s) draws
    each run across the panel (a legend's sample is short) in the run's own colour, the same in every panel; the
    labels tell the two folders of one name apart; without --output the picture goes to the current folder."""
    with open(os.path.join(trained["out"], "metrics.csv"), newline="", encoding="utf-8") as src:
        rows = list(csv.DictReader(src))
    other = tmp_path / "copy" / os.path.basename(trained["out"])
    other.mkdir(parents=True)
    with open(other / "metrics.csv", "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: value if key in ("epoch", "global_step") else f"{float(value) * 0.7:.6f}"
                             for key, value in row.items()})
    proc = run_script("plot_metrics.py", trained["out"], other, "--output", tmp_path / "both.png")
    assert f"wrote {tmp_path / 'both.png'}" in proc.stdout
    picture = np.asarray(Image.open(tmp_path / "both.png").convert("RGB"))
    assert picture.shape == (700, 1100, 3)
    panels = {"loss": picture[:350, :550], "lr": picture[:350, 550:], "accuracy": picture[350:, :550],
              "images/s": picture[350:, 550:]}
    for title, panel in panels.items():
        extents = curve_extents(panel)
        assert extents[0] > 0.5 and extents[1] > 0.5 and extents[2:] == [0.0, 0.0], (title, extents)
    from src.plots import run_labels  # pylint: disable=import-outside-toplevel
    name = os.path.basename(trained["out"])
    assert run_labels([trained["out"], str(other)]) == [
        f"{os.path.basename(os.path.dirname(trained['out']))}/{name}", f"copy/{name}"]
    before = os.path.getmtime(os.path.join(trained["out"], "metrics.png"))
    proc = subprocess.run([sys.executable, os.path.join(ROOT_DIR, "plot_metrics.py"), trained["out"]],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True)
    assert f"wrote {name}_metrics.png" in proc.stdout and (tmp_path / f"{name}_metrics.png").is_file()
    assert os.path.getmtime(os.path.join(trained["out"], "metrics.png")) == before  # the run's own is left alone


def test_resume_continues_steps_lr_and_weights_exactly(trained, tmp_path):
    """Resuming epoch 2's checkpoint in a fresh folder reproduces epoch 3 of the uninterrupted run."""
    out = str(tmp_path / "resumed")
    epoch2 = os.path.join(trained["out"], "ckpt_0", "mobilenet_v1-2_44.ckpt")
    proc = run_script("train.py", *FAST, "--dataset_path", trained["data"], "--epoch_size", 3,
                      "--save_checkpoint_path", out, "--resume", epoch2)
    assert f"resumed {epoch2}: 2 epochs and 0 steps done, global step 88" in proc.stdout
    assert "epoch: 1 step" not in proc.stdout and "epoch: 3 step: 44" in proc.stdout
    rows = read_metrics(out)
    assert [(r["epoch"], r["global_step"]) for r in rows] == [("3", "132")]
    expected_lr = get_lr(0.0, 0.1, 0.0, 0, 3, STEPS_PER_EPOCH, "poly")[131]
    assert float(rows[0]["lr"]) == pytest.approx(float(expected_lr), rel=1e-5)
    assert rows[0]["lr"] == read_metrics(trained["out"])[2]["lr"]
    resumed = weights(os.path.join(out, "ckpt_0", "mobilenet_v1-3_44.ckpt"))
    uninterrupted = weights(os.path.join(trained["out"], "ckpt_0", "mobilenet_v1-3_44.ckpt"))
    assert resumed.keys() == uninterrupted.keys()
    assert [k for k in resumed if not np.array_equal(resumed[k], uninterrupted[k])] == []  # bit for bit


def test_resume_auto_finds_newest_and_finished_run_stops(trained, tmp_path):
    proc = run_script("train.py", *FAST, "--dataset_path", trained["data"], "--epoch_size", 3,
                      "--save_checkpoint_path", trained["out"], "--resume", "auto")
    assert "continuing from " + os.path.join(trained["out"], "ckpt_0", "mobilenet_v1-3_44.ckpt") in proc.stdout
    assert "training already finished (3 of 3 epochs)" in proc.stdout


def test_fine_tune_into_five_classes_drops_head(trained, tmp_path):
    images = np.stack([np.full((32, 32, 3), 40 * c, np.uint8) for c in range(5)] * 20)
    labels = np.array(list(range(5)) * 20)
    data = tmp_path / "five"
    data.mkdir()
    (data / "data_batch_1.bin").write_bytes(cifar10_records(images, labels))
    (data / "test_batch.bin").write_bytes(cifar10_records(images[:25], labels[:25]))
    ten_class = os.path.join(trained["out"], "ckpt_0", "mobilenet_v1-3_44.ckpt")
    out = str(tmp_path / "finetune")
    proc = run_script("train.py", *FAST, "--dataset_path", data, "--class_num", 5, "--epoch_size", 1,
                      "--pre_trained", ten_class, "--save_checkpoint_path", out)
    assert (f"pre_trained checkpoint {ten_class}: its classifier has 10 classes, the model 5: dropping "
            f"classifier.weight, classifier.bias (fine-tuning with a new head)") in proc.stdout
    tuned = weights(os.path.join(out, "ckpt_0", "mobilenet_v1-1_3.ckpt"))
    assert tuned["classifier.weight"].shape == (5, 256)
    # the backbone started from the 10-class weights: the stem moved only a little in 3 steps
    source = weights(ten_class)
    stem = "features.0.0.weight"
    assert np.abs(tuned[stem] - source[stem]).max() < 0.1 * np.abs(source[stem]).max()


def test_missing_pretrained_file_is_an_error(trained, tmp_path):
    proc = run_script("train.py", *FAST, "--dataset_path", trained["data"], "--epoch_size", 1,
                      "--pre_trained", tmp_path / "nope.ckpt", "--save_checkpoint_path", tmp_path / "o",
                      check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"ERROR: pre_trained checkpoint not found: {tmp_path / 'nope.ckpt'}"
    assert "Traceback" not in proc.stderr


def test_saved_config_is_what_ran_and_rebuilds_the_network(tmp_path):
    """train.py with mobilenetv3_config.yaml (MobileNetV3-small, GPU, amp O2) from a converted-like MobileNetV3-large
    x0.75 checkpoint with BatchNorm eps 1e-5 on this CPU: the printed and saved config say what ran (the card's model,
    width and epsilon, CPU, O0), and `--config_path OUTPUT/config.yaml` rebuilds the trained network without the
    checkpoint."""
    from src.checkpoint import build_network, save_checkpoint  # pylint: disable=import-outside-toplevel
    from src.model_card import card_entries  # pylint: disable=import-outside-toplevel
    from src.model_utils.config import get_config  # pylint: disable=import-outside-toplevel
    from src.models import create_model  # pylint: disable=import-outside-toplevel
    source = str(tmp_path / "large.ckpt")
    save_checkpoint(create_model("mobilenet_v3_large", 1000, 0.75, bn_eps=1e-5), source,
                    card_entries({"model": "mobilenet_v3_large", "width_mult": 0.75, "bn_eps": 1e-5, "class_num": 1000,
                                  "dataset": "imagenet2012", "image_size": 224}))
    images = np.stack([np.full((32, 32, 3), 25 * c, np.uint8) for c in range(10)] * 7)
    data = tmp_path / "data"
    data.mkdir()
    (data / "data_batch_1.bin").write_bytes(cifar10_records(images, np.arange(70) % 10))
    out = tmp_path / "out"
    proc = run_script("train.py", "--config_path", "mobilenetv3_config.yaml", "--dataset", "cifar10", "--dataset_path",
                      data, "--class_num", 10, "--image_size", 32, "--batch_size", 32, "--epoch_size", 1,
                      "--warmup_epochs", 0, "--pre_trained", source, "--save_checkpoint_path", out)
    saved = get_config([], config_path=str(out / "config.yaml"))
    assert (saved.model, saved.width_mult, saved.bn_eps, saved.device_target, saved.amp_level) == (
        "mobilenet_v3_large", 0.75, 1e-5, "CPU", "O0")
    assert "model: mobilenet_v3_large\nwidth_mult: 0.75" in proc.stdout.split("effective config")[1]
    trained = ms.load_checkpoint(str(out / "ckpt_0" / "mobilenet_v3_large-1_2.ckpt"))
    rebuilt, _ = build_network(saved)
    assert {p.name: tuple(p.shape) for p in rebuilt.get_parameters()} == {
        name: tuple(trained[name].shape) for name in (p.name for p in rebuilt.get_parameters())}
    assert {cell.eps for _, cell in rebuilt.cells_and_names() if isinstance(cell, ms.nn.BatchNorm2d)} == {1e-5}


def test_exported_models_score_the_checkpoints_accuracy(trained, tmp_path):
    """The zoo's inference step: export.py's MINDIR (batch 32: the last of the 360 test digits' batches is padded, the
    padding not counted) and ONNX (batch 1) files scored by eval.py --model_file and by scripts/run_infer.sh, which
    writes the seed's two acc.log lines in the current folder; the counts are exactly the checkpoint's."""
    best = os.path.join(trained["out"], "ckpt_0", "mobilenet_v1_best.ckpt")
    evaluated = run_script("eval.py", *FAST, "--dataset_path", trained["data"], "--checkpoint_path", best,
                           "--result_file", tmp_path / "checkpoint.json")
    reference = json.loads((tmp_path / "checkpoint.json").read_text())
    assert "evaluating" in evaluated.stdout
    for file_format, batch in (("MINDIR", 32), ("ONNX", 1)):
        name = tmp_path / file_format.lower() / "net"
        run_script("export.py", *FAST, "--ckpt_file", best, "--file_name", name, "--file_format", file_format,
                   "--batch_size", batch)
        model = f"{name}.{file_format.lower()}"
        run_script("eval.py", *FAST, "--dataset_path", trained["data"], "--model_file", model,
                   "--result_file", tmp_path / f"{file_format}.json", "--confusion_matrix", tmp_path / "c.png")
        result = json.loads((tmp_path / f"{file_format}.json").read_text())
        assert result["model"] == model
        for key in ("top_1_accuracy", "top_5_accuracy"):  # counts of 360 images
            assert round(result[key] * 360) == round(reference[key] * 360), (file_format, key)
        assert result["loss"] == pytest.approx(reference["loss"], abs=1e-4)
        assert [row["images"] for row in result["per_class"]] == [row["images"] for row in reference["per_class"]]
        folder = tmp_path / f"infer_{file_format}"
        folder.mkdir()
        proc = subprocess.run(["bash", os.path.join(ROOT_DIR, "scripts", "run_infer.sh"), model, trained["data"]],
                              cwd=folder, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert (folder / "acc.log").read_text() == (f"'top1 acc': {result['top_1_accuracy']}\n"
                                                    f"'top5 acc': {result['top_5_accuracy']}\n")


def test_int8_onnx_is_smaller_and_keeps_the_checkpoints_accuracy(trained, tmp_path):
    """export.py --quantize int8: a QDQ model with int8 weights (per channel) and activations calibrated on training
    images; a third of the float32 file or less, the card says so, and its top-1 on the 360 test digits is within 2
    points of the checkpoint's (measured: the same or better for MobileNetV1 on these digits)."""
    best = os.path.join(trained["out"], "ckpt_0", "mobilenet_v1_best.ckpt")
    for quantize in ("", "int8"):
        run_script("export.py", *FAST, "--ckpt_file", best, "--file_name", tmp_path / f"net{quantize}", "--file_format",
                   "ONNX", "--batch_size", 32, "--quantize", quantize, "--dataset_path", trained["data"],
                   "--calibration_images", 128)
    import onnx  # pylint: disable=import-outside-toplevel
    ops = {node.op_type for node in onnx.load(str(tmp_path / "netint8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert os.path.getsize(tmp_path / "netint8.onnx") < 0.4 * os.path.getsize(tmp_path / "net.onnx")
    card = json.loads((tmp_path / "netint8.json").read_text())
    assert (card["quantize"], card["calibration_images"], card["calibration_method"]) == ("int8", 128, "percentile")
    scores = {}
    for source in ("--checkpoint_path", "--model_file"):
        model = best if source == "--checkpoint_path" else tmp_path / "netint8.onnx"
        run_script("eval.py", *FAST, "--dataset_path", trained["data"], source, model, "--result_file",
                   tmp_path / "result.json")
        scores[source] = json.loads((tmp_path / "result.json").read_text())["top_1_accuracy"]
    assert abs(scores["--model_file"] - scores["--checkpoint_path"]) <= 0.02, scores
    wrong = run_script("export.py", *FAST, "--ckpt_file", best, "--file_format", "MINDIR", "--quantize", "int8",
                       check=False)
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines()[-1] == "ERROR: quantize int8 is for --file_format ONNX (got MINDIR)"
