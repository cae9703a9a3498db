#!/usr/bin/env bash
# Ascend data-parallel training (HCCL) from a rank table:
#   bash scripts/run_distribute_train.sh [cifar10|imagenet2012] RANK_TABLE_FILE DATASET_PATH [PRETRAINED]
#     [-- TRAIN_ARGS...]
# One process per device that the rank table lists for this server (SERVER_ID: its index in server_list, default 0),
# each with RANK_ID, DEVICE_ID, RANK_SIZE (all devices of the table) and RANK_TABLE_FILE exported, its log in
# ./train_parallel<rank>/log. All ranks share one output folder, ./train_parallel (rank 0 writes config.yaml,
# metrics.csv, ckpt_0/; every rank resumes from it; with several servers it must be a shared folder). The job's own log
# is ./train_parallel.log: the first rank that fails stops the others and the job exits non-zero naming it; SIGTERM /
# Ctrl-C stops every rank at the same step, rank 0 saves. Knobs in scripts/common.sh.
set -euo pipefail
USAGE="[cifar10|imagenet2012] RANK_TABLE_FILE DATASET_PATH [PRETRAINED] [-- TRAIN_ARGS...]"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args 3 4 "$@"
pick_config "${ARGS[0]}" default_config_imagenet.yaml
absolute RANK_TABLE_FILE "${ARGS[1]}" RANK_TABLE_FILE
data_and_pretrained "${ARGS[2]}" "${ARGS[3]:-}"

# "RANK_SIZE", then "DEVICE_ID RANK_ID" for each device of this server
TABLE=$("$PYTHON" - "$RANK_TABLE_FILE" "${SERVER_ID:-0}" <<'PY'
import json
import sys

path, server = sys.argv[1:]
try:
    with open(path, encoding="utf-8") as src:
        servers = json.load(src)["server_list"]
    devices = [(int(device["device_id"]), int(device["rank_id"])) for device in servers[int(server)]["device"]]
    if not devices:
        raise ValueError("no devices")
    print(sum(len(entry["device"]) for entry in servers))
    for device_id, rank_id in devices:
        print(device_id, rank_id)
except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
    sys.exit(f"ERROR: {path} is not a usable HCCL rank table for SERVER_ID {server} ({type(err).__name__}: {err}); "
             f"expected the JSON of hccl_tools, with server_list[SERVER_ID].device[] holding device_id and rank_id")
PY
) || exit 2
RANK_SIZE=${TABLE%%$'\n'*}
export RANK_TABLE_FILE RANK_SIZE
RANK_PIDS=()

wait_ranks() {  # wait for the ranks in RANK_PIDS; the first that fails stops the others
  local rank status other stopped=0
  while [ ${#RANK_PIDS[@]} -gt 0 ]; do
    for rank in "${!RANK_PIDS[@]}"; do
      if kill -0 "${RANK_PIDS[$rank]}" 2> /dev/null; then continue; fi
      status=0
      wait "${RANK_PIDS[$rank]}" || status=$?
      unset "RANK_PIDS[$rank]"
      if [ "$status" -gt 128 ] && [ -n "$(stopped_by "$PWD/train_parallel$rank/log")" ]; then
        stopped=$status  # stopped on a signal, as the others do at the same step: wait for them
      elif [ "$status" -ne 0 ]; then
        echo "ERROR: rank $rank failed: $(describe_exit "$status"); its log: $PWD/train_parallel$rank/log;" \
          "stopping the other ranks" >&2
        for other in "${RANK_PIDS[@]}"; do kill_tree KILL "$other"; done  # they would wait for it in a collective
        wait
        return "$status"
      fi
    done
    sleep 1
  done
  if [ "$stopped" -ne 0 ]; then return "$stopped"; fi
  echo "all $RANK_SIZE ranks finished"
}

rank_table_job() {  # start one process per local device, then wait for them
  local device rank base=$PWD
  OUTPUT_DIR="$base/train_parallel"
  mkdir -p "$OUTPUT_DIR"
  while read -r device rank; do
    cd "$base"
    enter_run_dir "train_parallel$rank"
    train_command Ascend --device_id "$device" --run_distribute True
    (
      export DEVICE_ID=$device RANK_ID=$rank
      echo "RANK_ID=$RANK_ID DEVICE_ID=$DEVICE_ID RANK_SIZE=$RANK_SIZE RANK_TABLE_FILE=$RANK_TABLE_FILE"
      echo "output folder (all ranks): $OUTPUT_DIR"
      exec "$PYTHON" "${CMD[@]}"
    ) > "$RUN_DIR/log" 2>&1 &
    RANK_PIDS[rank]=$!
    echo "rank $rank on device $device: log $RUN_DIR/log"
  done <<< "${TABLE#*$'\n'}"
  cd "$base"
  wait_ranks
}

RANK_LOGS="$PWD/train_parallel[0-9]*/log"
launch "$PWD/train_parallel.log" rank_table_job
