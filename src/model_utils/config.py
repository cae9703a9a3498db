"""One config path: YAML file -> typed CLI overrides -> validated `Config`.

Every key is declared once in `SCHEMA` with its type, default, allowed range and help text.  Types come
from the schema, never from the YAML value, so `--lr_init 0.01` works where the YAML says `0` and
`--run_distribute False` is false.  Unknown keys and wrong types are `ConfigError`s naming the key.
"""
import argparse
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import yaml

from src.errors import UserError
from src.model_utils.cli import ArgumentParser
from src.models import MODELS, PADDINGS, PAPER_OPTIONS
from src.models.mobilenet_v1 import ACTIVATIONS as V1_ACTIVATIONS

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(ROOT_DIR, "default_config.yaml")


class ConfigError(UserError):
    """A config key, type or value is wrong."""


@dataclass(frozen=True)
class Field:
    type: str  # "str", "int", "float", "bool", "list[int]", "list[float]", "list[str]"
    default: Any
    help: str
    choices: Optional[Sequence[Any]] = None
    min: Optional[float] = None
    max: Optional[float] = None
    min_exclusive: bool = False


def _f(type_, default, help_, **kw):
    return Field(type_, default, help_, **kw)


SCHEMA = {
    # model
    "model": _f("str", "mobilenet_v1", "network", choices=tuple(MODELS)),
    "width_mult": _f("float", 1.0, "width multiplier", min=0, min_exclusive=True),
    "class_num": _f("int", 10, "number of classes", min=1),
    "image_size": _f("int", 224, "input height = width", min=32),
    "dropout": _f("float", 0.0, "dropout probability before the classifier", min=0, max=1),
    "bn_eps": _f("float", 1e-3, "BatchNorm epsilon (weights converted from timm or the model zoo: 1e-5, taken from "
                 "the checkpoint)", min=0, min_exclusive=True),
    # model options for other sources' weights (the defaults are the papers' networks; a checkpoint's model card
    # records them, see README "Start from ImageNet weights")
    "padding": _f("str", PAPER_OPTIONS["padding"], "convolution padding: symmetric k // 2 (the papers'), same "
                  "(TensorFlow's / MindSpore's 'same' on every convolution: at stride 2 the extra row and column at the "
                  "bottom and right), same_depthwise (on the depthwise ones)", choices=PADDINGS),
    "activation": _f("str", PAPER_OPTIONS["activation"], "MobileNetV1's activation after every BatchNorm (mindcv's "
                     "weights: relu)", choices=V1_ACTIVATIONS),
    "head_width": _f("int", PAPER_OPTIONS["head_width"], "MobileNetV3's head width; 0 = the paper's (1024 small, "
                     "1280 large)", min=0),
    "head_bias": _f("bool", PAPER_OPTIONS["head_bias"], "MobileNetV3's head layer has a bias (the model zoo's has "
                    "none)"),
    # data
    "dataset": _f("str", "cifar10", "data set format", choices=("cifar10", "imagenet2012")),
    "dataset_path": _f("str", "", "training data (CIFAR-10 folder or ImageNet root)"),
    "eval_dataset_path": _f("str", "", "evaluation data; empty = dataset_path"),
    "batch_size": _f("int", 32, "batch size per device", min=1),
    "num_parallel_workers": _f("int", 4, "data pipeline workers (clamped to the CPU count)", min=1),
    "random_flip": _f("bool", True, "random horizontal flip in training"),
    "color_jitter": _f("float", 0.0, "brightness/contrast/saturation jitter (ImageNet training)", min=0),
    "crop_scale": _f("list[float]", [0.08, 1.0], "ImageNet training: random-resized-crop area range (fractions)",
                     min=0, max=1),
    "crop_ratio": _f("list[float]", [0.75, 4 / 3], "ImageNet training: random-resized-crop aspect ratio range",
                     min=0, min_exclusive=True),
    "auto_augment": _f("str", "", "training: automatic augmentation policy (MindSpore's vision ops); empty = none",
                       choices=("", "randaugment", "autoaugment", "trivialaugment")),
    "rand_num_ops": _f("int", 2, "RandAugment: operations per image", min=1),
    "rand_magnitude": _f("int", 9, "RandAugment: magnitude, 0..30", min=0, max=30),
    "re_prob": _f("float", 0.0, "training: random erasing probability (per image)", min=0, max=1),
    "mixup_alpha": _f("float", 0.0, "training: mixup Beta(alpha, alpha); 0 = off", min=0),
    "cutmix_alpha": _f("float", 0.0, "training: CutMix Beta(alpha, alpha); 0 = off", min=0),
    "mixup_prob": _f("float", 1.0, "training: probability that a batch is mixed (mixup or CutMix)", min=0, max=1),
    "mixup_switch_prob": _f("float", 0.5, "training: probability of CutMix rather than mixup when both are on "
                            "(in steps of 0.05)", min=0, max=1),
    "decode_device": _f("str", "CPU", "ImageNet: where JPEGs are decoded; Ascend = the device's DVPP decoder "
                        "(Atlas A2, device_target Ascend), the random crop then runs on the host",
                        choices=("CPU", "Ascend")),
    "eval_resize": _f("int", 0, "ImageNet evaluation: shorter side resized to this before the centre crop of "
                      "image_size; 0 = image_size / 0.875", min=0),
    "interpolation": _f("str", "bilinear", "ImageNet evaluation resize interpolation", choices=("bilinear", "bicubic")),
    "image_mean": _f("list[float]", [0.485, 0.456, 0.406], "ImageNet-style data: per-channel mean (0..1) subtracted"),
    "image_std": _f("list[float]", [0.229, 0.224, 0.225], "ImageNet-style data: per-channel std (0..1) divided by",
                    min=0, min_exclusive=True),
    # optimisation
    "epoch_size": _f("int", 90, "training epochs", min=1),
    "optimizer": _f("str", "momentum", "optimizer", choices=("momentum", "rmsprop")),
    "lr_init": _f("float", 0.0, "learning rate at the start of warm-up", min=0),
    "lr_max": _f("float", 0.1, "peak learning rate (end of warm-up)", min=0),
    "lr_end": _f("float", 0.0, "final learning rate", min=0),
    "warmup_epochs": _f("float", 0.0, "linear warm-up epochs", min=0),
    "lr_decay_mode": _f("str", "poly", "decay after warm-up", choices=("cosine", "poly", "linear", "steps")),
    "lr_power": _f("float", 2.0, "exponent of poly decay", min=0, min_exclusive=True),
    "lr_step_epochs": _f("list[int]", [30, 60, 80], "epochs at which steps decay multiplies by lr_step_gamma"),
    "lr_step_gamma": _f("float", 0.1, "factor of steps decay", min=0, min_exclusive=True, max=1),
    "momentum": _f("float", 0.9, "momentum (Momentum and RMSProp)", min=0, max=1),
    "weight_decay": _f("float", 4e-5, "L2 weight decay of conv and dense weights", min=0),
    "wd_depthwise": _f("bool", True, "weight decay on depthwise convolution weights too (the MobileNetV1 paper puts "
                       "little or none there)"),
    "rmsprop_decay": _f("float", 0.9, "RMSProp decay", min=0, max=1),
    "rmsprop_epsilon": _f("float", 0.001, "RMSProp epsilon", min=0, min_exclusive=True),
    "label_smooth_factor": _f("float", 0.0, "label smoothing", min=0, max=1),
    "ema": _f("bool", False, "keep an exponential moving average of the weights; evaluation, the best checkpoint and "
              "eval/export/predict use it"),
    "ema_decay": _f("float", 0.9999, "EMA decay per step", min=0, max=1, min_exclusive=True),
    "ema_warmup": _f("bool", False, "EMA decay min(ema_decay, (1 + n) / (10 + n)) at step n"),
    "use_ema": _f("bool", True, "eval/export/predict/pre_trained take a checkpoint's EMA weights when it has them"),
    "loss_scale": _f("float", 1.0, "loss scale (initial value when dynamic)", min=1),
    "loss_scale_type": _f("str", "fixed", "loss scale manager", choices=("fixed", "dynamic")),
    "amp_level": _f("str", "O0", "mixed precision level (GPU, Ascend; CPU trains in float32)",
                    choices=("O0", "O1", "O2", "O3")),
    "seed": _f("int", 1, "random seed (weights, data order, augmentation)", min=0),
    # checkpoints and logs
    "save_checkpoint": _f("bool", True, "save checkpoints"),
    "save_checkpoint_epochs": _f("int", 1, "epochs between checkpoints", min=1),
    "keep_checkpoint_max": _f("int", 5, "checkpoints kept", min=1),
    "save_checkpoint_path": _f("str", "./output", "output folder: checkpoints, logs, metrics, config"),
    "log_interval": _f("int", 10, "steps between loss log lines", min=1),
    "pre_trained": _f("str", "", "checkpoint to start from (head dropped if class_num differs)"),
    "resume": _f("str", "", "checkpoint to resume, or 'auto' for the newest in the output folder"),
    "run_eval": _f("bool", False, "evaluate during training and keep the best checkpoint"),
    "eval_interval": _f("int", 1, "epochs between evaluations", min=1),
    # device
    "device_target": _f("str", "CPU", "device", choices=("CPU", "GPU", "Ascend")),
    "device_id": _f("int", 0, "device id", min=0),
    "mode": _f("str", "graph", "execution mode", choices=("graph", "pynative")),
    "runtime_num_threads": _f("int", 0, "CPU runtime threads; 0 = all cores", min=0),
    "run_distribute": _f("bool", False, "data-parallel training"),
    "sync_bn": _f("bool", False, "BatchNorm statistics synchronised over the ranks in training (Ascend)"),
    "dataset_sink_mode": _f("bool", True, "data sink on GPU and Ascend (CPU has none)"),
    "sink_size": _f("int", -1, "steps per data sink, a divisor of the epoch's steps; -1 = sized for stop_seconds",
                    min=-1),
    "stop_seconds": _f("float", 10.0, "with data sink, the longest a stop (SIGTERM, Ctrl-C) may wait for the sink to "
                       "end: sink_size -1 picks the largest divisor of the epoch that runs this long at step_seconds; "
                       "0 = one sink per epoch", min=0),
    "step_seconds": _f("float", 0.5, "expected seconds per training step with data sink (the log's per step time / "
                       "1000); a run whose sinks take longer than stop_seconds says which step_seconds to set",
                       min=0, min_exclusive=True),
    "device_num": _f("int", 1, "devices (taken from the group size when distributed)", min=1),
    # evaluation
    "checkpoint_path": _f("str", "", "checkpoint to evaluate"),
    "result_file": _f("str", "", "eval.py writes its result as JSON here; predict.py as CSV or JSON (by extension)"),
    "confusion_matrix": _f("str", "", "eval.py draws the confusion matrix as this PNG (and writes it as CSV "
                           "beside it)"),
    # prediction
    "image": _f("str", "", "predict.py: an image file, or a folder searched recursively"),
    "model_file": _f("str", "", "predict.py, eval.py: an exported .mindir or .onnx file instead of a checkpoint"),
    "top_k": _f("int", 5, "predict.py: classes shown per image", min=1),
    # export
    "ckpt_file": _f("str", "", "checkpoint to export"),
    "file_name": _f("str", "mobilenet", "export file name (extension added)"),
    "file_format": _f("str", "MINDIR", "export format", choices=("MINDIR", "AIR", "ONNX")),
    "width": _f("int", 0, "export input width; 0 = image_size", min=0),
    "height": _f("int", 0, "export input height; 0 = image_size", min=0),
    "quantize": _f("str", "", "export.py, ONNX: int8 writes a statically quantized model (QDQ, int8 weights per "
                   "channel, uint8 activations calibrated on training images of dataset_path; MobileNetV3's h-swish "
                   "and gates stay float); empty = float32", choices=("", "int8")),
    "calibration_images": _f("int", 256, "quantize int8: training images whose activations set the scales", min=1),
    "calibration_method": _f("str", "percentile", "quantize int8: how the scales are set from them (percentile: "
                             "the 99.999th of the absolute values; minmax: the extremes)",
                             choices=("minmax", "entropy", "percentile")),
}

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _type_error(key, spec, value, source):
    return ConfigError(f"{source}: key '{key}' expects {spec.type}, got {value!r}")


