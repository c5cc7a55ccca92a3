#!/usr/bin/env bash
# Fetch, into .whl/ (git-ignored), the Python wheels that a bare GPU machine lacks for experiments/fidelity/gpu_pretrain.sh:
# the trainer's own dependencies at the versions of this checkout's .venv, for CPython 3.12 on x86-64.
# The GPU machine's image has torch, peft, numpy, pyyaml, pillow, pyarrow, tokenizers, huggingface-hub,
# psutil, msgpack, py-cpuinfo, einops and ninja; Ray and MLflow are not needed (`python -m fidelity.pretrain --no-ray`,
# tracking off). Run here (it needs PyPI), then name `.whl` in the device run's carry list.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
ver() { "$PY" -c "from importlib.metadata import version; print(version('$1'))"; }
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for pkg in pydantic pydantic_core annotated_types typing_inspection typing_extensions webdataset braceexpand \
           hjson transformers regex; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${plat[@]}" -d .whl "$pkg==$(ver "$pkg")"
done
# DeepSpeed publishes only a source archive: build its pure-Python wheel (no ops compiled; they JIT on use).
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==$(ver deepspeed)"
ls -l .whl
du -sh .whl
