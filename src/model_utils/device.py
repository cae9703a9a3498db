"""Execution context: mode, device target and id, CPU threads and seeds, set in one call."""
import logging
import os
import random

import mindspore as ms
import numpy as np
from mindspore import log as ms_log

from src import stop_with_launcher
from src.errors import UserError
from src.model_utils.cli import log, set_log_rank, warn

MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}
COMM_BACKENDS = {"Ascend": "hccl", "GPU": "nccl", "CPU": "mccl"}


def target_available(device_target: str) -> bool:
    """Whether this machine can run `device_target`, without MindSpore's plugin-loading warnings."""
    logger = ms_log._get_logger()  # pylint: disable=protected-access
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return ms.hal.is_available(device_target)
    finally:
        logger.setLevel(level)


def setup_device(config) -> None:
    """Set mode, device, CPU threads and seeds from `config` (device_target, device_id, mode,
    runtime_num_threads, seed).  A target the config file asks for and this machine lacks falls back to CPU with a
    warning (`config` says so from then on); one asked for on the command line is a one-line `UserError`."""
    target = config.device_target
    if not target_available(target):
        if "device_target" in config.cli_keys or target == "CPU":
            raise UserError(f"device_target {target} is not available on this machine "
                            f"(no {target} device or driver found); use --device_target CPU")
        warn(f"device_target {target} ({config.source}) is not available on this machine (no {target} device or "
             f"driver found): running on CPU")
        config.device_target = target = "CPU"
    if config.mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}; got {config.mode!r}")
    ms.set_context(mode=MODES[config.mode])
    ms.set_device(target, _device_id(config))
    if target == "CPU":
        threads = config.runtime_num_threads or os.cpu_count() or 1
        try:
            ms.device_context.cpu.op_tuning.threads_num(threads)
        except RuntimeError:  # already set in this process (it can be set only once)
            pass
    set_seed(config.seed)


def _device_id(config):
    """The configured device id; a distributed rank started without --device_id takes its launcher's
    (msrun assigns one when given None; mpirun exports OMPI_COMM_WORLD_LOCAL_RANK)."""
    if not config.run_distribute or "device_id" in config.cli_keys:
        return config.device_id
    local_rank = os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK")
    return int(local_rank) if local_rank is not None else None


def set_seed(seed: int) -> None:
    """Seed MindSpore (weights and ops), its dataset engine, numpy and Python's `random`."""
    ms.set_seed(seed)
    ms.dataset.config.set_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def init_distributed(config) -> tuple:
    """With `run_distribute`, join the collective group of the target (HCCL on Ascend, NCCL on GPU, MCCL on CPU)
    in data-parallel mode with mean gradients, set `config.device_num` to the group size and prefix later log
    lines with the rank; logs the rank's pid (the launch scripts name a failed rank by it).
    Returns (rank, group size)."""
    if not config.run_distribute:
        return 0, 1
    from mindspore.communication import get_group_size, get_rank, init  # pylint: disable=import-outside-toplevel
    backend = COMM_BACKENDS[config.device_target]
    stop_with_launcher()
    try:
        init(backend)
    except RuntimeError as err:
        raise UserError(f"run_distribute: the {backend.upper()} group failed ({str(err).splitlines()[0]}); "
                        f"start every rank through msrun, mpirun or an Ascend rank table "
                        f"(scripts/run_distribute_train*.sh)") from err
    rank, group_size = get_rank(), get_group_size()
    config.device_num = group_size
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=group_size)
    set_log_rank(rank, group_size)
    log(f"joined the {backend.upper()} group as rank {rank} of {group_size} (pid {os.getpid()})")
    return rank, group_size
