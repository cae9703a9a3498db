"""Speed and memory benchmark: python -m src.benchmark [--models ...] [--compare torch,onnxruntime] [--rounds N]

A model is `name:width`, optionally with model options (`:key=value`, e.g. `mobilenet_v3_small:1.0:padding=same` for
TensorFlow's network; the peers always run the paper's).

For each model: graph compile time, training ms/step and img/s (forward + backward + optimizer, steady state, fixed
batch), training img/s fed by the real JPEG pipeline, inference img/s, parameters, MACs, achieved GMAC/s (training
counts 3x the forward MACs), peak resident memory, and the roofline: the least MB and the GFLOPs of a training step
and an inference batch, the time they bound it to on this machine (its memory bandwidth and FMA peak, measured on as
many threads) and each engine's fraction of that bound (`src/roofline.py`); plus the training data pipelines' img/s
(CIFAR binary, and 500x375 JPEGs to 224 with the zoo's recipe and with RandAugment + random erasing + mixup + CutMix;
decode + augment, no model).  Every timing is the median of `--repeats` runs of `--steps` steps.  Each model runs in a
fresh process so that its memory peak and compile time are its own.  `--compare torch` measures the same architectures
in PyTorch eager (torchvision's MobileNetV3; V1 from the same table) with the same threads, batch and resolution, both
in NCHW and in channels-last memory format, and prints our ratio to the faster; `--compare onnxruntime` runs our own
ONNX export in onnxruntime (threads matched) for inference.  `--baseline DIR` measures the same models with another
checkout of this repository (e.g. `git worktree add DIR <commit>`), for a before/after comparison of a change in one
command.  With `--rounds N` the engines take turns N times and every figure is the median of its rounds (the machine
is shared and noisy).
"""
import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

import src
from src.errors import UserError
from src.model_utils.cli import log, run
from src.roofline import bound_seconds, measure_bandwidth, measure_peak, roofline_fraction

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PEER = os.path.join(ROOT_DIR, "scripts", "torch_peer.py")
PEERS = ("torch", "onnxruntime")
RATE_FIELDS = ("train_img_s", "train_data_img_s", "infer_img_s")
MODEL_FIELDS = ("model", "width_mult", "options", "batch_size", "image_size", "threads", "params", "macs_m",
                "compile_s", "train_ms_per_step", "train_img_s", "train_gmac_s", "train_data_img_s", "infer_img_s",
                "infer_gmac_s", "peak_rss_mb", "train_mb", "train_gflop", "infer_mb", "infer_gflop")
PEER_FIELDS = ("torch_train_img_s", "torch_infer_img_s", "torch_cl_train_img_s", "torch_cl_infer_img_s", "train_ratio",
               "infer_ratio", "ort_infer_img_s", "ort_ratio", "base_train_img_s", "base_infer_img_s",
               "base_train_ratio", "base_infer_ratio")
ROOFLINE_FIELDS = ("train_bound_ms", "train_roofline_frac", "torch_train_roofline_frac", "infer_bound_ms",
                   "infer_roofline_frac", "torch_infer_roofline_frac", "ort_roofline_frac")
MACHINE_FIELDS = ("mem_gb_s", "peak_gflop_s")


def median_rate(run_steps, steps: int, repeats: int, batch: int) -> float:
    """Median images/s of `repeats` timings of `run_steps(steps)`."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_steps(steps)
        rates.append(steps * batch / (time.perf_counter() - start))
    return float(np.median(rates))


def endless_batches(dataset, output_numpy: bool = False):
    """The dataset's batches, epoch after epoch, without end."""
    iterator = dataset.create_tuple_iterator(num_epochs=-1, output_numpy=output_numpy)
    while True:
        yield from iterator


