"""Training and evaluation data pipelines on MindSpore's dataset engine.

Two formats, chosen by `config.dataset`:
- "cifar10": CIFAR-10 binary files (3073-byte records: 1 label byte, then the R, G, B planes of 32x32 bytes).
  Training reads `data_batch_*.bin`, evaluation `test_batch.bin`, from the given folder, or from its
  `cifar-10-batches-bin/` (or `cifar-10-verify-bin/`) sub-folder.  The records are parsed with numpy: MindSpore's
  `Cifar10Dataset` only reads files of exactly 10,000 records.
- "imagenet2012": one sub-folder of images per class, in `train/` for training and `val/` (or
  `validation_preprocess/`) for evaluation, or the split folder itself.  Classes are the sorted sub-folder names.

Training shuffles with `config.seed` (same seed and workers give the same order and augmentations) and drops the
last partial batch; evaluation keeps the file order and scores every image exactly once.  With several ranks
every rank reads a disjoint shard of equal size for training; evaluation shards are disjoint and complete.
"""
import contextlib
import os
import random
import re
from typing import Optional

import mindspore as ms
import mindspore.dataset as ds
import numpy as np
from mindspore.dataset import transforms, vision

from src.errors import UserError
from src.model_card import CIFAR10_CLASSES

CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32
CIFAR_FOLDERS = ("cifar-10-batches-bin", "cifar-10-verify-bin")
CIFAR_TRAIN_FILE = re.compile(r"data_batch_(\d+)\.bin")
CIFAR_TEST_FILE = "test_batch.bin"
CIFAR_META_FILE = "batches.meta.txt"
# The official zoo's CIFAR-10 statistics, so that its CIFAR-10 checkpoints evaluate as they were trained.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_TRAIN_FOLDERS = ("train",)
IMAGENET_EVAL_FOLDERS = ("val", "validation_preprocess")
# MindSpore's ImageFolderDataset matches extensions case-sensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG", ".BMP")
EVAL_CROP_FRACTION = 0.875
MIX_CHOICES = 20
# a file the source decodes (evaluation), or a map operation decodes (training: RandomCropDecodeResize)
BAD_IMAGE = re.compile(r"Invalid image, (.+?) decode failed|The corresponding data file is: (.+?)\. Error raised by")
PIPELINE_ERROR = re.compile(r"^\[ERROR\] (.+)$", re.MULTILINE)


class DatasetError(UserError):
    """The data set path, layout or content is not what the config says."""


def create_dataset(config, do_train: bool, rank_id: int = 0, rank_size: int = 1) -> ds.Dataset:
    """Batched ("image" float32 NCHW, "label" int32) data set: training data if `do_train`, else evaluation data.

    Training sets the dataset engine's global seed: `config.seed` for the shuffle (samplers take it when built),
    then `config.seed + rank_id` for the random augmentations, so that ranks draw different crops and flips.
    """
    if config.dataset not in ("cifar10", "imagenet2012"):
        raise DatasetError(f"dataset '{config.dataset}' is not supported; expected cifar10 or imagenet2012")
    workers = _workers(config)
    if do_train:
        ds.config.set_seed(config.seed)  # the shuffle: the same on every rank, which takes its share of it
    device_decode = config.decode_device == "Ascend"
    data = _source(config, do_train, rank_id, rank_size, workers, decode=not (do_train or device_decode))
    if config.dataset == "cifar10":
        operations = _cifar10_transforms(config, do_train) if do_train else eval_transforms(config)
    else:
        operations = _imagenet_transforms(config, do_train, device_decode)
    if do_train:  # the augmentations: each rank its own (read when the pipeline starts)
        numpy_state, python_state = np.random.get_state(), random.getstate()
        ds.config.set_seed(config.seed + rank_id)
        # it also reseeds numpy and `random`, from which weights are initialised: keep them the same on every rank
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    data = data.map(operations, input_columns="image", num_parallel_workers=workers)
    if do_train and config.re_prob > 0:
        # MindSpore's RandomErasing is a Python op drawing from Python's `random`: one worker keeps its draws in
        # sample order, so the run stays reproducible (and a resumed pipeline, replayed from the start, too)
        data = data.map(vision.RandomErasing(config.re_prob, value="random"), input_columns="image",
                        num_parallel_workers=1)
    mixing = do_train and mixing_batches(config)
    labels = [transforms.OneHot(config.class_num), transforms.TypeCast(ms.float32)] if mixing else \
        transforms.TypeCast(ms.int32)
    data = data.map(labels, input_columns="label", num_parallel_workers=workers)
    data = data.batch(config.batch_size, drop_remainder=do_train)
    if mixing:
        data = data.map(mixing, input_columns=["image", "label"], num_parallel_workers=workers)
    return data


