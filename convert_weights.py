"""Convert ImageNet weights of timm, torchvision, the MindSpore model zoo or mindcv into a checkpoint of ours:
python convert_weights.py --input mobilenetv3_large_100/model.safetensors --output mobilenet_v3_large_timm.ckpt

The model, width and class count are recognised from the tensor names and shapes (--model / --width_mult narrow the
search); the checkpoint records them with the model options, BatchNorm epsilon, evaluation transform and class names of
the source, so train.py --pre_trained, eval.py, predict.py and export.py build the same network from it without
further keys.  timm's PyTorch-style and TensorFlow's (tf_*) weights have the same tensors: the hub folder's
config.json beside the file (or --source) tells them apart.

The other way: --to mindcv or --to zoo writes a checkpoint of this repository under the parameter names of mindcv's or
the model zoo's own network, for their code (mindcv: create_model(name, num_classes, checkpoint_path=...))."""
import argparse
import os

import src  # noqa: F401  (first: sets OpenMP's wait policy before MindSpore loads OpenMP, see src/__init__.py)
import mindspore as ms  # noqa: E402  pylint: disable=wrong-import-order
from src.checkpoint import build_network, read_checkpoint, save_checkpoint
from src.convert import (EXPORT_KEYS, SOURCE_KEYS, SOURCES, class_names, convert, evaluation_transform,
                         export_weights, hub_config, hub_model, read_weights, recognise)
from src.errors import UserError
from src.model_card import ARCHITECTURE_KEYS, card_entries, read_card
from src.model_utils.cli import ArgumentParser, log, run
from src.model_utils.config import get_config
from src.models import MODELS


def _three_floats(text):
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got '{text}'")
    return values


def _write(path, write):
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        write()
    except OSError as err:
        raise UserError(f"--output '{path}' cannot be written: {err.strerror}") from err


def to_source(args):
    """Our checkpoint `args.input` under the parameter names of `args.to`'s own network."""
    target = next(source for source in SOURCES if source.key == args.to)
    if not read_card(read_checkpoint(args.input, "input"), args.input):
        raise UserError(f"{args.input} has no model card: it does not say which network its weights are for (the "
                        f"checkpoints train.py and convert_weights.py write have one)")
    config = get_config([])
    net, _ = build_network(config, args.input, "input", for_export=True)
    architecture = {key: getattr(config, key) for key in ARCHITECTURE_KEYS}
    weights = export_weights(net, architecture, target, args.input)
    _write(args.output, lambda: save_checkpoint(
        [{"name": name, "data": ms.Tensor(value)} for name, value in weights.items()], args.output))
    log(f"wrote {args.input} ({config.model} x{config.width_mult:g}, {config.class_num} classes) under "
        f"{target.name}'s parameter names -> {args.output}")


def from_source(args):
    """The weights file `args.input` as our checkpoint."""
    tensors = read_weights(args.input)
    hub = hub_config(args.input)
    hub_source, hub_model_name, hub_width = hub_model(hub, args.input)
    source = recognise(tensors, args.input, args.source, hub_source)
    net, architecture = convert(tensors, source, args.input, args.model or hub_model_name,
                                args.width_mult or hub_width, args.class_num)
    transform = evaluation_transform(source, architecture["model"], vars(args), args.input, hub)
    origin = f"{source.name}: {os.path.basename(args.input)}" + (f" ({hub['architecture']})" if hub else "")
    card = {**architecture, "dataset": "imagenet2012", "image_size": 224, **transform,
            "class_names": class_names(source, architecture["class_num"]), "source": origin}
    _write(args.output, lambda: save_checkpoint(net, args.output, card_entries(card)))
    options = ", ".join(f"{key} {value}" for key, value in architecture.items()
                        if key in source.options.get(architecture["model"], {}))
    log(f"converted {args.input} ({source.name}, {architecture['model']} x{architecture['width_mult']:g}, "
        f"{architecture['class_num']} classes, BatchNorm eps {source.bn_eps:g}{', ' + options if options else ''}) -> "
        f"{args.output}; evaluation: shorter side {transform['eval_resize']} ({transform['interpolation']}), centre "
        f"crop 224, mean {transform['image_mean']}, std {transform['image_std']}")


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help=".safetensors, .pth/.pt/.bin (needs torch) or .ckpt file")
    parser.add_argument("--output", required=True, help="checkpoint to write (.ckpt)")
    parser.add_argument("--source", default="", choices=("",) + SOURCE_KEYS,
                        help="the weights' source where the file does not tell (timm's PyTorch-style or TensorFlow's "
                             "weights without the hub folder's config.json: timm or timm_tf)")
    parser.add_argument("--to", default="", choices=("",) + EXPORT_KEYS,
                        help="write our checkpoint --input for this source's own network instead")
    parser.add_argument("--model", default="", choices=("",) + tuple(MODELS), help="narrow recognition to this model")
    parser.add_argument("--width_mult", type=float, default=0.0, help="narrow recognition to this width")
    parser.add_argument("--class_num", type=int, default=0,
                        help="check the file has this many classes; 1000 for a 1001-output file of the model zoo or "
                             "mindcv drops the output their ImageNet labels never use (the last)")
    parser.add_argument("--eval_resize", type=int, default=0,
                        help="evaluation resize the weights were measured with (default: the source's, e.g. 256; "
                             "timm's hub config.json gives its own)")
    parser.add_argument("--image_mean", type=_three_floats, default=None,
                        help="normalisation mean, e.g. 0.5,0.5,0.5; default the source's")
    parser.add_argument("--image_std", type=_three_floats, default=None, help="normalisation std, as --image_mean")
    args = parser.parse_args()
    if not args.output.endswith(".ckpt"):
        raise UserError(f"--output '{args.output}' must end in .ckpt")
    if args.to:
        given = [f"--{key}" for key in ("source", "model", "width_mult", "class_num", "eval_resize", "image_mean",
                                        "image_std") if getattr(args, key)]
        if given:
            raise UserError(f"--to writes the checkpoint --input as it is; {', '.join(given)}: for converting "
                            f"another source's weights into this repository's")
        to_source(args)
    else:
        from_source(args)
    return 0


if __name__ == "__main__":
    run(main)
