#!/usr/bin/env bash
# CPU evaluation:
#   bash scripts/run_eval_cpu.sh [cifar10|imagenet2012] DATASET_PATH CHECKPOINT_PATH [-- EVAL_ARGS...]
# Run folder ./eval (the result line is in eval/log); knobs (CONFIG_PATH, FOREGROUND) in scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
evaluate CPU default_config_imagenet.yaml "$@"
