"""Data pipelines: counts, shapes, values, layouts, sharding, determinism and bad input, on the demo digits."""
import os
import random
import shutil
from collections import Counter
from types import SimpleNamespace

import mindspore.dataset as ds
from mindspore.dataset import vision
import numpy as np
import pytest

from src.dataset import CIFAR_MEAN, CIFAR_STD, _imagenet_transforms, create_dataset, describe_pipeline_error, \
    mixing_batches
from src.errors import UserError
from src.model_utils.config import SCHEMA

RECORD_BYTES = 3073


def make_config(path, dataset="cifar10", **overrides):
    values = {key: spec.default for key, spec in SCHEMA.items()}
    values.update(dataset=dataset, dataset_path=str(path), eval_dataset_path="", batch_size=32, image_size=32,
                  num_parallel_workers=2, random_flip=True, color_jitter=0.0, class_num=10, seed=1)
    values.update(overrides)
    return SimpleNamespace(**values)


def collect(dataset, epochs=1):
    """Per epoch: (images, labels, batch sizes) of a full pass."""
    iterator = dataset.create_tuple_iterator(output_numpy=True, num_epochs=epochs)
    passes = []
    for _ in range(epochs):
        batches = list(iterator)
        passes.append((np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]),
                       [len(b[1]) for b in batches]))
    return passes if epochs > 1 else passes[0]


def read_records(*paths):
    return np.concatenate([np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD_BYTES) for path in paths])


def train_files(folder):
    return [os.path.join(folder, f"data_batch_{i}.bin") for i in range(1, 6)]


def normalized(records, mean, std):
    """Expected eval output of CIFAR records at 32x32: (pixel / 255 - mean) / std, CHW."""
    planes = records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255
    return (planes - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]


def channel_bounds(mean, std):
    return [((0 - m) / s, (1 - m) / s) for m, s in zip(mean, std)]


def write_constant_cifar(folder, filename, count):
    """CIFAR file whose image i is filled with the value i + 1 (label i % 10): identifiable after augmentation."""
    os.makedirs(folder, exist_ok=True)
    records = np.zeros((count, RECORD_BYTES), np.uint8)
    records[:, 0] = np.arange(count) % 10
    records[:, 1:] = (np.arange(count) + 1)[:, None]
    records.tofile(os.path.join(folder, filename))
    return records


def constant_image_ids(images):
    """Indices of write_constant_cifar images, read from the centre pixel (never cropped away or padded)."""
    centre = images[:, 0, 16, 16] * CIFAR_STD[0] + CIFAR_MEAN[0]
    return (np.rint(centre * 255) - 1).astype(int).tolist()


@pytest.fixture
def cifar_copy(demo_data, tmp_path):
    """A writable copy of the demo CIFAR-10 folder."""
    return shutil.copytree(demo_data["cifar10"], tmp_path / "cifar")


@pytest.fixture
def fast_recovery_off():
    previous = ds.config.get_fast_recovery()
    ds.config.set_fast_recovery(False)
    yield
    ds.config.set_fast_recovery(previous)


def test_cifar_eval_scores_every_image_once_in_file_order(demo_data):
    dataset = create_dataset(make_config(demo_data["cifar10"]), do_train=False)
    assert dataset.get_dataset_size() == 12
    images, labels, sizes = collect(dataset)
    assert sizes == [32] * 11 + [8]
    assert images.dtype == np.float32 and labels.dtype == np.int32
    records = read_records(os.path.join(demo_data["cifar10"], "test_batch.bin"))
    np.testing.assert_array_equal(labels, records[:, 0])
    np.testing.assert_allclose(images, normalized(records, CIFAR_MEAN, CIFAR_STD), atol=1e-5)


def test_cifar_train_reads_only_the_training_files(demo_data):
    dataset = create_dataset(make_config(demo_data["cifar10"], batch_size=479), do_train=True)
    assert dataset.get_dataset_size() == 3
    images, labels, sizes = collect(dataset)
    assert sizes == [479, 479, 479]
    assert images.shape == (1437, 3, 32, 32) and images.dtype == np.float32 and labels.dtype == np.int32
    expected_labels = read_records(*train_files(demo_data["cifar10"]))[:, 0]
    assert Counter(labels.tolist()) == Counter(expected_labels.tolist())
    assert labels.tolist() != expected_labels.tolist()
    for channel, (low, high) in enumerate(channel_bounds(CIFAR_MEAN, CIFAR_STD)):
        assert images[:, channel].min() == pytest.approx(low, abs=1e-5)
        assert images[:, channel].max() <= high + 1e-5


