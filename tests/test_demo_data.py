"""The embedded demo data set: real digits, a fixed stratified split, official CIFAR-10 layout, deterministic bytes."""
import os

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from src.demo_data import digit_images, main, split_indices, write_demo_data
from src.errors import UserError

RECORD_BYTES = 3073


def tree_bytes(root):
    """{relative path: file bytes} of every file under root."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as file:
                files[os.path.relpath(path, root)] = file.read()
    return files


def read_records(path):
    raw = np.fromfile(path, dtype=np.uint8)
    assert raw.size % RECORD_BYTES == 0
    return raw.reshape(-1, RECORD_BYTES)


def test_digit_images_are_the_sklearn_digits_upscaled_to_grey_rgb():
    images, labels = digit_images()
    digits = load_digits()
    assert images.shape == (1797, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, digits.target)
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 0] == images[..., 2]).all()
    assert images.min() == 0 and images.max() == 255
    block_means = images[..., 0].reshape(1797, 8, 4, 8, 4).mean(axis=(2, 4))
    correlation = np.corrcoef(block_means.ravel(), digits.images.ravel())[0, 1]
    assert correlation > 0.95


def test_split_is_fixed_stratified_80_20():
    labels = load_digits().target
    train, test = split_indices(labels)
    assert (len(train), len(test)) == (1437, 360)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(1797))
    test_per_class = np.bincount(labels[test], minlength=10)
    assert (np.abs(test_per_class - 0.2 * np.bincount(labels)) <= 1).all()
    again_train, again_test = split_indices(labels)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(test, again_test)


def test_cifar10_files_have_the_official_record_layout(demo_data):
    folder = demo_data["cifar10"]
    assert sorted(os.listdir(folder)) == ["batches.meta.txt"] + [f"data_batch_{i}.bin" for i in range(1, 6)] + [
        "test_batch.bin"]
    counts = [os.path.getsize(os.path.join(folder, f"data_batch_{i}.bin")) / RECORD_BYTES for i in range(1, 6)]
    assert counts == [288, 288, 287, 287, 287]
    assert os.path.getsize(os.path.join(folder, "test_batch.bin")) == 360 * RECORD_BYTES
    with open(os.path.join(folder, "batches.meta.txt")) as file:
        assert file.read().split() == [str(digit) for digit in range(10)]

    images, labels = digit_images()
    train, test = split_indices(labels)
    train_records = np.concatenate([read_records(os.path.join(folder, f"data_batch_{i}.bin")) for i in range(1, 6)])
    for records, indices in ((train_records, train), (read_records(os.path.join(folder, "test_batch.bin")), test)):
        np.testing.assert_array_equal(records[:, 0], labels[indices])
        planes = records[:, 1:].reshape(-1, 3, 32, 32)
        np.testing.assert_array_equal(planes.transpose(0, 2, 3, 1), images[indices])


def test_image_folders_hold_the_same_split_as_jpegs(demo_data):
    images, labels = digit_images()
    train, test = split_indices(labels)
    for split, indices in (("train", train), ("val", test)):
        root = os.path.join(demo_data["imagefolder"], split)
        assert sorted(os.listdir(root)) == [str(digit) for digit in range(10)]
        for digit in range(10):
            expected = sorted(f"{index:05d}.jpg" for index in indices if labels[index] == digit)
            assert sorted(os.listdir(os.path.join(root, str(digit)))) == expected
        index = indices[0]
        decoded = np.asarray(Image.open(os.path.join(root, str(labels[index]), f"{index:05d}.jpg")).convert("RGB"))
        assert decoded.shape == (32, 32, 3)
        assert np.abs(decoded.astype(int) - images[index]).max() <= 12


def test_train_and_eval_share_no_image(demo_data):
    folder = demo_data["cifar10"]
    train_records = np.concatenate([read_records(os.path.join(folder, f"data_batch_{i}.bin")) for i in range(1, 6)])
    test_records = read_records(os.path.join(folder, "test_batch.bin"))
    train_pixels = {record[1:].tobytes() for record in train_records}
    test_pixels = {record[1:].tobytes() for record in test_records}
    assert (len(train_pixels), len(test_pixels)) == (1437, 360)
    assert not train_pixels & test_pixels

    def decoded(split):
        root = os.path.join(demo_data["imagefolder"], split)
        return {np.asarray(Image.open(os.path.join(root, digit, name))).tobytes()
                for digit in os.listdir(root) for name in os.listdir(os.path.join(root, digit))}

    train_jpegs, val_jpegs = decoded("train"), decoded("val")
    assert (len(train_jpegs), len(val_jpegs)) == (1437, 360)
    assert not train_jpegs & val_jpegs


def test_writer_is_byte_for_byte_deterministic_and_idempotent(demo_data, tmp_path):
    first = tree_bytes(os.path.dirname(os.path.dirname(demo_data["cifar10"])))
    paths = write_demo_data(str(tmp_path))
    assert paths == {"cifar10": str(tmp_path / "cifar10" / "cifar-10-batches-bin"),
                     "imagefolder": str(tmp_path / "imagefolder")}
    assert tree_bytes(str(tmp_path)) == first
    write_demo_data(str(tmp_path))
    assert tree_bytes(str(tmp_path)) == first
    assert len(first) == 7 + 1797


def test_unwritable_output_is_a_user_error_naming_the_path(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=str(blocker)):
        write_demo_data(str(blocker))


def test_command_line_exit_codes(tmp_path, capsys):
    assert main(["--output", str(tmp_path / "out")]) == 0
    assert str(tmp_path / "out" / "cifar10" / "cifar-10-batches-bin") in capsys.readouterr().out
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["--output", str(blocker)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and str(blocker) in error and error.count("\n") == 1
