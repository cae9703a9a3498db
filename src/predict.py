"""Classify image files: find them, prepare them with the config's evaluation transform (the operations evaluation
maps, from `src.dataset.eval_transforms`), run a checkpoint's network or an exported MINDIR / ONNX file, and report
the top classes."""
import csv
import json
import os

import mindspore as ms
import mindspore.dataset as ds
import mindspore.nn as nn
import numpy as np
from mindspore.dataset import vision

from src.dataset import IMAGE_EXTENSIONS, eval_transforms
from src.errors import UserError
from src.model_utils.cli import log, warn

CIFAR_SIZE = 32
SUFFIXES = tuple(sorted({ext.lower() for ext in IMAGE_EXTENSIONS}))


def find_images(path: str) -> list:
    """`path` itself, or the image files under the folder `path` (recursively, sorted)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError(f"image '{path}' does not exist; expected an image file or a folder of images")
    files = sorted(os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names
                   if os.path.splitext(name)[1].lower() in SUFFIXES)
    if not files:
        raise UserError(f"image folder '{path}' holds no {', '.join(SUFFIXES)} files")
    return files


def _decoded(files):
    """(HWC uint8 RGB image, file index) of each file MindSpore's decoder reads; the others are skipped with a
    warning naming them."""
    decode = vision.Decode()
    for index, path in enumerate(files):
        try:
            with open(path, "rb") as src:
                image = decode(np.frombuffer(src.read(), np.uint8))
        except (OSError, RuntimeError, ValueError) as err:
            warn(f"{path}: skipped, cannot decode it as an image ({str(err).strip().splitlines()[0]})")
            continue
        yield image, np.int32(index)


def image_batches(config, files: list) -> ds.Dataset:
    """Batches ("image" float32 NCHW, "index" into `files`) prepared by the evaluation transform of `config`; a CIFAR-10
    model's images are first resized to its 32x32."""
    operations = eval_transforms(config)
    if config.dataset == "cifar10":
        operations = [vision.Resize((CIFAR_SIZE, CIFAR_SIZE))] + operations
    data = ds.GeneratorDataset(lambda: _decoded(files), ["image", "index"], shuffle=False)
    workers = max(1, min(config.num_parallel_workers, os.cpu_count() or 1))
    return data.map(operations, input_columns="image", num_parallel_workers=workers).batch(config.batch_size)


def exported_card(model_file: str) -> dict:
    """The model card export.py wrote beside `model_file` ({} where there is none)."""
    path = os.path.splitext(model_file)[0] + ".json"
    if not os.path.isfile(path):
        log(f"{path} not found: class names and image preparation from the config")
        return {}
    try:
        with open(path, encoding="utf-8") as card_file:
            return json.load(card_file)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read the model card ({err})") from err


def exported_model(path: str, batch: int = 1):
    """A function from a float32 NCHW batch of any size to logits that runs the exported `path` (.mindir through
    MindSpore, .onnx through onnxruntime), exported for batches of `batch` images (a last partial one is padded)."""
    suffix = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise UserError(f"model_file not found: {path}")
    if suffix == ".mindir":
        try:
            graph = nn.GraphCell(ms.load(path))
        except (RuntimeError, ValueError) as err:
            raise UserError(f"model_file {path} cannot be loaded as MINDIR: {str(err).splitlines()[0]}") from err
        return lambda images: _in_batches(lambda chunk: graph(ms.Tensor(chunk)).asnumpy(), images, batch)
    if suffix == ".onnx":
        try:
            import onnxruntime  # pylint: disable=import-outside-toplevel
        except ImportError:
            raise UserError(f"model_file {path}: running ONNX needs onnxruntime (pip install onnxruntime)") from None
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        image = session.get_inputs()[0]
        batch = image.shape[0] if isinstance(image.shape[0], int) else batch  # the file's own where it says
        return lambda images: _in_batches(lambda chunk: session.run(None, {image.name: chunk})[0], images, batch)
    raise UserError(f"model_file {path}: expected a .mindir or .onnx file")


def _in_batches(run, images, batch):
    """`run` on `images` in batches of exactly `batch` (the last padded with zeros), outputs of the real images."""
    outputs = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        outputs.append(run(padded)[:len(chunk)])
    return np.concatenate(outputs)


def top_classes(logits: np.ndarray, names: list, k: int) -> list:
    """Per row of `logits`: [(class index, name, softmax probability)] of the `k` most probable classes."""
    logits = logits.astype(np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(int(c), names[c], float(row[c])) for c in order] for row, order in zip(probabilities, ranked)]


def write_results(path: str, results: list) -> None:
    """`results` ([(file, [(index, name, probability)])]) as CSV (one row per file and rank) or JSON, by extension."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if path.lower().endswith(".json"):
            with open(path, "w", encoding="utf-8") as out:
                json.dump([{"image": image, "top": [{"rank": rank, "class": index, "name": name,
                                                     "probability": probability}
                                                    for rank, (index, name, probability) in enumerate(top, 1)]}
                           for image, top in results], out, indent=1)
        elif path.lower().endswith(".csv"):
            with open(path, "w", newline="", encoding="utf-8") as out:
                writer = csv.writer(out)
                writer.writerow(["image", "rank", "class", "name", "probability"])
                for image, top in results:
                    for rank, (index, name, probability) in enumerate(top, 1):
                        writer.writerow([image, rank, index, name, f"{probability:.6f}"])
        else:
            raise UserError(f"result_file '{path}': expected a .csv or .json file name")
    except OSError as err:
        raise UserError(f"result_file '{path}' cannot be written: {err.strerror}") from err