def _workers(config) -> int:
    """Parallel workers of the pipeline's maps: num_parallel_workers, at most the CPU count."""
    return max(1, min(config.num_parallel_workers, os.cpu_count() or 1))


def _source(config, do_train: bool, rank_id: int, rank_size: int, workers: int, decode: bool):
    """The (image, label) rows of the training or evaluation split before any transform, this rank's share:
    CIFAR-10's records, or the class folders' files (decoded when `decode`)."""
    key, path = _data_path(config, do_train)
    if config.dataset == "cifar10":
        return _cifar10_source(config, key, path, do_train, rank_id, rank_size)
    return _image_folder_source(config, key, path, do_train, rank_id, rank_size, workers, decode=decode)


def calibration_images(config, count: int) -> np.ndarray:
    """The first `count` training images of the seeded training shuffle, prepared by the evaluation transform, as one
    float32 NCHW array: what post-training quantization calibrates on (images like those the model will see, none of
    the evaluation set)."""
    workers = _workers(config)
    ds.config.set_seed(config.seed)
    data = _source(config, True, 0, 1, workers, decode=True)
    data = data.map(eval_transforms(config), input_columns="image", num_parallel_workers=workers).take(count)
    return np.stack([row["image"] for row in data.create_dict_iterator(num_epochs=1, output_numpy=True)])


def mixing_batches(config) -> list:
    """Batch operations mixing images and their one-hot labels (MindSpore's `MixUpBatch` and `CutMixBatch`): with
    probability `mixup_prob` a batch is mixed, by CutMix with probability `mixup_switch_prob` (in steps of 0.05,
    through a uniform choice among 20 operations) else by mixup; [] when both alphas are 0."""
    mixup = vision.MixUpBatch(config.mixup_alpha) if config.mixup_alpha > 0 else None
    cutmix = vision.CutMixBatch(vision.ImageBatchFormat.NCHW, config.cutmix_alpha) if config.cutmix_alpha > 0 \
        else None
    if mixup is None and cutmix is None:
        return []
    if mixup is None or cutmix is None:
        chosen = mixup or cutmix
    else:
        cut = round(config.mixup_switch_prob * MIX_CHOICES)
        chosen = transforms.RandomChoice([cutmix] * cut + [mixup] * (MIX_CHOICES - cut))
    return [transforms.RandomApply([chosen], prob=config.mixup_prob)] if config.mixup_prob < 1 else [chosen]


def eval_transforms(config) -> list:
    """The evaluation transform of `config`'s data set: decoded HWC uint8 images (CIFAR-10: 32x32) to normalised float32
    CHW, the operations `create_dataset` maps for evaluation."""
    return _cifar10_transforms(config, False) if config.dataset == "cifar10" else _imagenet_transforms(config, False)


def dataset_class_names(config) -> Optional[list]:
    """Names of the training data's classes, in label order: the class folder names of an ImageNet-style set; for
    CIFAR-10 the lines of `batches.meta.txt` beside the binary files (CIFAR-10's own names where there is none);
    None where the names are unknown."""
    key, path = _data_path(config, do_train=True)
    if config.dataset == "imagenet2012":
        return _subfolders(_imagenet_split_folder(key, path, do_train=True))
    meta = os.path.join(os.path.dirname(_cifar10_files(key, path, do_train=True)[0]), CIFAR_META_FILE)
    if os.path.isfile(meta):
        with open(meta, encoding="utf-8", errors="replace") as src:
            names = [line.strip() for line in src if line.strip()]
        if len(names) == config.class_num:
            return names
    return list(CIFAR10_CLASSES) if config.class_num == len(CIFAR10_CLASSES) else None


