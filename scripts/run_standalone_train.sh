#!/usr/bin/env bash
# Ascend, one device:
#   bash scripts/run_standalone_train.sh [cifar10|imagenet2012] DATASET_PATH DEVICE_ID [PRETRAINED] [-- TRAIN_ARGS...]
# Run folder ./train (log, config.yaml, metrics.csv, ckpt_0/); knobs (CONFIG_PATH, FOREGROUND) in scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
standalone_train Ascend train default_config_imagenet.yaml "$@"
