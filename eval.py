"""Evaluate a checkpoint: python eval.py --config_path CONFIG --dataset_path DATA --checkpoint_path CKPT

The checkpoint's model card (written by train.py and convert_weights.py) settles the model, width, BatchNorm epsilon,
class count and evaluation transform, except for keys given on the command line.  With --run_distribute True on N
ranks (msrun, mpirun) each rank scores its shard and the sums are added up: the result is that of one process,
computed N times faster."""
import json
import os

from src.callbacks import TerminalProgress
from src.checkpoint import build_network
from src.dataset import create_dataset, pipeline_errors_reported
from src.errors import UserError
from src.model_card import class_names
from src.model_utils.cli import log, run
from src.model_utils.config import get_config
from src.model_utils.device import init_distributed, setup_device
from src.plots import plot_confusion
from src.training import build_model, evaluate


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
    if not config.checkpoint_path:
        raise UserError("checkpoint_path is empty; expected --checkpoint_path PATH/TO/model.ckpt")
    net, card = build_network(config, config.checkpoint_path, "checkpoint_path")
    net.set_train(False)
    eval_ds = create_dataset(config, do_train=False, rank_id=rank, rank_size=group_size)
    model = build_model(config, net)
    progress = TerminalProgress(eval_ds.get_dataset_size())
    with pipeline_errors_reported():
        result, confusion = evaluate(model, eval_ds, [progress] if rank == 0 else None)
    log(f"result: {result} ckpt={config.checkpoint_path}")
    if rank:
        return 0
    names = class_names(card, config.class_num)
    if config.confusion_matrix:
        plot_confusion(confusion, names, config.confusion_matrix)
        log(f"confusion matrix: {config.confusion_matrix} (counts: {os.path.splitext(config.confusion_matrix)[0]}.csv)")
    if config.result_file:
        write_json(config.result_file, {**result, "ckpt": config.checkpoint_path,
                                        "per_class": per_class_accuracy(confusion, names)})
    return 0


if __name__ == "__main__":
    run(main)
