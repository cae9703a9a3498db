"""The benchmark command runs and writes every field (timings are reported, never asserted)."""
import csv
import json
import os
import subprocess
import sys

import pytest

from src.benchmark import MODEL_FIELDS
from src.model_utils.config import ROOT_DIR


@pytest.mark.slow
def test_benchmark_tiny_run_writes_every_field(tmp_path):
    output = tmp_path / "bench" / "result.json"
    proc = subprocess.run([sys.executable, "-m", "src.benchmark", "--models", "mobilenet_v1:0.25,mobilenet_v3_small:0.75",
                           "--batch_size", "4", "--image_size", "32", "--steps", "2", "--warmup", "1", "--repeats", "2",
                           "--compare", "torch", "--torch_python", str(tmp_path / "no-python"), "--output", str(output)],
                          cwd=ROOT_DIR, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TORCH_PYTHON": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    assert [(row["model"], row["width_mult"]) for row in result["models"]] == [("mobilenet_v1", 0.25),
                                                                              ("mobilenet_v3_small", 0.75)]
    for row in result["models"]:
        assert set(MODEL_FIELDS) <= set(row)
        assert all(row[key] > 0 for key in MODEL_FIELDS if key not in ("model",))
    assert result["models"][0]["params"] == 470_072 and result["models"][1]["params"] == 2_041_872
    assert result["pipelines"]["cifar_pipeline_img_s"] > 0 and result["pipelines"]["jpeg_pipeline_img_s"] > 0
    assert result["pipelines"]["jpeg_heavy_pipeline_img_s"] > 0
    with open(str(output).replace(".json", ".csv"), newline="", encoding="utf-8") as src:
        rows = list(csv.DictReader(src))
    assert len(rows) == 2 and rows[1]["params"] == "2041872"
    if result["torch_python"] == "":  # no torch in the test environment: said so and skipped
        assert "torch and torchvision are not installed" in proc.stdout
    assert "train_img_s" in proc.stdout and "cifar_pipeline_img_s" in proc.stdout