def _scalar(key, spec, type_, value, source, from_text):
    if type_ == "bool":
        if isinstance(value, bool):
            return value
        if from_text and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
    elif type_ == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_text:
            try:
                return int(str(value).strip())
            except ValueError:
                pass
    elif type_ == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_text:
            try:
                return float(str(value).strip())
            except ValueError:
                pass
    elif type_ == "str":
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        if from_text or isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise _type_error(key, spec, value, source)


def coerce(key: str, value: Any, source: str, from_text: bool = False) -> Any:
    """Convert `value` to the declared type of `key`; `from_text` allows parsing strings (CLI)."""
    spec = SCHEMA[key]
    if spec.type.startswith("list["):
        item_type = spec.type[5:-1]
        if from_text and isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = yaml.safe_load(text)
                except yaml.YAMLError as err:
                    raise _type_error(key, spec, text, source) from err
            else:
                value = [v for v in (p.strip() for p in text.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, spec, value, source)
        return [_scalar(key, spec, item_type, v, source, from_text) for v in value]
    return _scalar(key, spec, spec.type, value, source, from_text)


def _check_range(key: str, value: Any, source: str) -> None:
    spec = SCHEMA[key]
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{source}: key '{key}' must be one of {', '.join(map(str, spec.choices))}; got {value!r}")
    items = value if isinstance(value, list) else [value]
    for item in items:
        if spec.min is not None and (item < spec.min or (spec.min_exclusive and item == spec.min)):
            bound = f"> {spec.min:g}" if spec.min_exclusive else f">= {spec.min:g}"
            raise ConfigError(f"{source}: key '{key}' must be {bound}; got {value!r}")
        if spec.max is not None and item > spec.max:
            raise ConfigError(f"{source}: key '{key}' must be <= {spec.max:g}; got {value!r}")


class Config:
    """Validated settings with attribute access.  `cli_keys` holds the keys set on the command line."""

    def __init__(self, values: dict, source: str = "", cli_keys: Sequence[str] = ()):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "cli_keys", frozenset(cli_keys))

    def __getattr__(self, key):
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"config has no key '{key}'") from None

    def __setattr__(self, key, value):
        if key not in SCHEMA:
            raise ConfigError(f"unknown config key '{key}'")
        value = coerce(key, value, "config")
        _check_range(key, value, "config")
        self._values[key] = value

    def to_dict(self) -> dict:
        return dict(self._values)

    def __str__(self) -> str:
        return yaml.safe_dump(self._values, sort_keys=False, default_flow_style=None).rstrip()

    def save(self, path: str) -> None:
        """Write the effective config as YAML (loadable again with `--config_path`)."""
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(f"# effective config (from {self.source})\n{self}\n")
        os.replace(tmp, path)


