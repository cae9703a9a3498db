"""Pictures of a run: the training curves of `metrics.csv` (one or several runs overlaid) and a confusion matrix.
matplotlib with its non-interactive Agg backend: no display needed."""
import csv
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

from src.errors import UserError  # noqa: E402  pylint: disable=wrong-import-position

METRICS_FILE = "metrics.csv"
PANELS = (  # (title, [(column, label)])
    ("loss", [("loss", "training"), ("eval_loss", "evaluation")]),
    ("learning rate", [("lr", "")]),
    ("accuracy", [("top_1_accuracy", "top-1"), ("top_5_accuracy", "top-5")]),
    ("images/s (training)", [("images_per_second", "")]),
)
MAX_CONFUSION_CLASSES = 100


def read_metrics(run_dir: str) -> list:
    """Rows of `run_dir/metrics.csv`; a missing or unreadable file is a `UserError` naming it."""
    path = os.path.join(run_dir, METRICS_FILE)
    try:
        with open(path, newline="", encoding="utf-8") as src:
            return list(csv.DictReader(src))
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror}); expected the output folder of a training run") from err


def _column(rows, key):
    """(epochs, values) of a column, empty cells (no evaluation that epoch) left out."""
    points = [(int(row["epoch"]), float(row[key])) for row in rows if row.get(key) not in (None, "", "nan")]
    points = [(epoch, value) for epoch, value in points if math.isfinite(value)]
    return [p[0] for p in points], [p[1] for p in points]


def run_labels(run_dirs) -> list:
    """A label per run: its folder's name, with as many parent folders as it takes to tell runs of the same folder
    name apart (e.g. a/train_cpu, b/train_cpu)."""
    parts = [os.path.abspath(run).split(os.sep) for run in run_dirs]
    depth = 1
    while depth < max(len(p) for p in parts) and len({"/".join(p[-depth:]) for p in parts}) < len(parts):
        depth += 1
    return ["/".join(p[-depth:]) for p in parts]


def plot_metrics(run_dirs, out_path: str) -> None:
    """Loss, learning rate, top-1/top-5 and images/s per epoch of each run in `run_dirs`, overlaid, as one PNG: a run
    keeps one colour in every panel; training and evaluation loss, top-1 and top-5 differ by line style."""
    runs = [(name, read_metrics(run)) for name, run in zip(run_labels(run_dirs), run_dirs)]
    figure, axes = plt.subplots(2, 2, figsize=(11, 7))
    for axis, (title, columns) in zip(axes.flat, PANELS):
        for index, (name, rows) in enumerate(runs):
            for key, label in columns:
                epochs, values = _column(rows, key)
                if epochs:
                    text = " ".join(part for part in (name if len(runs) > 1 else "", label) if part)
                    axis.plot(epochs, values, color=f"C{index % 10}", marker="o" if len(epochs) < 30 else None,
                              markersize=3, label=text or None,
                              linestyle="--" if key in ("eval_loss", "top_5_accuracy") else "-")
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.suptitle(", ".join(name for name, _ in runs))
    figure.tight_layout()
    _save(figure, out_path)


def plot_confusion(confusion: np.ndarray, class_names, out_path: str) -> None:
    """The confusion matrix (rows: true class, columns: predicted) as a PNG, each row as fractions of its images;
    and as CSV (counts) beside it."""
    count = confusion.shape[0]
    if count > MAX_CONFUSION_CLASSES:
        raise UserError(f"confusion_matrix: {count} classes are too many to draw (at most {MAX_CONFUSION_CLASSES}); "
                        f"the per-class accuracy is in the result_file JSON")
    csv_path = os.path.splitext(out_path)[0] + ".csv"
    try:
        with open(csv_path, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["true \\ predicted", *class_names])
            for name, row in zip(class_names, confusion):
                writer.writerow([name, *row.tolist()])
    except OSError as err:
        raise UserError(f"confusion_matrix '{csv_path}' cannot be written: {err.strerror}") from err
    fractions = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.35 * count, 30)
    figure, axis = plt.subplots(figsize=(size, size))
    image = axis.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(count), class_names, rotation=90, fontsize=8)
    axis.set_yticks(range(count), class_names, fontsize=8)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if count <= 30:
        for (row, col), value in np.ndenumerate(confusion):
            if value:
                axis.text(col, row, str(value), ha="center", va="center", fontsize=7,
                          color="white" if fractions[row, col] > 0.5 else "black")
    figure.colorbar(image, ax=axis, fraction=0.046, label="fraction of the true class")
    figure.tight_layout()
    _save(figure, out_path)


def _save(figure, out_path):
    """Write the figure whole (temporary file, then rename) and close it."""
    folder = os.path.dirname(os.path.abspath(out_path))
    tmp = os.path.join(folder, ".tmp-" + os.path.basename(out_path))
    try:
        os.makedirs(folder, exist_ok=True)
        figure.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, out_path)
    except OSError as err:
        raise UserError(f"'{out_path}' cannot be written: {err.strerror}") from err
    finally:
        plt.close(figure)