def test_cifar_train_drops_the_remainder_and_resizes(demo_data):
    dataset = create_dataset(make_config(demo_data["cifar10"], image_size=48), do_train=True)
    assert dataset.get_dataset_size() == 1437 // 32
    images, labels, sizes = collect(dataset)
    assert sizes == [32] * 44 and images.shape == (1408, 3, 48, 48)


def test_imagefolder_counts_shapes_and_ranges(demo_data):
    folder = demo_data["imagefolder"]
    per_class = {split: [len(os.listdir(os.path.join(folder, split, str(d)))) for d in range(10)]
                 for split in ("train", "val")}
    train = create_dataset(make_config(folder, "imagenet2012", batch_size=479, color_jitter=0.4), do_train=True)
    images, labels, sizes = collect(train)
    assert sizes == [479] * 3 and images.shape == (1437, 3, 32, 32) and labels.dtype == np.int32
    assert np.bincount(labels).tolist() == per_class["train"]

    evaluation = create_dataset(make_config(folder, "imagenet2012"), do_train=False)
    assert evaluation.get_dataset_size() == 12
    images, labels, sizes = collect(evaluation)
    assert sizes == [32] * 11 + [8] and images.dtype == np.float32
    mean, std = SCHEMA["image_mean"].default, SCHEMA["image_std"].default
    for channel, (low, high) in enumerate(channel_bounds(mean, std)):
        assert low - 1e-5 <= images[:, channel].min() <= low + 0.05
        assert high - 0.2 <= images[:, channel].max() <= high + 1e-5


def test_imagefolder_eval_resizes_then_centre_crops(demo_data):
    dataset = create_dataset(make_config(demo_data["imagefolder"], "imagenet2012", image_size=64), do_train=False)
    images, _, _ = collect(dataset)
    assert images.shape == (360, 3, 64, 64)


def test_cifar_official_split_layout(demo_data, tmp_path):
    for name, pattern in (("cifar-10-batches-bin", "data_batch_"), ("cifar-10-verify-bin", "test_batch")):
        os.makedirs(tmp_path / name)
        for filename in os.listdir(demo_data["cifar10"]):
            if filename.startswith(pattern):
                shutil.copy(os.path.join(demo_data["cifar10"], filename), tmp_path / name)
    config = make_config(tmp_path / "cifar-10-batches-bin", eval_dataset_path=str(tmp_path / "cifar-10-verify-bin"))
    assert create_dataset(config, do_train=True).get_dataset_size() == 44
    assert collect(create_dataset(config, do_train=False))[2] == [32] * 11 + [8]
    assert collect(create_dataset(make_config(tmp_path), do_train=False))[2] == [32] * 11 + [8]
    with pytest.raises(UserError, match=f"dataset_path '{tmp_path / 'cifar-10-batches-bin'}'.*test_batch.bin"):
        create_dataset(make_config(tmp_path / "cifar-10-batches-bin"), do_train=False)


def test_cifar_parent_folder_layout(demo_data):
    parent = os.path.dirname(demo_data["cifar10"])
    assert create_dataset(make_config(parent), do_train=True).get_dataset_size() == 44
    assert collect(create_dataset(make_config(parent), do_train=False))[2] == [32] * 11 + [8]


def test_imagenet_validation_preprocess_and_split_folders(demo_data, tmp_path):
    os.symlink(os.path.join(demo_data["imagefolder"], "train"), tmp_path / "train")
    os.symlink(os.path.join(demo_data["imagefolder"], "val"), tmp_path / "validation_preprocess")
    assert collect(create_dataset(make_config(tmp_path, "imagenet2012"), do_train=False))[2] == [32] * 11 + [8]
    val_folder = make_config(os.path.join(demo_data["imagefolder"], "val"), "imagenet2012")
    assert collect(create_dataset(val_folder, do_train=False))[2] == [32] * 11 + [8]
    train_folder = make_config(os.path.join(demo_data["imagefolder"], "train"), "imagenet2012")
    assert create_dataset(train_folder, do_train=True).get_dataset_size() == 44


