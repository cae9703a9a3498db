"""What the ranks of a data-parallel run agree on between steps: the collectives (a stop, the resume point,
evaluation sums, BatchNorm statistics) and the averaged BatchNorm statistics that evaluation and checkpoints use.

The collectives are MindSpore's primitives called eagerly on numpy values, on every backend (HCCL, NCCL, MCCL):
MindSpore's functional ones (`mindspore.communication.comm_func`) have no CPU kernel in 2.10 ("Create kernelmod for
op InnerCommAllReduce failed").  In a single process every function here returns its input."""
import contextlib
import os
import zlib

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from mindspore.communication import GlobalComm, get_group_size, get_rank

from src.errors import UserError

RANK_STATISTICS = "rank_statistics"  # checkpoint entries `rank_statistics.<rank>.<parameter>`: each rank's own
_primitives = {}


def rank_and_size() -> tuple:
    """(this rank, number of ranks); (0, 1) outside a distributed run."""
    if not GlobalComm.INITED:
        return 0, 1
    return get_rank(), get_group_size()


def _primitive(name: str):
    if name not in _primitives:
        _primitives[name] = {"sum": ops.AllReduce, "gather": ops.AllGather}[name]()
    return _primitives[name]


def all_reduce(values) -> np.ndarray:
    """The sum of every rank's `values`, in float32 (MindSpore's CPU AllReduce sums float32 or float16 only: counts
    are exact below 2**24)."""
    values = np.asarray(values, np.float32)
    if rank_and_size()[1] == 1:
        return values
    return _primitive("sum")(ms.Tensor(values)).asnumpy()


def all_gather(values) -> np.ndarray:
    """Every rank's `values` (float32 or int32), stacked: shape (ranks, *values.shape)."""
    values = np.asarray(values)[None]
    if rank_and_size()[1] == 1:
        return values
    return _primitive("gather")(ms.Tensor(values)).asnumpy()


def barrier() -> None:
    """Return only when every rank has called it."""
    all_reduce(np.zeros(1, np.float32))


def check_same_start(checkpoint: str, global_step: int) -> None:
    """Every rank must start from the same checkpoint and step (a rank that starts elsewhere would wait forever in
    a collective, or train other weights): a one-line `UserError` on every rank when they disagree."""
    size = rank_and_size()[1]
    if size == 1:
        return
    name = zlib.crc32(os.path.basename(checkpoint).encode()) & 0x7FFFFFFF if checkpoint else 0
    starts = all_gather(np.array([global_step, name], np.int32))
    if (starts != starts[0]).any():
        described = ", ".join(f"rank {rank}: " + (f"step {step}" if step else "no checkpoint")
                              for rank, (step, _) in enumerate(starts.tolist()))
        raise UserError(f"the ranks would resume from different checkpoints ({described}): every rank must read the "
                        f"same save_checkpoint_path (on several machines a shared folder) with the same --resume")


def moving_statistics(net: nn.Cell) -> list:
    """The BatchNorm moving means and variances of `net` (Parameters, in parameter order)."""
    cells = [cell for _, cell in net.cells_and_names() if isinstance(cell, nn.BatchNorm2d)]
    return [param for cell in cells for param in (cell.moving_mean, cell.moving_variance)]


@contextlib.contextmanager
def averaged_statistics(net: nn.Cell):
    """Inside the block `net`'s BatchNorm moving statistics are the mean over the ranks (each rank sees only its
    share of the batches, so each has its own); afterwards each rank's own are back.  Yields every rank's own, as
    `{f"rank_statistics.<rank>.<name>": array}` (empty in a single process).  Every rank must enter it."""
    params = moving_statistics(net)
    size = rank_and_size()[1]
    if size == 1 or not params:
        yield {}
        return
    own = [param.asnumpy() for param in params]
    gathered = all_gather(np.concatenate([value.ravel() for value in own]))
    mean = gathered.astype(np.float64).mean(axis=0).astype(np.float32)
    per_rank, offset = {}, 0
    for param, value in zip(params, own):
        chunk = slice(offset, offset + value.size)
        param.set_data(ms.Tensor(mean[chunk].reshape(value.shape)))
        for rank in range(size):
            per_rank[f"{RANK_STATISTICS}.{rank}.{param.name}"] = gathered[rank, chunk].reshape(value.shape)
        offset += value.size
    try:
        yield per_rank
    finally:
        for param, value in zip(params, own):
            param.set_data(ms.Tensor(value))


def restore_own_statistics(net: nn.Cell, checkpoint: dict) -> bool:
    """Load this rank's own BatchNorm statistics from a checkpoint written inside `averaged_statistics` (a resumed
    rank continues from its own, as if never interrupted); False when it has none for this rank."""
    rank = rank_and_size()[0]
    params = moving_statistics(net)
    names = [f"{RANK_STATISTICS}.{rank}.{param.name}" for param in params]
    if not params or not all(name in checkpoint for name in names):
        return False
    for param, name in zip(params, names):
        param.set_data(ms.Tensor(checkpoint[name].asnumpy()))
    return True
