"""Draw the training curves of finished runs: python plot_metrics.py RUN_DIR [RUN_DIR ...] [--output FILE.png]

Each RUN_DIR is a training output folder (its metrics.csv); several are overlaid to compare them.  Training draws
the same figure as RUN_DIR/metrics.png as it goes."""
import argparse
import os

from src.model_utils.cli import ArgumentParser, log, run
from src.plots import plot_metrics


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="training output folders holding metrics.csv")
    parser.add_argument("--output", default="", help="PNG to write (default: RUN_DIR/metrics.png for one run, "
                                                     "metrics_compared.png for several)")
    args = parser.parse_args()
    output = args.output or (os.path.join(args.run_dirs[0], "metrics.png") if len(args.run_dirs) == 1
                             else "metrics_compared.png")
    plot_metrics(args.run_dirs, output)
    log(f"wrote {output}")
    return 0


if __name__ == "__main__":
    run(main)