@pytest.mark.parametrize("fmt", ["cifar10", "imagenet2012"])
def test_eval_shards_are_disjoint_and_complete(demo_data, fmt):
    config = make_config(demo_data["cifar10" if fmt == "cifar10" else "imagefolder"], fmt)
    whole_images, whole_labels, _ = collect(create_dataset(config, do_train=False))
    shards = [collect(create_dataset(config, False, rank_id=rank, rank_size=2)) for rank in range(2)]
    assert [len(labels) for _, labels, _ in shards] == [180, 180]
    keys = [{(image.tobytes(), int(label)) for image, label in zip(images, labels)} for images, labels, _ in shards]
    assert not keys[0] & keys[1]
    assert keys[0] | keys[1] == {(image.tobytes(), int(label)) for image, label in zip(whole_images, whole_labels)}


def test_eval_shards_of_an_odd_count_cover_every_image(tmp_path):
    write_constant_cifar(tmp_path, "test_batch.bin", 7)
    config = make_config(tmp_path, batch_size=2)
    shards = [collect(create_dataset(config, False, rank_id=rank, rank_size=2))[0] for rank in range(2)]
    assert [constant_image_ids(images) for images in shards] == [[0, 2, 4, 6], [1, 3, 5]]


def test_train_shards_are_disjoint_equal_and_reshuffled(tmp_path):
    write_constant_cifar(tmp_path, "data_batch_1.bin", 101)
    config = make_config(tmp_path, batch_size=10)
    epochs = [collect(create_dataset(config, True, rank_id=rank, rank_size=2), epochs=2) for rank in range(2)]
    for epoch in range(2):
        ids = [constant_image_ids(epochs[rank][epoch][0]) for rank in range(2)]
        assert [len(rank_ids) for rank_ids in ids] == [50, 50]
        assert len(set(ids[0]) | set(ids[1])) == 100 and set(ids[0] + ids[1]) <= set(range(101))
    assert constant_image_ids(epochs[0][0][0]) != constant_image_ids(epochs[0][1][0])


def test_training_order_and_augmentation_follow_the_seed(demo_data):
    def first_epoch(seed):
        return collect(create_dataset(make_config(demo_data["cifar10"], seed=seed), do_train=True))

    first, again, other = first_epoch(7), first_epoch(7), first_epoch(8)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


def test_each_rank_draws_its_own_augmentations_and_keeps_the_weight_initialisation(tmp_path):
    """Every image the same (noise): the ranks' first epochs differ only by their augmentations, which must differ
    (seed + rank) and repeat for the same rank.  Building a rank's pipeline leaves numpy's and Python's random state
    as rank 0's does (`ds.config.set_seed` reseeds both; weights are initialised from them after the data)."""
    records = np.zeros((64, RECORD_BYTES), np.uint8)
    records[:, 0] = np.arange(64) % 10
    records[:, 1:] = np.random.default_rng(0).integers(0, 256, RECORD_BYTES - 1)
    records.tofile(tmp_path / "data_batch_1.bin")
    config = make_config(tmp_path, batch_size=8)
    images, draws = {}, {}
    for rank in (0, 1, 1):
        np.random.seed(5)
        random.seed(5)
        data = create_dataset(config, True, rank_id=rank, rank_size=2)
        draws[rank] = (np.random.rand(), random.random())
        epoch = collect(data)[0]
        if rank in images:
            np.testing.assert_array_equal(epoch, images[rank])
        images[rank] = epoch
    assert not np.array_equal(images[0], images[1])
    assert draws[0] == draws[1]


def test_set_init_step_replays_the_same_batches(demo_data, fast_recovery_off):
    config = make_config(demo_data["cifar10"], batch_size=128)
    images, labels, _ = collect(create_dataset(config, do_train=True), epochs=2)[1]
    resumed = create_dataset(config, do_train=True)
    resumed.set_init_step(11 + 3)
    batches = list(resumed.create_tuple_iterator(output_numpy=True, num_epochs=2))
    assert len(batches) == 8
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), images[3 * 128:])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels[3 * 128:])


