#!/usr/bin/env bash
# GPU evaluation:
#   bash scripts/run_eval_gpu.sh [cifar10|imagenet2012] DATASET_PATH CHECKPOINT_PATH DEVICE_ID [-- EVAL_ARGS...]
# Run folder ./eval (the result line is in eval/log); knobs (CONFIG_PATH, FOREGROUND) in scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
evaluate GPU default_config_gpu_imagenet.yaml "$@"
