#!/usr/bin/env bash
# The main job on the embedded demo data: set up .venv, write the demo data set (scikit-learn digits as
# CIFAR-10 files and JPEG folders), train MobileNetV1-0.5 on it (demo_config.yaml), evaluate the best
# checkpoint (with a confusion matrix), export it as MINDIR and ONNX and classify three demo pictures with the ONNX
# file. Outputs: demo_data/, demo_run/. About 2 minutes on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
py="$root/.venv/bin/python"
rm -rf demo_run
"$py" -m src.demo_data --output demo_data
"$py" train.py --config_path demo_config.yaml --dataset_path demo_data/cifar10/cifar-10-batches-bin
best=demo_run/ckpt_0/mobilenet_v1_best.ckpt
"$py" eval.py --config_path demo_config.yaml --dataset_path demo_data/cifar10/cifar-10-batches-bin \
  --checkpoint_path "$best" --result_file demo_run/eval_result.json --confusion_matrix demo_run/confusion_matrix.png
for format in MINDIR ONNX; do
  "$py" export.py --config_path demo_config.yaml --ckpt_file "$best" --file_name demo_run/mobilenet_v1_demo \
    --file_format "$format"
done
mkdir -p demo_run/samples
for digit in 3 5 8; do
  cp "$(ls demo_data/imagefolder/val/"$digit"/*.jpg | head -n 1)" "demo_run/samples/digit_$digit.jpg"
done
"$py" predict.py --config_path demo_config.yaml --model_file demo_run/mobilenet_v1_demo.onnx --image demo_run/samples \
  --top_k 3
echo "demo finished: results in $root/demo_run (metrics.csv, metrics.png, eval_result.json, confusion_matrix.png," \
  "ckpt_0/, mobilenet_v1_demo.*)"