def test_workers_are_clamped_to_the_cpu_count(demo_data):
    config = make_config(demo_data["cifar10"], num_parallel_workers=(os.cpu_count() or 1) * 64)
    assert len(collect(create_dataset(config, do_train=False))[1]) == 360


def two_class_folder(demo_data, tmp_path, spoil=None):
    """Copy of the demo val classes 0 and 1, optionally spoilt; returns (root, path an error must name)."""
    root = tmp_path / "images"
    for digit in ("0", "1"):
        shutil.copytree(os.path.join(demo_data["imagefolder"], "val", digit), root / digit)
    if spoil == "empty_class":
        os.makedirs(root / "2")
        return root, root / "2"
    if spoil == "loose_images":
        flat = tmp_path / "flat"
        shutil.copytree(root / "0", flat)
        return flat, flat
    return root, root


@pytest.mark.parametrize("spoil,class_num,expected", [
    ("empty_class", 3, "no images"),
    ("loose_images", 2, "no class sub-folders; expected one sub-folder of images per class$"),
    ("class_count", 10, "2 class folders but class_num is 10; the network has 10 outputs: evaluate it on data of its "
                        "10 classes, or fine-tune it on these 2 with train.py --pre_trained CHECKPOINT --class_num 2$"),
])
def test_bad_image_folder_is_a_user_error(demo_data, tmp_path, spoil, class_num, expected):
    root, named = two_class_folder(demo_data, tmp_path, spoil)
    with pytest.raises(UserError, match=f"{named}.*{expected}"):
        create_dataset(make_config(root, "imagenet2012", class_num=class_num), do_train=False)


def test_wrong_class_count_for_training_says_which_to_set(demo_data, tmp_path):
    root, _ = two_class_folder(demo_data, tmp_path, "class_count")
    with pytest.raises(UserError, match="2 class folders but class_num is 5; set --class_num 2 \\(one output per "
                                        "class folder\\)$"):
        create_dataset(make_config(root, "imagenet2012", class_num=5), do_train=True)


def test_data_of_the_other_format_names_the_dataset_key(demo_data):
    with pytest.raises(UserError, match="holds no CIFAR-10 binary training files; .*; it holds folders of images: for "
                                        "those use --dataset imagenet2012$"):
        create_dataset(make_config(demo_data["imagefolder"]), do_train=True)
    with pytest.raises(UserError, match="no class sub-folders; .*; it holds CIFAR-10 binary files: for those use "
                                        "--dataset cifar10$"):
        create_dataset(make_config(demo_data["cifar10"], "imagenet2012"), do_train=True)


def test_imagenet_root_without_the_split_is_a_user_error(demo_data, tmp_path):
    os.symlink(os.path.join(demo_data["imagefolder"], "train"), tmp_path / "train")
    with pytest.raises(UserError, match=f"'{tmp_path}' has no val or validation_preprocess folder"):
        create_dataset(make_config(tmp_path, "imagenet2012"), do_train=False)


@pytest.mark.parametrize("fmt", ["cifar10", "imagenet2012"])
def test_missing_or_empty_path_is_a_user_error(tmp_path, fmt):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=f"dataset_path '{missing}' does not exist"):
        create_dataset(make_config(missing, fmt), do_train=True)
    with pytest.raises(UserError, match=f"eval_dataset_path '{missing}' does not exist"):
        create_dataset(make_config(tmp_path, fmt, eval_dataset_path=str(missing)), do_train=False)
    with pytest.raises(UserError, match="dataset_path is empty"):
        create_dataset(make_config("", fmt), do_train=True)
    a_file = tmp_path / "file.bin"
    a_file.write_bytes(b"")
    with pytest.raises(UserError, match=f"'{a_file}' is not a folder"):
        create_dataset(make_config(a_file, fmt), do_train=True)


def test_cifar_folder_without_cifar_files_is_a_user_error(demo_data):
    with pytest.raises(UserError, match=f"'{demo_data['imagefolder']}' holds no CIFAR-10 binary training files"):
        create_dataset(make_config(demo_data["imagefolder"]), do_train=True)


