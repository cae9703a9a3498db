#!/usr/bin/env bash
# Score an exported model on a data set, as the model zoo's run_infer_310.sh does:
#   bash scripts/run_infer.sh MODEL_FILE DATASET_PATH [CPU|GPU|Ascend] [DEVICE_ID] [-- EVAL_ARGS...]
# MODEL_FILE: export.py's MINDIR (run by MindSpore on the device) or ONNX (onnxruntime, CPU), its card NAME.json beside
# it (transform, class count and names, batch size). The data set's format comes from DATASET_PATH (CIFAR-10 binary
# files, else class folders). Accuracy goes to acc.log in the current folder ('top1 acc': ..., 'top5 acc': ...), the
# run's log and result JSON to ./infer/. Runs in the foreground.
set -euo pipefail
USAGE="MODEL_FILE DATASET_PATH [CPU|GPU|Ascend] [DEVICE_ID] [-- EVAL_ARGS...]"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args 2 4 "$@"
absolute model "${ARGS[0]}" MODEL_FILE
absolute DATA_PATH "${ARGS[1]}" DATASET_PATH
target=${ARGS[2]:-CPU}
case $target in
  CPU | GPU | Ascend) ;;
  *) usage "the device must be CPU, GPU or Ascend, got '$target'" ;;
esac
device_args "$target" "${ARGS[3]:-0}"
if compgen -G "$DATA_PATH/*_batch*.bin" > /dev/null || compgen -G "$DATA_PATH/cifar-10-*-bin" > /dev/null; then
  pick_config cifar10 default_config_imagenet.yaml
else
  pick_config imagenet2012 default_config_imagenet.yaml
fi
acc="$PWD/acc.log"
enter_run_dir infer
CMD=("$ROOT/eval.py" --config_path "$CONFIG" --dataset "$DATASET" --dataset_path "$DATA_PATH" --device_target "$target"
     --model_file "$model" --result_file "$RUN_DIR/result.json" "${DEVICE[@]}" "${EXTRA[@]}")
FOREGROUND=1 launch "$RUN_DIR/log" "$PYTHON" "${CMD[@]}"
"$PYTHON" - "$RUN_DIR/result.json" "$acc" <<'PY'
import json
import sys

with open(sys.argv[1], encoding="utf-8") as src:
    result = json.load(src)
with open(sys.argv[2], "w", encoding="utf-8") as out:
    out.write(f"'top1 acc': {result['top_1_accuracy']}\n'top5 acc': {result['top_5_accuracy']}\n")
PY
echo "accuracy: $acc"
cat "$acc"
