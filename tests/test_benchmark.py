"""The benchmark command runs and writes every field (timings are reported, never asserted)."""
import csv
import json
import math
import os
import subprocess
import sys

import mindspore.nn as nn
import pytest

from src.benchmark import MODEL_FIELDS, add_roofline, compare_row
from src.model_utils.config import ROOT_DIR
from src.roofline import bound_seconds, measure_bandwidth, measure_peak, network_counts, roofline_fraction


@pytest.mark.slow
def test_benchmark_tiny_run_writes_every_field(tmp_path):
    output = tmp_path / "bench" / "result.json"
    proc = subprocess.run([sys.executable, "-m", "src.benchmark", "--models", "mobilenet_v3_small:0.75:padding=same",
                           "--batch_size", "4", "--image_size", "32", "--steps", "2", "--warmup", "1", "--repeats", "2",
                           "--compare", "torch,onnxruntime", "--torch_python", str(tmp_path / "no-python"),
                           "--baseline", ROOT_DIR, "--output", str(output)],
                          cwd=ROOT_DIR, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TORCH_PYTHON": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    assert [(row["model"], row["width_mult"], row["options"]) for row in result["models"]] == [
        ("mobilenet_v3_small", 0.75, "padding=same")]
    for row in result["models"]:
        assert set(MODEL_FIELDS) <= set(row)
        assert all(row[key] > 0 for key in MODEL_FIELDS if key not in ("model", "options"))
    assert result["models"][0]["params"] == 2_041_872
    assert result["pipelines"]["cifar_pipeline_img_s"] > 0 and result["pipelines"]["jpeg_pipeline_img_s"] > 0
    assert result["pipelines"]["jpeg_heavy_pipeline_img_s"] > 0
    assert all(row["ort_infer_img_s"] > 0 and row["ort_ratio"] == round(row["infer_img_s"] / row["ort_infer_img_s"], 2)
               for row in result["models"])  # our ONNX export in onnxruntime
    assert all(row["base_train_img_s"] > 0 and row["base_infer_ratio"] == round(
        row["infer_img_s"] / row["base_infer_img_s"], 2) for row in result["models"])  # this checkout as its baseline
    assert all(row[key] > 0 for row in result["models"] for key in (
        "train_bound_ms", "train_roofline_frac", "infer_bound_ms", "infer_roofline_frac", "ort_roofline_frac"))
    assert result["machine"]["mem_gb_s"] > 0 and result["machine"]["peak_gflop_s"] > 0
    with open(str(output).replace(".json", ".csv"), newline="", encoding="utf-8") as src:
        rows = list(csv.DictReader(src))
    assert len(rows) == 1 and rows[0]["params"] == "2041872"
    assert float(rows[0]["infer_roofline_frac"]) > 0 and float(rows[0]["mem_gb_s"]) > 0
    if result["torch_python"] == "":  # no torch in the test environment: said so and skipped
        assert "torch and torchvision are not installed" in proc.stdout
    assert "train_img_s" in proc.stdout and "cifar_pipeline_img_s" in proc.stdout
    assert "train_roofline_frac" in proc.stdout and "peak_gflop_s" in proc.stdout


def test_rounds_give_medians_and_ratios_to_the_faster_torch_layout():
    ours = [{"model": "m", "batch_size": 32, "macs_m": 100.0, "train_img_s": rate, "train_data_img_s": rate - 1,
             "infer_img_s": 3 * rate} for rate in (10.0, 30.0, 20.0)]
    runs = {"ours": ours, "torch": [{"train_img_s": 10.0, "infer_img_s": 100.0}] * 3,
            "torch_cl": [{"train_img_s": r, "infer_img_s": 50.0} for r in (8.0, 16.0, 12.0)],
            "ort": [{"infer_img_s": r} for r in (40.0, 80.0, 120.0)],
            "base": [{"train_img_s": r, "infer_img_s": 2 * r} for r in (25.0, 5.0, 16.0)]}
    row = compare_row(runs)
    assert (row["train_img_s"], row["infer_img_s"], row["train_data_img_s"]) == (20.0, 60.0, 19.0)
    assert (row["torch_cl_train_img_s"], row["train_ratio"], row["infer_ratio"]) == (12.0, 1.67, 0.6)
    assert (row["ort_infer_img_s"], row["ort_ratio"], row["train_ms_per_step"]) == (80.0, 0.75, 1600.0)
    assert (row["base_train_img_s"], row["base_train_ratio"], row["base_infer_ratio"]) == (16.0, 1.25, 1.88)