def measure_model(args, name: str, width: float, data_root: str, options: list) -> dict:
    """All model figures of `name` at `width` with the model `options` ("key=value"), measured in this process
    (called in a fresh worker process)."""
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    import mindspore.nn as nn  # pylint: disable=import-outside-toplevel
    from src.checkpoint import build_network  # pylint: disable=import-outside-toplevel
    from src.dataset import create_dataset  # pylint: disable=import-outside-toplevel
    from src.loss import CrossEntropySmooth, LossRecorder  # pylint: disable=import-outside-toplevel
    from src.model_utils.config import get_config  # pylint: disable=import-outside-toplevel
    from src.model_utils.device import setup_device  # pylint: disable=import-outside-toplevel
    from src.models import MODELS, count_macs, count_params, create_model  # pylint: disable=import-outside-toplevel
    from src.optimizer import create_optimizer  # pylint: disable=import-outside-toplevel
    from src.roofline import network_counts  # pylint: disable=import-outside-toplevel

    config = get_config([f"--{option}" for option in options], overrides={
        "model": name, "width_mult": width, "image_size": args.image_size, "dropout": MODELS[name][1],
        "batch_size": args.batch_size, "runtime_num_threads": args.threads, "dataset": "imagenet2012",
        "dataset_path": os.path.join(data_root, "imagefolder"), "class_num": 10, "seed": 1})
    setup_device(config)
    architecture = {"width_mult": width, "padding": config.padding, "activation": config.activation,
                    "head_width": config.head_width, "head_bias": config.head_bias}
    reference = create_model(name, class_num=1000, **architecture)
    row = {"model": name, "width_mult": width, "options": " ".join(options), "batch_size": args.batch_size,
           "image_size": args.image_size,
           "threads": args.threads or os.cpu_count(), "params": count_params(reference),
           "macs_m": round(count_macs(reference, args.image_size) / 1e6, 2)}
    counts = network_counts(create_model(name, class_num=config.class_num, **architecture), args.image_size,
                            args.batch_size)  # the network timed here (its class count), the roofline's counts
    for kind in ("train", "infer"):
        row[f"{kind}_mb"] = round(counts[f"{kind}_bytes"] / 1e6, 1)
        row[f"{kind}_gflop"] = round(counts[f"{kind}_flops"] / 1e9, 2)
    net = build_network(config)[0]  # as train.py and eval.py build it: on CPU lowered for the C++ kernels
    train_step = nn.TrainOneStepCell(nn.WithLossCell(net, LossRecorder(CrossEntropySmooth(10))),  # as train.py
                                     create_optimizer(net, 0.01, "momentum", 0.9, 1e-4))
    train_step.set_train(True)
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((args.batch_size, 3, args.image_size, args.image_size), np.float32))
    labels = ms.Tensor(rng.integers(0, 10, args.batch_size).astype(np.int32))

    def train_steps(steps):
        for _ in range(steps):
            loss = train_step(images, labels)
        loss.asnumpy()

    start = time.perf_counter()
    train_steps(1)
    row["compile_s"] = round(time.perf_counter() - start, 2)
    train_steps(args.warmup)
    rate = median_rate(train_steps, args.steps, args.repeats, args.batch_size)
    row["train_img_s"] = round(rate, 2)
    row["train_ms_per_step"] = round(1000 * args.batch_size / rate, 1)
    row["train_gmac_s"] = round(3 * row["macs_m"] * rate / 1000, 2)

    data = create_dataset(config, do_train=True)
    batches = endless_batches(data)

    def fed_steps(steps):
        for _ in range(steps):
            image, label = next(batches)
            loss = train_step(image, label)
        loss.asnumpy()

    fed_steps(args.warmup)
    row["train_data_img_s"] = round(median_rate(fed_steps, args.steps, args.repeats, args.batch_size), 2)

    net.set_train(False)

    def infer_steps(steps):
        for _ in range(steps):
            out = net(images)
        out.asnumpy()

    infer_steps(1 + args.warmup)
    rate = median_rate(infer_steps, args.steps, args.repeats, args.batch_size)
    row["infer_img_s"] = round(rate, 2)
    row["infer_gmac_s"] = round(row["macs_m"] * rate / 1000, 2)
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


HEAVY_RECIPE = {"auto_augment": "randaugment", "re_prob": 0.25, "mixup_alpha": 0.2, "cutmix_alpha": 1.0}
JPEG_SIZE = (500, 375)  # width, height: the typical ImageNet photo