def test_truncated_cifar_file_is_a_user_error(cifar_copy):
    path = os.path.join(cifar_copy, "data_batch_3.bin")
    os.truncate(path, os.path.getsize(path) - 100)
    with pytest.raises(UserError, match=f"{path}: 881851 bytes is not a whole number of 3073-byte"):
        create_dataset(make_config(cifar_copy), do_train=True)


def test_cifar_label_out_of_range_is_a_user_error(cifar_copy):
    path = os.path.join(cifar_copy, "test_batch.bin")
    records = read_records(path)
    records[5, 0] = 10
    records.tofile(path)
    with pytest.raises(UserError, match=f"{path}: record 5 has label 10; expected labels 0..9"):
        create_dataset(make_config(cifar_copy), do_train=False)
    with pytest.raises(UserError, match="expected labels 0..4 \\(class_num is 5\\)"):
        create_dataset(make_config(cifar_copy, class_num=5), do_train=True)


def test_too_few_training_images_for_a_batch_is_a_user_error(tmp_path):
    write_constant_cifar(tmp_path, "data_batch_1.bin", 20)
    with pytest.raises(UserError, match=f"{tmp_path}: 20 training images give no full batch of 32"):
        create_dataset(make_config(tmp_path), do_train=True)


def test_unknown_dataset_is_a_user_error(demo_data):
    with pytest.raises(UserError, match="dataset 'mnist' is not supported"):
        create_dataset(make_config(demo_data["cifar10"], "mnist"), do_train=True)


