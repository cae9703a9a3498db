"""Draw the training curves of finished runs: python plot_metrics.py RUN_DIR [RUN_DIR ...] [--output FILE.png]

Each RUN_DIR is a training output folder (its metrics.csv); several are overlaid to compare them, each run in one
colour.  Training draws the same figure as RUN_DIR/metrics.png as it goes; this script writes into the current folder
unless --output says otherwise (never over a run's own metrics.png by default)."""
import argparse
import os

from src.model_utils.cli import ArgumentParser, log, run
from src.plots import plot_metrics


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="training output folders holding metrics.csv")
    parser.add_argument("--output", default="", help="PNG to write (default: <RUN_DIR name>_metrics.png for one run, "
                                                     "metrics_compared.png for several, in the current folder)")
    args = parser.parse_args()
    name = os.path.basename(os.path.abspath(args.run_dirs[0]))
    output = args.output or (f"{name}_metrics.png" if len(args.run_dirs) == 1 else "metrics_compared.png")
    plot_metrics(args.run_dirs, output)
    log(f"wrote {output}")
    return 0


if __name__ == "__main__":
    run(main)
