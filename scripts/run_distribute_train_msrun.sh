#!/usr/bin/env bash
# Ascend data-parallel training (HCCL) through msrun, which MindSpore 2.x recommends over rank tables:
#   bash scripts/run_distribute_train_msrun.sh [cifar10|imagenet2012] DATASET_PATH [PRETRAINED] [-- TRAIN_ARGS...]
# DEVICE_NUM devices of this machine (default 8; msrun gives each rank its device). Run folder ./train_parallel:
# log.txt, worker_<rank>.log; rank 0 writes config.yaml, metrics.csv and ckpt_0/. Several machines: NODE_NUM,
# NODE_RANK, MASTER_ADDR, MASTER_PORT as in run_distribute_train_cpu.sh. Knobs: CLUSTER_TIMEOUT and those in
# scripts/common.sh.
set -euo pipefail
USAGE="[cifar10|imagenet2012] DATASET_PATH [PRETRAINED] [-- TRAIN_ARGS...]"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args 2 3 "$@"
pick_config "${ARGS[0]}" default_config_imagenet.yaml
DEVICE_NUM=${DEVICE_NUM:-8}
check_number "$DEVICE_NUM" "DEVICE_NUM (devices of this machine)" 1
data_and_pretrained "${ARGS[1]}" "${ARGS[2]:-}"
data_parallel_train Ascend "$DEVICE_NUM"