def describe_pipeline_error(err: BaseException) -> Optional[str]:
    """One line for an error raised by the data pipeline while iterating (naming the bad file), else None."""
    text = str(err)
    bad_image = BAD_IMAGE.search(text)
    if bad_image:
        path = bad_image.group(1) or bad_image.group(2)
        return f"{path}: cannot decode this image; expected a readable JPEG, PNG or BMP file"
    if isinstance(err, RuntimeError) and "Dataset Pipeline Error Message" in text:
        detail = PIPELINE_ERROR.search(text)
        return f"data pipeline failed: {detail.group(1).strip() if detail else text.strip().splitlines()[0]}"
    return None


@contextlib.contextmanager
def pipeline_errors_reported():
    """Inside this block a data pipeline failure raised while iterating becomes a one-line `DatasetError`."""
    try:
        yield
    except RuntimeError as err:
        message = describe_pipeline_error(err)
        if message is None:
            raise
        raise DatasetError(message) from err


def _data_path(config, do_train):
    """(config key, path) of the data to read; a missing path is a DatasetError."""
    key = "dataset_path" if do_train or not config.eval_dataset_path else "eval_dataset_path"
    path = getattr(config, key)
    if not path:
        raise DatasetError(f"{key} is empty; expected the folder of the {config.dataset} data")
    if not os.path.isdir(path):
        problem = "is not a folder" if os.path.exists(path) else "does not exist"
        raise DatasetError(f"{key} '{path}' {problem}; expected the folder of the {config.dataset} data")
    return key, path


def _sampler(image_count, do_train, rank_id, rank_size, path, batch_size):
    """Training: seeded shuffle, equal disjoint shards.  Evaluation: file order, disjoint shards covering all."""
    if do_train:
        per_rank = image_count // rank_size
        if per_rank < batch_size:
            raise DatasetError(f"{path}: {image_count} training images give no full batch of {batch_size} "
                               f"per rank on {rank_size} rank(s); expected at least {batch_size * rank_size} images")
        return ds.DistributedSampler(rank_size, rank_id, shuffle=True, num_samples=per_rank)
    if image_count <= rank_id:
        raise DatasetError(f"{path}: {image_count} evaluation images leave rank {rank_id} of {rank_size} without any; "
                           f"expected at least {rank_size} images")
    return ds.SubsetSampler(list(range(rank_id, image_count, rank_size)))


def _cifar10_files(key, path, do_train):
    """The split's CIFAR-10 binary files, in `path` or in its cifar-10-batches-bin / cifar-10-verify-bin."""
    for folder in (path, *(os.path.join(path, name) for name in CIFAR_FOLDERS)):
        if not os.path.isdir(folder):
            continue
        names = os.listdir(folder)
        if do_train:
            numbered = sorted((int(match.group(1)), name) for name in names
                              if (match := CIFAR_TRAIN_FILE.fullmatch(name)))
            if numbered:
                return [os.path.join(folder, name) for _, name in numbered]
        elif CIFAR_TEST_FILE in names:
            return [os.path.join(folder, CIFAR_TEST_FILE)]
    wanted = "data_batch_1.bin .. data_batch_5.bin" if do_train else \
        "test_batch.bin (the official split keeps it in cifar-10-verify-bin; set eval_dataset_path to that folder)"
    images = [name for name in _subfolders(path) if name not in CIFAR_FOLDERS]
    hint = "; it holds folders of images: for those use --dataset imagenet2012" if images else ""
    raise DatasetError(f"{key} '{path}' holds no CIFAR-10 binary {'training' if do_train else 'test'} files; "
                       f"expected a folder (or its cifar-10-batches-bin sub-folder) with {wanted}{hint}")