def write_jpegs(data_root: str, per_class: int = 32) -> str:
    """The demo's training digits enlarged to 500x375 JPEGs (`per_class` per class), as a class-folder tree; returns
    its path.  Decoding cost is that of ImageNet-sized photos."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    source = os.path.join(data_root, "imagefolder", "train")
    target = os.path.join(data_root, "jpeg{}x{}".format(*JPEG_SIZE))
    for name in sorted(os.listdir(source)):
        os.makedirs(os.path.join(target, name), exist_ok=True)
        for file in sorted(os.listdir(os.path.join(source, name)))[:per_class]:
            with Image.open(os.path.join(source, name, file)) as image:
                image.convert("RGB").resize(JPEG_SIZE, Image.BILINEAR).save(
                    os.path.join(target, name, file), "JPEG", quality=90)
    return target


def measure_pipelines(args, data_root: str) -> dict:
    """Training pipelines alone (decode + augment + batch): CIFAR binary at 32, and 500x375 JPEGs to image_size with
    the zoo's recipe (random resized crop, flip) and with the heaviest one (plus RandAugment, random erasing, mixup
    and CutMix)."""
    from src.dataset import create_dataset  # pylint: disable=import-outside-toplevel
    from src.model_utils.config import get_config  # pylint: disable=import-outside-toplevel

    rates = {}
    jpegs = write_jpegs(data_root)
    for key, dataset, path, size, recipe in (
            ("cifar_pipeline_img_s", "cifar10", os.path.join(data_root, "cifar10", "cifar-10-batches-bin"), 32, {}),
            ("jpeg_pipeline_img_s", "imagenet2012", jpegs, args.image_size, {}),
            ("jpeg_heavy_pipeline_img_s", "imagenet2012", jpegs, args.image_size, HEAVY_RECIPE)):
        config = get_config([], overrides={"dataset": dataset, "dataset_path": path, "image_size": size,
                                           "batch_size": args.batch_size, "class_num": 10, **recipe})
        batches = endless_batches(create_dataset(config, do_train=True), output_numpy=True)

        def take(steps, batches=batches):
            for _ in range(steps):
                next(batches)

        take(args.warmup)
        rates[key] = round(median_rate(take, max(args.steps, 20), args.repeats, args.batch_size), 1)
    return rates


def measure_onnxruntime(args, name: str, width: float) -> dict:
    """Inference img/s of our own ONNX export of the network (what export.py writes) in onnxruntime, with as many
    intra-op threads as ours."""
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    import onnxruntime  # pylint: disable=import-outside-toplevel
    from mindspore.onnx import export as export_onnx  # pylint: disable=import-outside-toplevel
    from src.models import create_model  # pylint: disable=import-outside-toplevel
    from src.onnx_graph import optimize_file  # pylint: disable=import-outside-toplevel

    net = create_model(name, class_num=10, width_mult=width)  # what export.py exports
    net.set_train(False)
    images = np.random.default_rng(0).standard_normal((args.batch_size, 3, args.image_size, args.image_size),
                                                      np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "net.onnx")
        export_onnx(net, ms.Tensor(images), file_name=path, input_names=["image"], output_names=["logits"])
        optimize_file(path)  # as export.py writes it
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads or os.cpu_count()
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def infer_steps(steps):
        for _ in range(steps):
            session.run(None, {"image": images})

    infer_steps(1 + args.warmup)
    return {"infer_img_s": round(median_rate(infer_steps, args.steps, args.repeats, args.batch_size), 2),
            "onnxruntime": onnxruntime.__version__}


def measure_machine(args) -> dict:
    """This machine's memory bandwidth (GB/s) and float32 peak (GFLOP/s) on the benchmark's threads (numpy's BLAS
    threads are set by the caller's OPENBLAS_NUM_THREADS); measured at the start and after every round of each
    model, the roofline takes the best of them."""
    threads = args.threads or os.cpu_count()
    return {"mem_gb_s": round(measure_bandwidth(threads), 1), "peak_gflop_s": round(measure_peak(), 1)}


def add_roofline(row: dict, machine: dict) -> dict:
    """`row` with the roofline's bound (ms per training step and inference batch) and the fraction of it each
    engine reaches: ours, the faster PyTorch layout, onnxruntime (inference)."""
    for kind in ("train", "infer"):
        bound = bound_seconds(row[f"{kind}_mb"] * 1e6, row[f"{kind}_gflop"] * 1e9, machine["mem_gb_s"],
                              machine["peak_gflop_s"])
        row[f"{kind}_bound_ms"] = round(1000 * bound, 1)
        rates = {f"{kind}_roofline_frac": row[f"{kind}_img_s"]}
        if f"torch_{kind}_img_s" in row:  # the faster PyTorch layout
            rates[f"torch_{kind}_roofline_frac"] = max(row[f"torch_{kind}_img_s"], row[f"torch_cl_{kind}_img_s"])
        if kind == "infer" and "ort_infer_img_s" in row:
            rates["ort_roofline_frac"] = row["ort_infer_img_s"]
        for field, img_s in rates.items():
            row[field] = round(roofline_fraction(bound, row["batch_size"], img_s), 3)
    return row


def _worker(args) -> None:
    """Measure one item in this (fresh) process and print it as JSON on the last line."""
    if args.worker == "pipelines":
        result = measure_pipelines(args, args.data_root)
    elif args.worker == "machine":
        result = measure_machine(args)
    elif args.worker.startswith("onnxruntime:"):
        _, name, width = args.worker.split(":")
        result = measure_onnxruntime(args, name, float(width))
    else:
        name, width, *options = args.worker.split(":")
        result = measure_model(args, name, float(width), args.data_root, options)
    print(json.dumps(result))


def _run_json(cmd: list, what: str, env: dict = None, cwd: str = ROOT_DIR) -> dict:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise UserError(f"benchmark of {what} failed (exit {proc.returncode}): "
                        f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _common_args(args) -> list:
    return ["--batch_size", str(args.batch_size), "--image_size", str(args.image_size), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--threads", str(args.threads)]


def torch_python(args) -> str:
    """The interpreter that has torch and torchvision, or "" when none is found."""
    for candidate in (args.torch_python, os.environ.get("TORCH_PYTHON", ""), sys.executable):
        if candidate and os.access(candidate, os.X_OK) and subprocess.run(
                [candidate, "-c", "import torch, torchvision"], capture_output=True, check=False).returncode == 0:
            return candidate
    return ""


def _median(runs: list, key: str):
    return round(float(np.median([run[key] for run in runs])), 2)


def compare_row(runs: dict) -> dict:
    """Our figures (medians over the rounds) and each peer's, with the ratios ours / theirs: training and inference
    against the faster of PyTorch NCHW and channels-last, inference against onnxruntime."""
    row = {**runs["ours"][0], **{key: _median(runs["ours"], key) for key in RATE_FIELDS}}
    row["train_ms_per_step"] = round(1000 * row["batch_size"] / row["train_img_s"], 1)
    row["train_gmac_s"] = round(3 * row["macs_m"] * row["train_img_s"] / 1000, 2)
    row["infer_gmac_s"] = round(row["macs_m"] * row["infer_img_s"] / 1000, 2)
    if "torch" in runs:
        for prefix, engine in (("torch", "torch"), ("torch_cl", "torch_cl")):
            row[f"{prefix}_train_img_s"] = _median(runs[engine], "train_img_s")
            row[f"{prefix}_infer_img_s"] = _median(runs[engine], "infer_img_s")
        for kind in ("train", "infer"):
            faster = max(row[f"torch_{kind}_img_s"], row[f"torch_cl_{kind}_img_s"])
            row[f"{kind}_ratio"] = round(row[f"{kind}_img_s"] / faster, 2)
    if "ort" in runs:
        row["ort_infer_img_s"] = _median(runs["ort"], "infer_img_s")
        row["ort_ratio"] = round(row["infer_img_s"] / row["ort_infer_img_s"], 2)
    if "base" in runs:
        for kind in ("train", "infer"):
            row[f"base_{kind}_img_s"] = _median(runs["base"], f"{kind}_img_s")
            row[f"base_{kind}_ratio"] = round(row[f"{kind}_img_s"] / row[f"base_{kind}_img_s"], 2)
    return row


def print_table(rows: list, pipelines: dict, machine: dict) -> None:
    fields = [f for f in MODEL_FIELDS + PEER_FIELDS + ROOFLINE_FIELDS if any(f in row for row in rows)]
    widths = {f: max(len(f), *(len(str(row.get(f, ""))) for row in rows)) for f in fields}
    log("  ".join(f.rjust(widths[f]) for f in fields))
    for row in rows:
        log("  ".join(str(row.get(f, "")).rjust(widths[f]) for f in fields))
    log("  ".join(f"{key}: {value}" for key, value in {**pipelines, **machine}.items()))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mobilenet_v1:1.0,mobilenet_v1:0.25,mobilenet_v3_small:1.0,"
                                              "mobilenet_v3_large:1.0",
                        help="comma-separated name:width list, each optionally with :key=value model options")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = all cores")
    parser.add_argument("--compare", default="", help="peers, comma-separated: torch (PyTorch eager, NCHW and "
                                                      "channels-last), onnxruntime (our ONNX export, inference)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds alternating ours and the peers; each "
                                                              "figure is the median of its rounds")
    parser.add_argument("--baseline", default="", help="another checkout of this repository to measure too (ours / "
                                                       "its ratios: base_train_ratio, base_infer_ratio)")
    parser.add_argument("--torch_python", default="", help="python with torch + torchvision (or $TORCH_PYTHON)")
    parser.add_argument("--output", default="benchmark.json", help="JSON file; a .csv beside it too")
    parser.add_argument("--data_root", default="", help=argparse.SUPPRESS)
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.compare = [peer for peer in args.compare.split(",") if peer]
    unknown = [peer for peer in args.compare if peer not in PEERS]
    if unknown:
        raise UserError(f"--compare: unknown peer '{unknown[0]}'; expected {' or '.join(PEERS)}")
    for key in ("batch_size", "steps", "repeats", "rounds"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key} must be >= 1; got {getattr(args, key)}")
    if args.image_size < 32:
        raise UserError(f"--image_size must be >= 32; got {args.image_size}")
    if args.baseline and not os.path.isfile(os.path.join(args.baseline, "src", "benchmark.py")):
        raise UserError(f"--baseline {args.baseline}: expected a checkout of this repository (no src/benchmark.py)")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    models = [item if ":" in item else f"{item}:1.0" for item in args.models.split(",") if item]
    peer = torch_python(args) if "torch" in args.compare else ""
    if "torch" in args.compare and not peer:
        log("--compare torch: torch and torchvision are not installed (set --torch_python or $TORCH_PYTHON to an "
            "interpreter that has them); skipping the comparison")
    with tempfile.TemporaryDirectory() as data_root:
        from src.demo_data import write_demo_data  # pylint: disable=import-outside-toplevel
        write_demo_data(data_root)
        me = [sys.executable, "-m", "src.benchmark", "--data_root", data_root, *_common_args(args)]
        pipelines = _run_json(me + ["--worker", "pipelines"], "the data pipelines")
        machine_env = {**os.environ, "OPENBLAS_NUM_THREADS": str(args.threads or os.cpu_count())}  # numpy's BLAS
        machines = [_run_json(me + ["--worker", "machine"], "the memory bandwidth and peak", env=machine_env)]
        rows = []
        peer_env = dict(os.environ)
        if src.WAIT_POLICY_DEFAULTED:  # PyTorch runs with OpenMP's default wait policy (it is faster so)
            peer_env.pop("OMP_WAIT_POLICY", None)
        torch_cmd = [peer, TORCH_PEER, *_common_args(args)]
        engines = {"ours": lambda item, name, width: _run_json(me + ["--worker", item], item)}
        if peer:
            engines["torch"] = lambda item, name, width: _run_json(
                torch_cmd + ["--model", name, "--width_mult", width], f"torch {name}", env=peer_env)
            engines["torch_cl"] = lambda item, name, width: _run_json(
                torch_cmd + ["--model", name, "--width_mult", width, "--channels_last"], f"torch {name}", env=peer_env)
        if args.baseline:
            engines["base"] = lambda item, name, width: _run_json(me + ["--worker", item], f"the baseline's {item}",
                                                                  cwd=args.baseline)
        if "onnxruntime" in args.compare:
            engines["ort"] = lambda item, name, width: _run_json(me + ["--worker", f"onnxruntime:{name}:{width}"],
                                                                 f"onnxruntime {name}")
        for item in models:
            name, width = item.split(":")[:2]
            log(f"measuring {item}: {', '.join(engines)}, {args.rounds} round(s) ...")
            # the machine is shared and noisy: the engines take turns, each figure is the median of its rounds
            runs = {engine: [] for engine in engines}
            for _ in range(args.rounds):
                for engine, measure in engines.items():
                    runs[engine].append(measure(item, name, width))
                machines.append(_run_json(me + ["--worker", "machine"], "the memory bandwidth and peak",
                                          env=machine_env))
            rows.append(compare_row(runs))
    # the machine's best in this command (other work on a shared machine only ever lowers a measurement)
    machine = {key: max(run[key] for run in machines) for key in MACHINE_FIELDS}
    rows = [add_roofline(row, machine) for row in rows]
    print_table(rows, pipelines, machine)
    result = {"models": rows, "pipelines": pipelines, "machine": machine, "torch_python": peer}
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as out:
        json.dump(result, out, indent=2)
    with open(os.path.splitext(args.output)[0] + ".csv", "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(MODEL_FIELDS + PEER_FIELDS + ROOFLINE_FIELDS) + list(pipelines)
                                + list(MACHINE_FIELDS))
        writer.writeheader()
        writer.writerows({**row, **pipelines, **machine} for row in rows)
    log(f"wrote {args.output} and {os.path.splitext(args.output)[0]}.csv")
    return 0


if __name__ == "__main__":
    run(main)
