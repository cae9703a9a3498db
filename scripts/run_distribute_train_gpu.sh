#!/usr/bin/env bash
# GPU data-parallel training (NCCL), one process per GPU of this machine:
#   bash scripts/run_distribute_train_gpu.sh [cifar10|imagenet2012] CONFIG_PATH DATASET_PATH [PRETRAINED]
#     [-- TRAIN_ARGS...]
# GPUs: DEVICE_NUM, else all that nvidia-smi lists. Through msrun (LAUNCHER=mpirun for Open MPI). Run folder
# ./train_parallel: log.txt, worker_<rank>.log; rank 0 writes config.yaml, metrics.csv and ckpt_0/. If a rank fails,
# the others are stopped and the job exits non-zero naming it. Several machines: NODE_NUM, NODE_RANK, MASTER_ADDR,
# MASTER_PORT as in run_distribute_train_cpu.sh. Knobs: MASTER_PORT, CLUSTER_TIMEOUT (see run_distribute_train_cpu.sh)
# and those in scripts/common.sh.
set -euo pipefail
USAGE="[cifar10|imagenet2012] CONFIG_PATH DATASET_PATH [PRETRAINED] [-- TRAIN_ARGS...]"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args 3 4 "$@"
CONFIG_PATH=${ARGS[1]}  # the CONFIG_PATH argument takes the place of the data set's config
pick_config "${ARGS[0]}" default_config_gpu_imagenet.yaml
data_and_pretrained "${ARGS[2]}" "${ARGS[3]:-}"
if [ -z "${DEVICE_NUM:-}" ]; then
  command -v nvidia-smi > /dev/null || fail "cannot count the GPUs (nvidia-smi not found); set DEVICE_NUM"
  DEVICE_NUM=$(nvidia-smi -L | grep -c "^GPU" || true)
fi
check_number "$DEVICE_NUM" "DEVICE_NUM (GPUs to use)" 1
data_parallel_train GPU "$DEVICE_NUM"
