"""Embedded demo data set: scikit-learn's 1,797 real handwritten digits written as CIFAR-10 binary and as JPEG folders.

`python -m src.demo_data --output DIR` writes, from one fixed stratified 80/20 split (1,437 train / 360 test):

    DIR/cifar10/cifar-10-batches-bin/   data_batch_1.bin .. data_batch_5.bin, test_batch.bin, batches.meta.txt
    DIR/imagefolder/train/<digit>/NNNNN.jpg and DIR/imagefolder/val/<digit>/NNNNN.jpg

Images are 32x32 RGB (the 8x8 grey digits scaled to 0..255, upscaled bicubically, grey copied to three channels);
NNNNN is the digit's index in `load_digits()`.  Every run writes the same bytes, overwriting earlier ones.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from src.errors import UserError

IMAGE_SIZE = 32
TEST_FRACTION = 0.2
SPLIT_SEED = 0
TRAIN_FILE_COUNT = 5
JPEG_SETTINGS = {"quality": 95, "subsampling": 0, "optimize": False}
CLASS_NAMES = tuple(str(digit) for digit in range(10))


def digit_images():
    """All digits as (uint8 images of shape (1797, 32, 32, 3), int labels)."""
    digits = load_digits()
    grey = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    upscaled = np.stack([
        np.asarray(Image.fromarray(image, "L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)) for image in grey
    ])
    return np.repeat(upscaled[..., None], 3, axis=3), digits.target


def split_indices(labels):
    """Fixed stratified 80/20 split of the digit indices: (train indices, test indices)."""
    return train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED)


def cifar10_records(images, labels):
    """CIFAR-10 binary records: per image one label byte, then the R, G and B planes (32x32 bytes each)."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([labels.astype(np.uint8)[:, None], planes], axis=1).tobytes()


def _unwritable(path, err):
    return UserError(f"{path}: cannot write the demo data ({err.strerror or err}); expected a writable output folder")


def _write_bytes(path, data):
    try:
        with open(path, "wb") as file:
            file.write(data)
    except OSError as err:
        raise _unwritable(path, err)


def _make_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise _unwritable(path, err)


def _write_cifar10(folder, images, labels, train, test):
    _make_dir(folder)
    for number, part in enumerate(np.array_split(train, TRAIN_FILE_COUNT), start=1):
        _write_bytes(os.path.join(folder, f"data_batch_{number}.bin"), cifar10_records(images[part], labels[part]))
    _write_bytes(os.path.join(folder, "test_batch.bin"), cifar10_records(images[test], labels[test]))
    _write_bytes(os.path.join(folder, "batches.meta.txt"), "".join(f"{name}\n" for name in CLASS_NAMES).encode())


def _write_image_folder(folder, images, labels, indices):
    for name in CLASS_NAMES:
        _make_dir(os.path.join(folder, name))
    for index in indices:
        path = os.path.join(folder, CLASS_NAMES[labels[index]], f"{index:05d}.jpg")
        try:
            Image.fromarray(images[index], "RGB").save(path, "JPEG", **JPEG_SETTINGS)
        except OSError as err:
            raise _unwritable(path, err)


def write_demo_data(output_dir):
    """Write the demo digits under `output_dir`; returns the paths {"cifar10": ..., "imagefolder": ...}."""
    images, labels = digit_images()
    train, test = split_indices(labels)
    paths = {
        "cifar10": os.path.join(output_dir, "cifar10", "cifar-10-batches-bin"),
        "imagefolder": os.path.join(output_dir, "imagefolder"),
    }
    _write_cifar10(paths["cifar10"], images, labels, train, test)
    _write_image_folder(os.path.join(paths["imagefolder"], "train"), images, labels, train)
    _write_image_folder(os.path.join(paths["imagefolder"], "val"), images, labels, test)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="demo_data", help="folder to write the demo data into")
    args = parser.parse_args(argv)
    try:
        paths = write_demo_data(args.output)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"CIFAR-10 binary (train: data_batch_*.bin, eval: test_batch.bin): {paths['cifar10']}")
    print(f"ImageNet-style JPEG folders (train/ and val/): {paths['imagefolder']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
