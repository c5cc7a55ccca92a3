#!/usr/bin/env bash
# Pre-train the study's base on one GPU (configs/pretrain_base_gpu.yaml, `python -m fidelity.pretrain --no-ray`) and pack
# it for the trip back: about 5-6 minutes on an H200 by estimate (not yet run on one), capped at 8.
#
#   bash bench/gpu_wheels.sh             # here, once: the trainer's wheels the GPU machine lacks, into .whl/
#   bash experiments/fidelity/gpu_pretrain.sh [KEY=VAL]  # there, with .whl carried; extra args are config overrides
#
# Writes $OUT (else bench/out at the repo root): base.tar.part-* (the base, split into 15 MB pieces), pretrain_report.json,
# gpu_pretrain.log, nvidia-smi.txt, resume/resume_check.json (the bf16 resume check, run first).
# Back here, in experiments/fidelity: mkdir -p runs/pretrain-base-gpu &&
# cat base.tar.part-* | tar -x -C runs/pretrain-base-gpu, then run the study from it:
# imagelora-dist study configs/study/study.yaml model.path=runs/pretrain-base-gpu/base
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."  # the repo root
OUT_DIR="${OUT:-bench/out}"
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0
PY="${PYTHON:-python3}"
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; fi
if [[ -d .whl ]]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD:$PWD/experiments/fidelity${PYTHONPATH:+:$PYTHONPATH}"  # the checkout, installed or not
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/nvidia-smi.txt" 2>&1 || true
# First (about a minute, by estimate): does a resume in bf16 on the GPU end where the uninterrupted run does, from
# DeepSpeed's files and from the portable state? (bench/resume_check.py; both differences should match
# those of two uninterrupted runs: 0.0 where the kernels are deterministic.)
timeout 120 "$PY" bench/resume_check.py --device cuda --out "$OUT_DIR/resume" 2>&1 | tail -3 \
  | tee "$OUT_DIR/resume_check.log" || true
RUN=/tmp/pretrain-base-gpu
set +e
timeout 480 "$PY" -m fidelity.pretrain --no-ray --config experiments/fidelity/configs/pretrain_base_gpu.yaml \
  "output_dir=$RUN" "$@" 2>&1 | tee "$OUT_DIR/gpu_pretrain.log"
rc=${PIPESTATUS[0]}
set -e
cp "$RUN/pretrain_report.json" "$OUT_DIR/" 2>/dev/null || true
if [[ -d "$RUN/base" ]]; then
  # at most 16 MB per file comes back: one tar, split
  tar -C "$RUN" -cf - base | split -b 15m - "$OUT_DIR/base.tar.part-"
fi
ls -l "$OUT_DIR"
exit "$rc"
