#!/usr/bin/env bash
# The GPU benchmark on one H200 (or any CUDA GPU with >= 80 GB): Qwen2.5-VL-7B-shaped model, random bf16
# weights, 1k- and 2.7k-visual-token screenshots, image_lora vs peft LoRA; about 3-5 minutes, capped at 8.
#
#   bench/gpu.sh [OUT_DIR]        (default: $OUT, else bench/out)
#
# Needs torch (CUDA build), transformers and peft; Ray, DeepSpeed, MLflow and WebDataset are not used.
# Writes OUT_DIR/gpu_bench.json, OUT_DIR/gpu_bench.log and OUT_DIR/nvidia-smi.txt; copy the printed table
# into bench/RESULTS.md with the date.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_DIR="${1:-${OUT:-bench/out}}"
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # run from the checkout, installed or not
PY="${PYTHON:-python3}"
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; fi
if [[ -d .whl ]]; then  # wheels carried by bench/gpu_wheels.sh: the tested transformers version
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/nvidia-smi.txt" 2>&1 || true
timeout 480 "$PY" bench/gpu.py --out "$OUT_DIR" --steps 8 --batch 2 2>&1 | tee "$OUT_DIR/gpu_bench.log"
"$PY" bench/plan_vs_measured.py --out "$OUT_DIR" 2>&1 | tee -a "$OUT_DIR/gpu_bench.log" || true  # the plan's predicted step beside the measured one
