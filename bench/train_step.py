"""Training step time and peak memory of image_lora vs peft LoRA in the same trainer (DeepSpeed loop).

    python bench/train_step.py [--steps 8]

Each (method, token ratio) runs in its own process (so peak RSS is its own), world size 1, ZeRO-2,
on the tiny Qwen2.5-VL. Text-heavy: long instructions (~300 words of context); image-heavy: short ones.
Prints median step time, peak memory and adapter-only FLOPs, as ratios against peft LoRA.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

WORKER = r"""
import json, os, resource, socket, sys, statistics
os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); os.environ["MASTER_PORT"] = str(s.getsockname()[1])
from pathlib import Path
import torch
from imagelora_dist.config import load_config
from imagelora_dist.pipeline import method_costs
from imagelora_dist.train.loop import WorkerContext, train_worker
out, shards, method, steps = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
overrides = [f"output_dir={out}", f"data.train={shards}", f"train.method={method}", f"train.steps={steps}",
             "train.checkpoint_every=100000", "train.micro_batch_size=4", "tracking.enabled=false"]
if method == "lora_all":
    overrides[2] = "train.method=lora"; overrides.append("train.lora_targets=all-linear")
cfg = load_config(None, overrides)
torch.set_num_threads(2)
times, tok, vis = [], [], []
def report(m, tag):
    times.append(m["step_time_s"]); tok.append(m["tokens_per_s"]); vis.append(m["visual_tokens_per_s"] / m["tokens_per_s"])
train_worker(cfg, WorkerContext(), shards, ckpt_dir=out / "ckpt", report=report, log=lambda m: None)
costs = method_costs(cfg, shards)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT", json.dumps({"step_s": statistics.median(times[2:]), "tok_s": statistics.median(tok[2:]),
                            "visual_fraction": statistics.mean(vis),
                            "peak_mb": peak, **costs}))
"""


def main() -> None:
    """Run every (ratio, method) and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ratio, words in (("image-heavy", "[0,0]"), ("text-heavy", "[300,300]")):
            data = os.path.join(tmp, ratio)
            subprocess.run([sys.executable, "-m", "imagelora_dist", "synth", "--out", data, "data.synth.num_samples=64",
                            "data.synth.samples_per_shard=16", f"data.synth.instruction_words={words}"],
                           check=True, env=env, capture_output=True)  # fmt: skip
            for method in ("image_lora_all", "lora", "lora_all"):
                proc = subprocess.run([sys.executable, "-c", WORKER, os.path.join(tmp, f"{ratio}-{method}"), data,
                                       method, str(args.steps)], env=env, capture_output=True, text=True)  # fmt: skip
                if proc.returncode:
                    sys.exit(f"{ratio} {method} failed:\n{proc.stderr[-2000:]}")
                rows[ratio, method] = json.loads(proc.stdout.split("RESULT", 1)[1])
    names = {"image_lora_all": "image_lora (all heads)", "lora": "lora v_proj", "lora_all": "lora all-linear"}
    print(
        f"# tiny qwen2_5_vl, DeepSpeed ZeRO-2 world 1, micro-batch 4, {args.steps} steps (median of the last)"
    )
    print(
        f"{'ratio':<12} {'method':<24} {'visual':>6} {'step ms':>8} {'tok/s':>7} {'peak MB':>8} {'params':>8} "
        f"{'FLOPs':>14}"
    )
    for (ratio, method), r in rows.items():
        print(f"{ratio:<12} {names[method]:<24} {r['visual_fraction']:6.0%} {r['step_s'] * 1e3:8.0f} "
              f"{r['tok_s']:7.0f} {r['peak_mb']:8.0f} "
              f"{int(r['trainable_params']):8,} {int(r['adapter_train_flops']):14,}")  # fmt: skip
    for ratio in ("image-heavy", "text-heavy"):
        ours = rows[ratio, "image_lora_all"]
        for peer in ("lora", "lora_all"):
            p = rows[ratio, peer]
            print(
                f"{ratio:<12} image_lora / {names[peer]:<16} time {ours['step_s'] / p['step_s']:.2f}x  "
                f"peak memory {ours['peak_mb'] / p['peak_mb']:.2f}x  FLOPs "
                f"{ours['adapter_train_flops'] / p['adapter_train_flops']:.3f}x"
            )


if __name__ == "__main__":
    main()
