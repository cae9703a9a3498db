#!/usr/bin/env bash
# CPU data-parallel training (MCCL), WORKER_NUM processes on this machine:
#   bash scripts/run_distribute_train_cpu.sh [cifar10|imagenet2012] DATASET_PATH WORKER_NUM [PRETRAINED]
#     [-- TRAIN_ARGS...]
# Through msrun (LAUNCHER=mpirun for Open MPI). Run folder ./train_parallel: log.txt, worker_<rank>.log; rank 0 writes
# config.yaml, metrics.csv and ckpt_0/. If a rank fails, the others are stopped and the job exits non-zero naming it.
# SIGTERM / Ctrl-C: every rank stops at the same step, rank 0 saves, exit 128 + signal.
# Several machines: run it on each with WORKER_NUM ranks there and NODE_NUM (machines), NODE_RANK (0 on the machine
# at MASTER_ADDR), MASTER_ADDR and MASTER_PORT (the same free port everywhere) set; data and the output folder must
# be the same on every machine (a shared folder), or resume is refused.
# Knobs: MASTER_PORT (default: a free port), CLUSTER_TIMEOUT (seconds to wait for all ranks to join, default 600),
# and those in scripts/common.sh.
set -euo pipefail
USAGE="[cifar10|imagenet2012] DATASET_PATH WORKER_NUM [PRETRAINED] [-- TRAIN_ARGS...]"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args 3 4 "$@"
pick_config "${ARGS[0]}" default_config_imagenet.yaml
check_number "${ARGS[2]}" WORKER_NUM 1
data_and_pretrained "${ARGS[1]}" "${ARGS[3]:-}"
data_parallel_train CPU "${ARGS[2]}"
