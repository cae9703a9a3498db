"""Convert ImageNet weights of timm, torchvision or the MindSpore model zoo into a checkpoint of this repository:
python convert_weights.py --input mobilenetv3_large_100.safetensors --output mobilenet_v3_large_timm.ckpt

The model, width and class count are recognised from the tensor names and shapes (--model / --width_mult narrow the
search); the checkpoint records them with the source's BatchNorm epsilon, evaluation transform and class names, so
train.py --pre_trained, eval.py, predict.py and export.py build the same network from it without further keys."""
import argparse
import os

import src  # noqa: F401  (first: sets OpenMP's wait policy before MindSpore loads OpenMP, see src/__init__.py)
from src.checkpoint import save_checkpoint  # noqa: E402  pylint: disable=wrong-import-order
from src.convert import convert, evaluation_transform, read_weights, recognise
from src.errors import UserError
from src.model_card import card_entries, imagenet_class_names
from src.model_utils.cli import ArgumentParser, log, run
from src.models import MODELS


def _three_floats(text):
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got '{text}'")
    return values


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help=".safetensors, .pth/.pt/.bin (needs torch) or .ckpt file")
    parser.add_argument("--output", required=True, help="checkpoint to write (.ckpt)")
    parser.add_argument("--model", default="", choices=("",) + tuple(MODELS), help="narrow recognition to this model")
    parser.add_argument("--width_mult", type=float, default=0.0, help="narrow recognition to this width")
    parser.add_argument("--class_num", type=int, default=0, help="check the file has this many classes")
    parser.add_argument("--eval_resize", type=int, default=0,
                        help="evaluation resize the weights were measured with (default: the source's usual one, e.g. "
                             "256; torchvision's MobileNetV3-large IMAGENET1K_V2: 232; timm's ra4 weights: 235)")
    parser.add_argument("--image_mean", type=_three_floats, default=None,
                        help="normalisation mean, e.g. 0.5,0.5,0.5 (timm's ra4 weights); default ImageNet's")
    parser.add_argument("--image_std", type=_three_floats, default=None, help="normalisation std, as --image_mean")
    args = parser.parse_args()
    if not args.output.endswith(".ckpt"):
        raise UserError(f"--output '{args.output}' must end in .ckpt")
    tensors = read_weights(args.input)
    source = recognise(tensors, args.input)
    net, (model, width, classes), notes = convert(tensors, source, args.input, args.model, args.width_mult,
                                                  args.class_num)
    transform = evaluation_transform(source, model, vars(args))
    card = {"model": model, "width_mult": width, "class_num": classes, "bn_eps": source.bn_eps,
            "dataset": "imagenet2012", "image_size": 224,
            **transform, "class_names": imagenet_class_names() if classes == 1000 else None,
            "source": f"{source.name}: {os.path.basename(args.input)}"}
    folder = os.path.dirname(os.path.abspath(args.output))
    try:
        os.makedirs(folder, exist_ok=True)
        save_checkpoint(net, args.output, card_entries(card))
    except OSError as err:
        raise UserError(f"--output '{args.output}' cannot be written: {err.strerror}") from err
    for note in notes:
        log(note)
    log(f"converted {args.input} ({source.name}, {model} x{width:g}, {classes} classes, BatchNorm eps "
        f"{source.bn_eps:g}) -> {args.output}; evaluation: shorter side {transform['eval_resize']} "
        f"({transform['interpolation']}), centre crop 224, mean {transform['image_mean']}, "
        f"std {transform['image_std']}")
    return 0


if __name__ == "__main__":
    run(main)
