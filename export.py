"""Export a checkpoint: python export.py --config_path CONFIG --ckpt_file CKPT --file_name NAME --file_format MINDIR

The network is exported in inference mode with batch size 1 unless --batch_size is given; the written
file is loaded back and its output compared with the checkpoint's own network on the same input.  The checkpoint's
model card (model, width, class names, evaluation transform) is written beside it as NAME.json, which predict.py
reads with --model_file.
"""
import json
import os

import src  # noqa: F401  (first: sets OpenMP's wait policy before MindSpore loads OpenMP, see src/__init__.py)
import mindspore as ms  # noqa: E402  pylint: disable=wrong-import-order
import numpy as np
from mindspore.onnx import export as export_onnx

from src.checkpoint import build_network
from src.errors import UserError
from src.model_utils.cli import log, run
from src.model_utils.config import get_config
from src.model_utils.device import setup_device, target_available
from src.model_card import make_card
from src.dataset import calibration_images
from src.onnx_graph import OPSET, optimize_file
from src.quantize import quantize_int8
from src.predict import exported_model

EXTENSIONS = {"MINDIR": ".mindir", "AIR": ".air", "ONNX": ".onnx"}


def quantized(config, path: str, batch: int) -> None:
    """Replace the float32 ONNX file `path` by its int8 form (`src.quantize`), calibrated on `calibration_images`
    training images of `dataset_path`, prepared as the model's evaluation transform prepares them."""
    if not config.dataset_path:
        raise UserError("quantize int8 calibrates on training images: give --dataset_path (the training data)")
    if (config.height or config.image_size, config.width or config.image_size) != (config.image_size,) * 2:
        raise UserError(f"quantize int8 calibrates at image_size {config.image_size}: export at that size (no "
                        f"--height / --width)")
    images = calibration_images(config, max(config.calibration_images, batch))
    fp32 = path[:-len(".onnx")] + ".float32.onnx"
    os.replace(path, fp32)
    try:
        quantize_int8(fp32, path, images, config.calibration_method)
    finally:
        os.remove(fp32)
    log(f"quantized {path} to int8 (QDQ, per-channel weights; uint8 activations calibrated on {len(images)} training "
        f"images of {config.dataset_path}, {config.calibration_method})")


def main():
    config = get_config(description=__doc__)
    if config.quantize and config.file_format != "ONNX":
        raise UserError(f"quantize {config.quantize} is for --file_format ONNX (got {config.file_format})")
    if config.file_format == "AIR":  # compiled for the device by Ascend's graph engine (`_save_air`, serialization.py)
        if config.device_target != "Ascend":
            raise UserError(f"file_format AIR needs --device_target Ascend (got {config.device_target}): Ascend's "
                            f"graph engine compiles it; or use --file_format MINDIR or ONNX")
        if not target_available("Ascend"):
            raise UserError("file_format AIR needs an Ascend device (none here); use --file_format MINDIR or ONNX")
    setup_device(config)
    checkpoint = config.ckpt_file or config.checkpoint_path
    if not checkpoint:
        raise UserError("ckpt_file is empty; expected --ckpt_file PATH/TO/model.ckpt")
    net, card = build_network(config, checkpoint, "ckpt_file", for_export=True)
    net.set_train(False)
    batch = config.batch_size if "batch_size" in config.cli_keys else 1
    height, width = config.height or config.image_size, config.width or config.image_size
    inputs = np.random.default_rng(0).standard_normal((batch, 3, height, width)).astype(np.float32)
    folder = os.path.dirname(os.path.abspath(config.file_name))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UserError(f"file_name '{config.file_name}': cannot create folder {folder}: {err.strerror}") from err
    if not os.access(folder, os.W_OK):
        raise UserError(f"file_name '{config.file_name}': folder {folder} is not writable")
    if config.file_format == "ONNX":
        export_onnx(net, ms.Tensor(inputs), file_name=config.file_name, input_names=["image"],
                    output_names=["logits"])
        counts = optimize_file(config.file_name + ".onnx")
        log(f"ONNX graph for ONNX Runtime (opset {OPSET}): " + ", ".join(f"{n} {what}" for what, n in counts.items()))
        if config.quantize:
            quantized(config, config.file_name + ".onnx", batch)
    else:
        ms.export(net, ms.Tensor(inputs), file_name=config.file_name, file_format=config.file_format)
    path = config.file_name + EXTENSIONS[config.file_format]
    with open(config.file_name + ".json", "w", encoding="utf-8") as out:
        quantization = {"quantize": config.quantize, "calibration_images": config.calibration_images,
                        "calibration_method": config.calibration_method} if config.quantize else {}
        json.dump({**make_card(config, card.get("class_names"), card.get("source", "")),
                   "input_shape": list(inputs.shape), **quantization}, out, indent=1)
    deprecated = "; MindSpore deprecates AIR and will remove it: prefer MINDIR" if config.file_format == "AIR" else ""
    log(f"exported {path} ({config.file_format}, input {batch}x3x{height}x{width}, from {checkpoint}){deprecated}")
    if config.file_format == "AIR":
        log("reload check skipped: AIR runs on Ascend's inference runtime only")
        return 0
    try:
        reloaded = exported_model(path, batch)(inputs)
    except UserError as err:
        log(f"reload check skipped: {err}")
        return 0
    difference = float(np.max(np.abs(reloaded - net(ms.Tensor(inputs)).asnumpy())))
    log(f"reloaded {path}: max abs difference from the checkpoint's network {difference:.3g}")
    return 0


if __name__ == "__main__":
    run(main)