def test_undecodable_image_is_described_by_its_file(demo_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MindSpore copies an undecodable image to ./abnormal_image.jpg
    root, _ = two_class_folder(demo_data, tmp_path)
    broken = root / "1" / "99999.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    dataset = create_dataset(make_config(root, "imagenet2012", class_num=2), do_train=False)
    with pytest.raises(RuntimeError) as caught:
        collect(dataset)
    message = describe_pipeline_error(caught.value)
    assert message == f"{broken}: cannot decode this image; expected a readable JPEG, PNG or BMP file"
    assert describe_pipeline_error(ValueError("unrelated")) is None
    training = create_dataset(make_config(root, "imagenet2012", class_num=2, batch_size=4), do_train=True)
    with pytest.raises(RuntimeError) as caught:  # training decodes in its crop operation: the file is still named
        collect(training)
    assert describe_pipeline_error(caught.value) == message


def test_other_pipeline_errors_are_described_in_one_line(demo_data):
    iterator = create_dataset(make_config(demo_data["cifar10"]), do_train=False).create_tuple_iterator(num_epochs=1)
    list(iterator)
    with pytest.raises(RuntimeError) as caught:
        list(iterator)
    message = describe_pipeline_error(caught.value)
    assert message.startswith("data pipeline failed: EOF buffer encountered") and "\n" not in message


def test_mixing_follows_mixup_prob_and_switch_prob():
    """400 batches of eight constant images (values 0..7, one-hot labels): a mixup batch holds blended constant
    images, a CutMix batch images with a box of another, an untouched batch the originals.  mixup_prob 0.6 and switch
    prob 0.25: about 40% untouched, 15% CutMix, 45% mixup; every mixed label gives the pixel shares."""
    ds.config.set_seed(3)
    config = make_config("", mixup_alpha=1.0, cutmix_alpha=1.0, mixup_prob=0.6, mixup_switch_prob=0.25)
    values = np.arange(8, dtype=np.float32)
    images = np.tile(values[:, None, None, None], (400, 3, 16, 16))
    labels = np.eye(8, dtype=np.float32)[np.tile(np.arange(8), 400)]
    data = ds.NumpySlicesDataset((images, labels), ["image", "label"], shuffle=False).batch(8)
    kinds = []
    for batch in data.map(mixing_batches(config), input_columns=["image", "label"]).create_dict_iterator(
            output_numpy=True):
        mixed, label = batch["image"], batch["label"]
        np.testing.assert_allclose(label.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(label @ values, mixed.mean(axis=(1, 2, 3)), atol=1e-4)  # labels = pixel shares
        if np.array_equal(mixed, images[:8]):
            kinds.append("none")
        else:
            kinds.append("cutmix" if max(len(np.unique(image)) for image in mixed) > 1 else "mixup")
    share = {kind: kinds.count(kind) / len(kinds) for kind in ("none", "cutmix", "mixup")}
    assert share["none"] == pytest.approx(0.4, abs=0.08) and share["cutmix"] == pytest.approx(0.15, abs=0.06)
    assert share["mixup"] == pytest.approx(0.45, abs=0.08)


def test_imagenet_training_with_every_augmentation_is_reproducible(demo_data):
    """RandAugment, random erasing, crop scale/ratio and mixup + CutMix on the JPEG tree: the same seed gives the
    same batches; labels are soft (summing to 1)."""
    options = dict(batch_size=64, auto_augment="randaugment", re_prob=0.5, mixup_alpha=0.2, cutmix_alpha=1.0,
                   crop_scale=[0.25, 1.0], crop_ratio=[0.5, 2.0])
    runs = [collect(create_dataset(make_config(demo_data["imagefolder"], "imagenet2012", **options), do_train=True))
            for _ in range(2)]
    (images, labels, sizes), (again, labels_again, _) = runs
    assert sizes == [64] * 22 and labels.shape == (1408, 10) and labels.dtype == np.float32
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    assert (labels.max(axis=1) < 1).mean() > 0.5  # mixed
    assert np.array_equal(images, again) and np.array_equal(labels, labels_again)
    plain = collect(create_dataset(make_config(demo_data["imagefolder"], "imagenet2012", batch_size=64),
                                   do_train=True))[0]
    assert not np.array_equal(images, plain)


def test_training_crops_are_those_of_decode_then_random_resized_crop(demo_data):
    """Training decodes only its crop (RandomCropDecodeResize); with the same seed it yields the crops a full decode +
    RandomResizedCrop yields: the same scale and ratio draws, pixels within JPEG rounding.  That full decode + crop is
    the decode_device Ascend pipeline (Decode on DVPP, the rest on the host), run here with the decode on the CPU."""
    config = make_config(demo_data["imagefolder"], "imagenet2012", random_flip=False, crop_scale=[0.3, 1.0])
    ours = collect(create_dataset(config, do_train=True))[0]
    device_decode, *host = _imagenet_transforms(config, do_train=True, device_decode=True)
    assert type(device_decode) is vision.Decode and device_decode.device_target == "Ascend"
    assert type(host[0]) is vision.RandomResizedCrop and (host[0].size, host[0].scale, host[0].ratio) == \
        ((32, 32), (0.3, 1.0), (3 / 4, 4 / 3))
    folder = os.path.join(demo_data["imagefolder"], "train")
    ds.config.set_seed(config.seed)
    reference = ds.ImageFolderDataset(folder, decode=False, class_indexing={str(d): d for d in range(10)},
                                      sampler=ds.DistributedSampler(1, 0, shuffle=True, num_samples=1437))
    ds.config.set_seed(config.seed)
    reference = reference.map([vision.Decode()] + host, input_columns="image", num_parallel_workers=2)
    expected = collect(reference.batch(32, drop_remainder=True))[0]
    difference = np.abs(ours - expected)
    assert ours.shape == expected.shape == (1408, 3, 32, 32)
    assert difference.mean() < 0.01 and difference.max() < 0.2  # one 8-bit level is 0.017 here


def test_device_decode_evaluation_matches_host_decode(demo_data, monkeypatch):
    """decode_device Ascend: evaluation reads the encoded files and decodes them first in its map (on DVPP); with
    that decode run on the CPU here (Decode.device left a no-op) it gives exactly the host pipeline's images."""
    config = make_config(demo_data["imagefolder"], "imagenet2012", decode_device="Ascend")
    operations = _imagenet_transforms(config, do_train=False, device_decode=True)
    assert type(operations[0]) is vision.Decode and operations[0].device_target == "Ascend"
    expected = collect(create_dataset(make_config(demo_data["imagefolder"], "imagenet2012"), do_train=False))
    monkeypatch.setattr(vision.Decode, "device", lambda self, device_target="CPU": self)
    images, labels, sizes = collect(create_dataset(config, do_train=False))
    assert sizes == expected[2] and np.array_equal(labels, expected[1]) and np.array_equal(images, expected[0])
