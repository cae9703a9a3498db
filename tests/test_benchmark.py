"""The benchmark command runs and writes every field (timings are reported, never asserted)."""
import csv
import json
import os
import subprocess
import sys

import pytest

from src.benchmark import MODEL_FIELDS, compare_row
from src.model_utils.config import ROOT_DIR


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
    with open(str(output).replace(".json", ".csv"), newline="", encoding="utf-8") as src:
        rows = list(csv.DictReader(src))
    assert len(rows) == 1 and rows[0]["params"] == "2041872"
    if result["torch_python"] == "":  # no torch in the test environment: said so and skipped
        assert "torch and torchvision are not installed" in proc.stdout
    assert "train_img_s" in proc.stdout and "cifar_pipeline_img_s" in proc.stdout


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
