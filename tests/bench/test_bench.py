"""bench/gpu.py at its CPU smoke size: the GPU run gets one try on a lent machine, so it must not rot here.

Only that it runs and that its rows are consistent is checked; its timings are read on the GPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
METHODS = ("image_lora_all", "image_lora_upper", "image_lora_upper_prefix", "lora_v_proj", "lora_all_linear")


@pytest.mark.integration
def test_gpu_bench_runs_at_the_tiny_shape_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(BENCH / "gpu.py"), "--shape", "tiny", "--device", "cpu", "--steps", "2",
           "--batch", "1", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert result["meta"] == {"torch": result["meta"]["torch"], "device": "cpu", "shape": "tiny", "batch": 1,
                              "steps": 2}  # fmt: skip
    rows = result["rows"]
    assert set(rows) == {f"{s}/{m}" for s in ("1k", "2.7k") for m in METHODS} | {
        "1k/image_lora_all_eager_attention"
    }
    for screen in ("1k", "2.7k"):
        row = {m: rows[f"{screen}/{m}"] for m in METHODS}
        assert all(
            r["step_s"] > 0 and r["tokens_per_s"] > 0 and math.isfinite(r["loss"]) for r in row.values()
        )
        # image-heavy, as the 7B shape's screens are: most of the sequence is the screenshot
        assert row["image_lora_all"]["visual_tokens"] / row["image_lora_all"]["tokens"] > 0.75
        params = {m: r["trainable_params"] for m, r in row.items()}
        assert params["image_lora_upper"] < params["image_lora_all"] < params["lora_all_linear"]
        assert params["image_lora_upper_prefix"] == params["image_lora_upper"]
        # The prefix cache served the layers below the upper half, and changed nothing it computes.
        assert row["image_lora_upper_prefix"]["prefix_hits"] > 0
        assert row["image_lora_upper_prefix"]["loss"] == row["image_lora_upper"]["loss"]
    assert (
        rows["2.7k/image_lora_all"]["visual_tokens"] > rows["1k/image_lora_all"]["visual_tokens"]
    )  # larger screen
    for peer in ("lora_v_proj", "lora_all_linear"):  # the ratio lines the RESULTS table is copied from
        assert f"1k image_lora_all / {peer}: time" in done.stdout
    # the plan's predicted step beside each measured image_lora_all step (bench/gpu.sh runs it after gpu.py)
    cmd = [sys.executable, str(BENCH / "plan_vs_measured.py"), "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    compared = json.loads((tmp_path / "plan_vs_measured.json").read_text())["rows"]
    assert set(compared) == {"1k/image_lora_all", "2.7k/image_lora_all"}
    for name, row in compared.items():
        assert row["measured_step_s"] == rows[name]["step_s"] and row["predicted_step_s"] > 0
        assert row["measured_over_predicted"] == row["measured_step_s"] / row["predicted_step_s"]