def test_roofline_counts_of_a_tiny_network_by_hand():
    # a 3x4x4 image -> conv 3->2, 3x3 valid -> 2x2x2 -> BN -> ReLU -> flatten 8 -> dense 8->5 (bias); batch 2
    net = nn.SequentialCell(nn.Conv2d(3, 2, 3, pad_mode="valid"), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                            nn.Dense(8, 5))
    image, activations, batch = 3 * 4 * 4, 2 * 2 * 2 + 5, 2  # 48 input values; layer outputs: conv 8 + dense 5
    params = 2 * 3 * 3 * 3 + 2 + 2 + 8 * 5 + 5  # conv weight 54, BN gamma + beta 4, dense 40 + 5: 103
    macs = 2 * 2 * 2 * 3 * 3 * 3 + 8 * 5  # conv: 8 outputs x 27 taps = 216; dense 40: 256
    assert (image, activations, params, macs) == (48, 13, 103, 256)
    counts = network_counts(net, 4, batch)
    # inference: input read once, each layer output written + read, weights read: 4 B x (2 x (48 + 2 x 13) + 103)
    assert counts["infer_bytes"] == 4 * (batch * (image + 2 * activations) + params) == 1004
    # training: forward (48 + 2 x 13) + backward reads the saved input and outputs (48 + 13) and writes + reads their
    # gradients (2 x 13), per image; weights, gradients and momentum once each (3 x 103)
    per_image = (image + 2 * activations) + (image + activations) + 2 * activations
    assert per_image == 161
    assert counts["train_bytes"] == 4 * (batch * per_image + 3 * params) == 2524
    assert counts["infer_flops"] == 2 * macs * batch == 1024  # 2 FLOPs a multiply-add
    assert counts["train_flops"] == 3 * 1024  # forward, input gradient, weight gradient


def test_roofline_bound_is_the_slower_term_and_the_fraction_bound_over_measured():
    assert bound_seconds(2e9, 1e9, 10.0, 100.0) == 0.2  # memory: 2 GB at 10 GB/s; FLOPs 1 GFLOP at 100: 0.01 s
    assert bound_seconds(1e8, 5e10, 10.0, 100.0) == 0.5  # compute: 50 GFLOP at 100 GFLOP/s; bytes 0.01 s
    assert roofline_fraction(0.1, 32, 160.0) == pytest.approx(0.5)  # 32 images at 160 img/s: 0.2 s, bound 0.1 s
    row = {"batch_size": 32, "train_mb": 1000.0, "train_gflop": 20.0, "infer_mb": 300.0, "infer_gflop": 8.0,
           "train_img_s": 64.0, "infer_img_s": 320.0, "torch_train_img_s": 16.0, "torch_cl_train_img_s": 32.0,
           "torch_infer_img_s": 80.0, "torch_cl_infer_img_s": 40.0, "ort_infer_img_s": 640.0}
    add_roofline(row, {"mem_gb_s": 10.0, "peak_gflop_s": 100.0})
    # training: max(1 GB / 10 GB/s, 20 GFLOP / 100) = 0.2 s; ours 32 / 64 = 0.5 s a step, torch's faster 1 s
    assert (row["train_bound_ms"], row["train_roofline_frac"], row["torch_train_roofline_frac"]) == (200.0, 0.4, 0.2)
    # inference: max(0.03 s, 0.08 s) = 0.08 s; ours 0.1 s, torch's faster (NCHW) 0.4 s, onnxruntime 0.05 s
    assert (row["infer_bound_ms"], row["infer_roofline_frac"]) == (80.0, 0.8)
    assert (row["torch_infer_roofline_frac"], row["ort_roofline_frac"]) == (0.2, 1.6)


def test_bandwidth_and_peak_measurements_are_plausible():
    bandwidth = measure_bandwidth(2, values=1 << 22, repeats=2)  # GB/s
    peak = measure_peak(size=256, repeats=2)  # GFLOP/s
    assert math.isfinite(bandwidth) and 0.1 < bandwidth < 10_000
    assert math.isfinite(peak) and 0.1 < peak < 100_000
