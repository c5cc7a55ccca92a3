"""Predicted vs measured step time: the plan's time model (imagelora_dist/plan/timing.py) for the steps
bench/gpu.py timed, on the GPU it ran on (H100 / H200 by name, else H200 figures).

    python bench/plan_vs_measured.py [--out DIR]     (reads DIR/gpu_bench.json, writes DIR/plan_vs_measured.json)

For each Image-LoRA row on all layers (`<screen>/image_lora_all`: one GPU, no ZeRO communication, no
checkpointing, micro-batch = the bench's batch) it prints the plan's predicted step, the measured median,
their ratio, and the model's compute-only MFU beside the measured one: what `matmul_efficiency` (0.6 assumed
in plan/hardware.py) should be on that GPU. bench/gpu.sh runs it after gpu.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu import SHAPES, build  # noqa: E402

from imagelora_dist.plan import PlanRequest, make_plan  # noqa: E402
from imagelora_dist.plan.hardware import hardware  # noqa: E402


def gpu_kind(device_name: str) -> str:
    """The plan's table entry for a CUDA device name (H200 figures for anything it does not know)."""
    name = device_name.lower()
    return "h100" if "h100" in name else "h200"


def predicted(config: dict, batch: int, visual: int, tokens: int, kind: str) -> dict[str, float]:
    """The plan's step for one GPU training Image-LoRA on every KV head at micro-batch `batch`."""
    req = PlanRequest(config=config, name="bench", gpus_per_node=1, zero=0, micro_batch=batch,
                      visual_tokens=visual, text_tokens=tokens - visual, method="image_lora_all",
                      gradient_checkpointing=False, hardware=hardware(kind), gpu_memory_gib=hardware(kind).memory_gib)  # fmt: skip
    t = make_plan(req, with_alternatives=False).times["train"]
    hw = hardware(kind)
    return {"predicted_step_s": t.step_s, "predicted_mfu": t.mfu(hw), "useful_tflop": t.useful_flops / 1e12}


def main() -> None:
    """Compare every image_lora_all row of gpu_bench.json with the plan."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/out"))
    args = ap.parse_args()
    out = Path(args.out)
    bench = json.loads((out / "gpu_bench.json").read_text())
    meta = bench["meta"]
    kind = gpu_kind(meta["device"])
    config = build(SHAPES[meta["shape"]], "meta").config.to_dict()
    rows = {}
    for name, row in bench["rows"].items():
        if not name.endswith("/image_lora_all"):
            continue
        p = predicted(config, meta["batch"], int(row["visual_tokens"]), int(row["tokens"]), kind)
        measured_mfu = p["useful_tflop"] * 1e12 / row["step_s"] / (hardware(kind).bf16_tflops * 1e12)
        rows[name] = {**p, "measured_step_s": row["step_s"], "measured_over_predicted": row["step_s"] / p["predicted_step_s"],
                      "measured_mfu_plan_flops": measured_mfu}  # fmt: skip
        print(f"[plan] {name:<22} predicted {p['predicted_step_s'] * 1e3:8.1f} ms, measured "
              f"{row['step_s'] * 1e3:8.1f} ms ({row['step_s'] / p['predicted_step_s']:.2f}x); MFU by the plan's "
              f"FLOPs {measured_mfu:.1%} (model assumes {p['predicted_mfu']:.1%}) on {meta['device']} as {kind}")  # fmt: skip
    (out / "plan_vs_measured.json").write_text(
        json.dumps({"meta": {**meta, "plan_gpu": kind}, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