def load_yaml(path: str) -> dict:
    """Read a config file with `yaml.safe_load`; check it is a mapping of known keys."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as src:
            data = yaml.safe_load(src)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    for key in data:
        if key not in SCHEMA:
            raise ConfigError(f"{path}: unknown key '{key}'")
    return data


def validate(values: dict, source: str) -> None:
    """Range checks of every key, then checks between keys."""
    for key, value in values.items():
        _check_range(key, value, source)
    widths = MODELS[values["model"]][0]
    if values["width_mult"] not in widths:
        raise ConfigError(f"{source}: key 'width_mult' must be one of {', '.join(map(str, widths))} for "
                          f"{values['model']}; got {values['width_mult']:g}")
    if values["sync_bn"] and (values["device_target"] != "Ascend" or not values["run_distribute"]):
        raise ConfigError(f"{source}: key 'sync_bn' needs device_target Ascend and run_distribute true (MindSpore "
                          f"2.10's nn.SyncBatchNorm supports Ascend only); got device_target "
                          f"{values['device_target']}, run_distribute {values['run_distribute']}")
    if values["decode_device"] == "Ascend" and (values["device_target"] != "Ascend"
                                                or values["dataset"] != "imagenet2012"):
        raise ConfigError(f"{source}: key 'decode_device' Ascend decodes ImageNet JPEGs on the Ascend device's DVPP "
                          f"and needs device_target Ascend and dataset imagenet2012; got device_target "
                          f"{values['device_target']}, dataset {values['dataset']}")
    for key in ("image_mean", "image_std"):
        if len(values[key]) != 3:
            raise ConfigError(f"{source}: key '{key}' needs 3 values (R, G, B); got {values[key]}")
    for key in ("crop_scale", "crop_ratio"):
        if len(values[key]) != 2 or values[key][0] > values[key][1]:
            raise ConfigError(f"{source}: key '{key}' needs 2 values, low <= high; got {values[key]}")
    if values["sink_size"] == 0:
        raise ConfigError(f"{source}: key 'sink_size' must be -1 (sized for stop_seconds) or a number of steps >= 1; "
                          f"got 0")
    if values["warmup_epochs"] > values["epoch_size"]:
        raise ConfigError(f"{source}: warmup_epochs ({values['warmup_epochs']:g}) is longer than training "
                          f"(epoch_size {values['epoch_size']})")


class _ArgumentParser(ArgumentParser):
    error_type = ConfigError


def _build_parser(description: str) -> argparse.ArgumentParser:
    parser = _ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument("--config_path", default=DEFAULT_CONFIG, help="YAML config file")
    for key, spec in SCHEMA.items():
        hint = f"{spec.help} ({spec.type}"
        hint += f": {' | '.join(map(str, spec.choices))})" if spec.choices else ")"
        parser.add_argument(f"--{key}", default=None, metavar=spec.type.upper(), help=hint)
    return parser


def get_config(argv: Optional[Sequence[str]] = None, description: str = "", config_path: Optional[str] = None,
               overrides: Optional[dict] = None) -> Config:
    """Build the validated config from `--config_path` (or `config_path`), YAML values and CLI overrides.

    `argv=None` reads `sys.argv[1:]`; `overrides` are applied last (typed values, for library use).
    """
    parser = _build_parser(description)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        key = unknown[0].split("=")[0]
        raise ConfigError(f"command line: unknown key '{key.lstrip('-')}' (run with --help for the keys)")
    path = config_path or args.config_path
    values = {key: spec.default for key, spec in SCHEMA.items()}
    for key, value in load_yaml(path).items():
        values[key] = coerce(key, value, path)
    cli_keys = []
    for key in SCHEMA:
        text = getattr(args, key)
        if text is not None:
            values[key] = coerce(key, text, f"--{key}", from_text=True)
            cli_keys.append(key)
    for key, value in (overrides or {}).items():
        if key not in SCHEMA:
            raise ConfigError(f"unknown config key '{key}'")
        values[key] = coerce(key, value, "overrides")
    validate(values, path if not cli_keys else f"{path} + command line")
    return Config(values, source=path, cli_keys=cli_keys)
