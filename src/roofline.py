"""Roofline of a network on this machine: the least bytes and the FLOPs of an inference batch and of a training step,
this machine's measured memory bandwidth and floating-point peak, the time they bound a batch to, and an engine's
measured time as a fraction of that bound.

Counting model (float32, 4 bytes a value).  A layer is a conv or dense call (`src.models.stats.layer_sizes`);
BatchNorm, activations, pooling, the shortcut add and squeeze-excite's scaling are taken as fused into the layer
that produces or reads their tensor (as inference engines fold and fuse them), so only the input image and the
layers' outputs are activations.  Inference reads the input once, writes each layer output once and reads it once,
and reads the weights once.  Training does that forward pass, then a backward pass that reads the saved
activations once (the input and every layer output) and writes and reads a gradient of each layer output once;
the weights, their gradients and each optimizer state buffer move once.  Not counted: im2col, padding or layout
copies, BatchNorm's second pass over the batch, re-reading a tensor (a block input read again by its shortcut,
the weights read again by the backward), the loss, BatchNorm's moving statistics.  FLOPs are 2 x the layers'
multiply-adds (BatchNorm, activations, pooling and the optimizer not counted), training 3x the forward (the
forward, the input gradient and the weight gradient).  So both counts are lower bounds, and so is the time they
give; the bandwidth is main memory's (arrays far larger than the caches), so an engine that keeps tensors in a
large cache can pass the memory term.  The bound takes the network's totals, not a sum over layers of each layer's
slower term (tighter where depthwise layers are memory-bound and 1x1 layers compute-bound, but not a bound for an
engine that overlaps layers).
"""
import itertools
import threading
import time

import numpy as np

VALUE_BYTES = 4  # float32


def batch_bytes(input_values: int, activation_values: int, params: int, batch: int, training: bool,
                optimizer_states: int = 1) -> int:
    """Least bytes one inference batch (`training` False) or one training step moves: `input_values` and
    `activation_values` (the sum of the layers' output values) per image, `params` weight values, and for training
    `optimizer_states` buffers of the weights' size (1 for momentum); see the module docstring."""
    if training:  # forward (input once, outputs written + read), backward (saved read once, gradients written + read)
        per_image = (input_values + 2 * activation_values) + (input_values + activation_values + 2 * activation_values)
        weights = params * (2 + optimizer_states)  # weights, gradients, optimizer state: once each
    else:
        per_image = input_values + 2 * activation_values
        weights = params
    return VALUE_BYTES * (batch * per_image + weights)


def batch_flops(macs: int, batch: int, training: bool) -> int:
    """FLOPs of one inference batch or training step: 2 per multiply-add of the conv and dense layers (`macs` per
    image), training 3x (forward, input gradient, weight gradient)."""
    return 2 * macs * batch * (3 if training else 1)


def measure_bandwidth(threads: int, values: int = 1 << 25, repeats: int = 5) -> float:
    """Main-memory bandwidth in GB/s (1e9 bytes): the best of `repeats` copies (a = b: 2 values moved each) and adds
    (a = b + c: 3 values) over float32 arrays of `values` (default 128 MB each, far beyond the caches), each split
    in `threads` parts run by as many Python threads (numpy releases the GIL in copies and ufuncs, so they run in
    parallel).  Bytes are counted as the program sees them (a write once, write-allocate reads not counted)."""
    a, b, c = (np.ones(values, np.float32) for _ in range(3))
    bounds = np.linspace(0, values, threads + 1).astype(int)
    kinds = {2: lambda lo, hi: np.copyto(a[lo:hi], b[lo:hi]),
             3: lambda lo, hi: np.add(b[lo:hi], c[lo:hi], out=a[lo:hi])}
    best = 0.0
    for moved, kernel in kinds.items():
        for _ in range(repeats):
            workers = [threading.Thread(target=kernel, args=(lo, hi)) for lo, hi in itertools.pairwise(bounds)]
            start = time.perf_counter()
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            best = max(best, moved * VALUE_BYTES * values / (time.perf_counter() - start) / 1e9)
    return best


def measure_peak(size: int = 2048, repeats: int = 5) -> float:
    """Floating-point peak in GFLOP/s: the best of `repeats` float32 `size` x `size` matrix products in numpy's
    BLAS (2 * size^3 FLOPs each), on as many threads as its BLAS uses (the benchmark sets OPENBLAS_NUM_THREADS
    before numpy loads).  A large GEMM runs close to the FMA units' peak; it is what a well-blocked layer attains."""
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(2))
    np.matmul(x, y)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(x, y)
        best = max(best, 2 * size ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def bound_seconds(nbytes: int, flops: int, bandwidth_gb_s: float, peak_gflop_s: float) -> float:
    """The roofline bound: no engine runs the batch faster than its bytes at the bandwidth or its FLOPs at the
    peak, whichever takes longer."""
    return max(nbytes / (bandwidth_gb_s * 1e9), flops / (peak_gflop_s * 1e9))


def roofline_fraction(bound_s: float, batch: int, img_s: float) -> float:
    """Fraction of the roofline an engine reaches: bound time / its measured time per batch (`batch` / `img_s`);
    1 is the bound, 0.5 twice as slow."""
    return bound_s * img_s / batch


def network_counts(net, image_size: int, batch: int, optimizer_states: int = 1) -> dict:
    """Least bytes and FLOPs of an inference batch and a training step of `net` (standard MindSpore cells; its conv
    and dense layers found by one forward pass, `src.models.stats.layer_sizes`) on `batch` RGB images of
    `image_size` x `image_size`: {"infer_bytes", "infer_flops", "train_bytes", "train_flops"}."""
    from src.models import count_params  # pylint: disable=import-outside-toplevel  (MindSpore: only when counting)
    from src.models.stats import layer_sizes  # pylint: disable=import-outside-toplevel

    layers = layer_sizes(net, image_size)
    macs, activations = sum(m for m, _ in layers), sum(v for _, v in layers)
    sizes = (3 * image_size * image_size, activations, count_params(net), batch)
    return {"infer_bytes": batch_bytes(*sizes, training=False), "infer_flops": batch_flops(macs, batch, False),
            "train_bytes": batch_bytes(*sizes, training=True, optimizer_states=optimizer_states),
            "train_flops": batch_flops(macs, batch, True)}