def _read_cifar10_file(filename, class_num):
    """(HWC uint8 images, int32 labels) of one CIFAR-10 binary file, checked for whole records and valid labels."""
    try:
        raw = np.fromfile(filename, dtype=np.uint8)
    except OSError as err:
        raise DatasetError(f"{filename}: cannot read ({err.strerror}); expected a readable CIFAR-10 binary file")
    if raw.size == 0 or raw.size % CIFAR_RECORD_BYTES:
        raise DatasetError(f"{filename}: {raw.size} bytes is not a whole number of {CIFAR_RECORD_BYTES}-byte CIFAR-10 "
                           f"records (1 label byte + 3072 pixel bytes); the file is truncated or not CIFAR-10 binary")
    records = raw.reshape(-1, CIFAR_RECORD_BYTES)
    labels = records[:, 0].astype(np.int32)
    out_of_range = np.flatnonzero(labels >= class_num)
    if out_of_range.size:
        first = out_of_range[0]
        raise DatasetError(f"{filename}: record {first} has label {labels[first]}; "
                           f"expected labels 0..{class_num - 1} (class_num is {class_num})")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _cifar10_source(config, key, path, do_train, rank_id, rank_size):
    """The split's images (HWC uint8) and labels, read into memory and fed to the engine in sampler order."""
    parts = [_read_cifar10_file(filename, config.class_num) for filename in _cifar10_files(key, path, do_train)]
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    sampler = _sampler(len(labels), do_train, rank_id, rank_size, path, config.batch_size)
    return ds.NumpySlicesDataset((images, labels), column_names=["image", "label"], sampler=sampler)


def _cifar10_transforms(config, do_train):
    """Train: pad-4 random crop, optional flip and automatic augmentation.  Both: resize if image_size is not 32,
    normalize, HWC->CHW."""
    operations = []
    if do_train:
        operations.append(vision.RandomCrop(32, padding=4))
        if config.random_flip:
            operations.append(vision.RandomHorizontalFlip())
        operations += _auto_augment(config)
    if config.image_size != 32:
        operations.append(vision.Resize((config.image_size, config.image_size)))
    return operations + _normalize(CIFAR_MEAN, CIFAR_STD)


def _imagenet_transforms(config, do_train, device_decode=False):
    """Train (from the encoded file): random resized crop decoded at once, optional flip, colour jitter and automatic
    augmentation.  Eval: resize short side, centre crop (of a decoded image, or of the encoded file when
    `device_decode`).  `device_decode`: the Ascend device's DVPP decodes the file, the rest runs on the host."""
    size = config.image_size
    # MindSpore 2.10 runs vision.Decode on DVPP with .device("Ascend") (mindspore/dataset/vision/transforms.py,
    # Decode.device: uint8 input; the C++ side is minddata/dataset/core/device_tensor_ascend910b.cc, Atlas A2 only) and
    # has no device crop-decode, so the whole image is decoded there and the host crops it
    decode = [vision.Decode().device("Ascend")] if device_decode else []
    if do_train:
        crop = dict(scale=tuple(config.crop_scale), ratio=tuple(config.crop_ratio))
        # RandomCropDecodeResize decodes only the crop's part of the JPEG: ~1.5x the images/s of Decode +
        # RandomResizedCrop, the same crops (same random draws) and sizes
        if device_decode:
            operations = decode + [vision.RandomResizedCrop(size, **crop)]
        else:
            operations = [vision.RandomCropDecodeResize(size, **crop)]
        if config.random_flip:
            operations.append(vision.RandomHorizontalFlip())
        if config.color_jitter > 0:
            jitter = config.color_jitter
            operations.append(vision.RandomColorAdjust(brightness=jitter, contrast=jitter, saturation=jitter))
        operations += _auto_augment(config)
    else:
        operations = decode + eval_resize_crop(config)
    return operations + _normalize(config.image_mean, config.image_std)


def _auto_augment(config) -> list:
    """The `auto_augment` policy on uint8 HWC images (bilinear, filling with the mean colour, as timm does)."""
    fill = tuple(round(255 * m) for m in config.image_mean)
    if config.auto_augment == "randaugment":
        return [vision.RandAugment(config.rand_num_ops, config.rand_magnitude, interpolation=vision.Inter.BILINEAR,
                                   fill_value=fill)]
    if config.auto_augment == "autoaugment":
        return [vision.AutoAugment(vision.AutoAugmentPolicy.IMAGENET, vision.Inter.BILINEAR, fill)]
    if config.auto_augment == "trivialaugment":
        return [vision.TrivialAugmentWide(interpolation=vision.Inter.BILINEAR, fill_value=fill)]
    return []


