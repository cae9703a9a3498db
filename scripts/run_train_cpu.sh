#!/usr/bin/env bash
# CPU, one process:
#   bash scripts/run_train_cpu.sh [cifar10|imagenet2012] DATASET_PATH [PRETRAINED] [-- TRAIN_ARGS...]
# Run folder ./train_cpu (log, config.yaml, metrics.csv, ckpt_0/); knobs (CONFIG_PATH, FOREGROUND) in scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
standalone_train CPU train_cpu default_config_imagenet.yaml "$@"
