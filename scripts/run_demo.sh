#!/usr/bin/env bash
# The main job on the embedded demo data: set up .venv, write the demo data set (scikit-learn digits as
# CIFAR-10 files and JPEG folders), train MobileNetV1-0.5 on it (demo_config.yaml), evaluate the best
# checkpoint and export it as MINDIR and ONNX. Outputs: demo_data/, demo_run/. About 2 minutes on 2 cores.
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
  --checkpoint_path "$best" --result_file demo_run/eval_result.json
for format in MINDIR ONNX; do
  "$py" export.py --config_path demo_config.yaml --ckpt_file "$best" --file_name demo_run/mobilenet_v1_demo \
    --file_format "$format"
done
echo "demo finished: results in $root/demo_run (metrics.csv, eval_result.json, ckpt_0/, mobilenet_v1_demo.*)"