def eval_resize_crop(config) -> list:
    """Evaluation geometry: shorter side to `eval_resize` (0: image_size / 0.875) with `interpolation`, centre crop of
    image_size."""
    size = config.image_size
    interpolation = {"bilinear": vision.Inter.BILINEAR, "bicubic": vision.Inter.BICUBIC}[config.interpolation]
    return [vision.Resize(config.eval_resize or int(size / EVAL_CROP_FRACTION), interpolation),
            vision.CenterCrop(size)]


def _normalize(mean, std):
    """uint8 HWC -> float32 CHW of (pixel / 255 - mean) / std."""
    return [vision.Normalize([255 * m for m in mean], [255 * s for s in std]), vision.HWC2CHW()]


def _subfolders(path):
    return sorted(entry.name for entry in os.scandir(path) if entry.is_dir())


def _imagenet_split_folder(key, path, do_train):
    """`path/train` (training) or `path/val` / `path/validation_preprocess` (eval); `path` itself if it has none."""
    subfolders = _subfolders(path)
    if not set(subfolders) & {*IMAGENET_TRAIN_FOLDERS, *IMAGENET_EVAL_FOLDERS}:
        return path
    wanted = IMAGENET_TRAIN_FOLDERS if do_train else IMAGENET_EVAL_FOLDERS
    for name in wanted:
        if name in subfolders:
            return os.path.join(path, name)
    raise DatasetError(f"{key} '{path}' has no {' or '.join(wanted)} folder; expected {'/ or '.join(wanted)}/ "
                       f"holding one sub-folder of images per class")


def _image_folder_source(config, key, path, do_train, rank_id, rank_size, workers, decode):
    """The split's class folders, images decoded here if `decode` (evaluation on the host; training decodes only its
    random crop, see `_imagenet_transforms`); labels 0..N-1 by name."""
    folder = _imagenet_split_folder(key, path, do_train)
    classes, image_count = _image_classes(folder, config, do_train)
    return ds.ImageFolderDataset(
        folder, decode=decode, extensions=list(IMAGE_EXTENSIONS), num_parallel_workers=workers,
        class_indexing={name: index for index, name in enumerate(classes)},
        sampler=_sampler(image_count, do_train, rank_id, rank_size, folder, config.batch_size))


def _image_classes(folder, config, do_train):
    """(sorted class folder names, image count), checked against class_num and for empty classes."""
    classes, class_num = _subfolders(folder), config.class_num
    if not classes:
        cifar = any(CIFAR_TRAIN_FILE.fullmatch(name) or name == CIFAR_TEST_FILE for name in os.listdir(folder))
        raise DatasetError(f"{folder}: no class sub-folders; expected one sub-folder of images per class"
                           + ("; it holds CIFAR-10 binary files: for those use --dataset cifar10" if cifar else ""))
    if len(classes) != class_num:
        found = len(classes)
        if do_train:
            fix = f"set --class_num {found} (one output per class folder)"
        else:
            fix = (f"the network has {class_num} outputs: evaluate it on data of its {class_num} classes, or fine-tune "
                   f"it on these {found} with train.py --pre_trained {config.checkpoint_path or 'CHECKPOINT'} "
                   f"--class_num {found}")
        raise DatasetError(f"{folder}: {found} class folders but class_num is {class_num}; {fix}")
    image_count = 0
    for name in classes:
        class_folder = os.path.join(folder, name)
        count = sum(1 for entry in os.scandir(class_folder)
                    if entry.is_file() and os.path.splitext(entry.name)[1] in IMAGE_EXTENSIONS)
        if count == 0:
            raise DatasetError(f"{class_folder}: no images; expected {', '.join(IMAGE_EXTENSIONS[:4])} files "
                               f"in every class folder")
        image_count += count
    return classes, image_count
