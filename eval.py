"""Evaluate a checkpoint: python eval.py --config_path CONFIG --dataset_path DATA --checkpoint_path CKPT
or an exported model:   python eval.py --config_path CONFIG --dataset_path DATA --model_file NAME.mindir|NAME.onnx

The checkpoint's model card (written by train.py and convert_weights.py; for an exported model the NAME.json export.py
writes beside it) settles the model, width, BatchNorm epsilon, class count and evaluation transform, except for keys
given on the command line.  An exported model runs at the batch size it was exported with (a last partial batch is
padded; the padding is not counted): MINDIR through MindSpore, ONNX through onnxruntime.  With --run_distribute True on N
ranks (msrun, mpirun) each rank scores its shard and the sums are added up: the result is that of one process,
computed N times faster."""
import json
import os

from src.callbacks import TerminalProgress
from src.checkpoint import build_network
from src.dataset import create_dataset, pipeline_errors_reported
from src.errors import UserError
from src.model_card import EVALUATION_KEYS, apply_card, class_names
from src.model_utils.cli import log, run
from src.model_utils.config import get_config
from src.model_utils.device import init_distributed, setup_device
from src.plots import plot_confusion
from src.predict import exported_card, exported_model
from src.training import build_model, evaluate, evaluate_exported


def per_class_accuracy(confusion, names) -> list:
    """[{class, images, top_1_accuracy}] per true class (accuracy None for a class without images)."""
    rows = []
    for name, counts, correct in zip(names, confusion, confusion.diagonal()):
        images = int(counts.sum())
        rows.append({"class": name, "images": images, "top_1_accuracy": correct / images if images else None})
    return rows


def write_json(path: str, content: dict) -> None:
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as out:
            json.dump(content, out, indent=2)
    except OSError as err:
        raise UserError(f"result_file '{path}' cannot be written: {err.strerror}") from err


def main():
    config = get_config(description=__doc__)
    setup_device(config)
    rank, group_size = init_distributed(config)
    if bool(config.checkpoint_path) == bool(config.model_file):
        raise UserError("give one of --checkpoint_path PATH/TO/model.ckpt or --model_file NAME.mindir|NAME.onnx")
    if config.model_file:
        if group_size > 1:
            raise UserError("model_file: an exported model is evaluated by one process; run eval.py without msrun")
        card = exported_card(config.model_file)
        apply_card(config, card, config.model_file, EVALUATION_KEYS)
        run_model = exported_model(config.model_file, card.get("input_shape", [1])[0])
    else:
        net, card = build_network(config, config.checkpoint_path, "checkpoint_path")
        net.set_train(False)
    eval_ds = create_dataset(config, do_train=False, rank_id=rank, rank_size=group_size)
    batches = eval_ds.get_dataset_size()
    log(f"evaluating {config.model_file or config.checkpoint_path}: {batches} batches of up to {config.batch_size} "
        f"images from {config.eval_dataset_path or config.dataset_path}")
    progress = TerminalProgress(batches)
    with pipeline_errors_reported():
        if config.model_file:
            result, confusion = evaluate_exported(run_model, eval_ds, config.class_num, progress)
        else:
            result, confusion = evaluate(build_model(config, net), eval_ds, [progress] if rank == 0 else None)
    source = config.model_file or config.checkpoint_path
    log(f"result: {result} {'model' if config.model_file else 'ckpt'}={source}")
    if rank:
        return 0
    names = class_names(card, config.class_num)
    if config.confusion_matrix:
        plot_confusion(confusion, names, config.confusion_matrix)
        log(f"confusion matrix: {config.confusion_matrix} (counts: {os.path.splitext(config.confusion_matrix)[0]}.csv)")
    if config.result_file:
        write_json(config.result_file, {**result, "model" if config.model_file else "ckpt": source,
                                        "per_class": per_class_accuracy(confusion, names)})
    return 0


if __name__ == "__main__":
    run(main)
