"""Evaluate a checkpoint: python eval.py --config_path CONFIG --dataset_path DATA --checkpoint_path CKPT

With --run_distribute True on N ranks (msrun, mpirun) each rank scores its shard and the sums are added up: the
result is that of one process, computed N times faster."""
import json
import os

from src.checkpoint import load_weights
from src.dataset import create_dataset, pipeline_errors_reported
from src.errors import UserError
from src.model_utils.cli import log, run
from src.model_utils.config import get_config
from src.model_utils.device import init_distributed, setup_device
from src.models import create_model
from src.training import build_model, evaluate


def main():
    config = get_config(description=__doc__)
    setup_device(config)
    rank, group_size = init_distributed(config)
    if not config.checkpoint_path:
        raise UserError("checkpoint_path is empty; expected --checkpoint_path PATH/TO/model.ckpt")
    net = create_model(config.model, config.class_num, config.width_mult, config.dropout, config.device_target)
    load_weights(net, config.checkpoint_path, "checkpoint_path")
    net.set_train(False)
    eval_ds = create_dataset(config, do_train=False, rank_id=rank, rank_size=group_size)
    model = build_model(config, net)
    with pipeline_errors_reported():
        result = evaluate(model, eval_ds)
    log(f"result: {result} ckpt={config.checkpoint_path}")
    if config.result_file and rank == 0:
        folder = os.path.dirname(os.path.abspath(config.result_file))
        try:
            os.makedirs(folder, exist_ok=True)
            with open(config.result_file, "w", encoding="utf-8") as out:
                json.dump({**result, "ckpt": config.checkpoint_path}, out, indent=2)
        except OSError as err:
            raise UserError(f"result_file '{config.result_file}' cannot be written: {err.strerror}") from err
    return 0


if __name__ == "__main__":
    run(main)
