"""The benchmark suite: Image-LoRA vs peft LoRA in the same DeepSpeed trainer, text-heavy to image-heavy.

    python bench/suite.py [--steps 12] [--repeats 2] [--no-write] [--ratio R ...] [--method M ...]
                          [--override KEY=VALUE ...]

For each visual-token fraction (text-heavy ~20%, balanced ~50%, image-heavy ~90%) and each method, one
process runs `train_worker` (world size 1, ZeRO-2, tiny Qwen2.5-VL, micro-batch 4) on 16 synthetic
samples, so the run sees every image several times. Per configuration: median step time of the steps
after the first epoch, peak RSS (its own process), tokens/s, trainable parameters, adapter-only FLOPs.

Methods: image_lora_1head (one KV head in every layer: the paper's operating point), image_lora_all (every
KV head of every layer), image_lora_upper (every KV head of the upper half: the backward stops below it),
lora v_proj and lora all-linear (peft), and the speed flag `speed.vision_cache` for the Image-LoRA
selections and, for a fair reading, for lora v_proj too; `speed.prefix_cache` (with the vision cache) for
the upper-half selection (LoRA adapts layer 0: it has nothing below to cache); the vision cache without
its image-processor skip (`speed.vision_cache_skip_processor=false`), to show what the skip saves. Prints the table
and the ratios against the peer, and rewrites the suite's section of bench/RESULTS.md (date, machine,
versions) unless --no-write.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"

WORKER = r"""
import json, os, resource, socket, sys, statistics
os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); os.environ["MASTER_PORT"] = str(s.getsockname()[1])
from pathlib import Path
import torch
from imagelora_dist.config import load_config
from imagelora_dist.pipeline import method_costs
from imagelora_dist.selection import HeadSelection
from imagelora_dist.train.loop import WorkerContext, train_worker
out, shards, steps, warm = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
heads = json.loads(sys.argv[5])  # layer -> KV heads, or null for the method's own
cfg = load_config(None, [f"output_dir={out}", f"data.train={shards}", f"train.steps={steps}"] + sys.argv[6:])
if heads:  # a fixed selection instead of the probe's (the timing must not depend on a probe run)
    HeadSelection({int(l): h for l, h in heads.items()}, hkv=4, num_layers=6).to_json(out / "head_selection.json")
torch.set_num_threads(2)
times, tok, vis = [], [], []
def report(m, tag):
    times.append(m["step_time_s"]); tok.append(m["tokens_per_s"]); vis.append(m["visual_tokens_per_s"] / m["tokens_per_s"])
train_worker(cfg, WorkerContext(), shards, ckpt_dir=out / "ckpt", report=report, log=lambda m: None)
costs = method_costs(cfg, shards)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT", json.dumps({"step_s": statistics.median(times[warm:]), "tok_s": statistics.median(tok[warm:]),
                            "visual_fraction": statistics.mean(vis), "peak_mb": peak, **costs}))
"""

# The data of every configuration (16 samples: 4 steps an epoch at micro-batch 4) and its shared overrides.
SYNTH = ["data.synth.num_samples=16", "data.synth.samples_per_shard=8"]
COMMON = ["train.checkpoint_every=100000", "train.micro_batch_size=4", "tracking.enabled=false",
          "data.max_pixels=1000000"]  # fmt: skip
# The fixed selections of the tiny model (6 layers, 4 KV heads): layer -> KV heads.
HEADS = {
    "upper": {layer: [0, 1, 2, 3] for layer in range(3, 6)},
    "one_per_layer": {layer: [layer % 4] for layer in range(6)},
}
# (name, synth overrides): image-heavy uses bigger screenshots (more visual tokens) and no extra text.
RATIOS = {
    "text-heavy": ["data.synth.instruction_words=[200,200]"],
    "balanced": ["data.synth.instruction_words=[40,40]"],
    "image-heavy": ["data.synth.instruction_words=[0,0]", "data.synth.width=896", "data.synth.height=672"],
}
# name: (head selection, overrides). Selections: "-" = the method's own (all heads), "one_per_layer" = one KV
# head in each of the 6 layers (the paper's operating point: a few heads, every layer), "upper" = every KV head
# of layers 3-5 (nothing below layer 3 needs a gradient).
CACHE = "speed.vision_cache=true"
PREFIX = "speed.prefix_cache=true"  # layers 0-2 and the tower stop running after the first epoch
NOSKIP = "speed.vision_cache_skip_processor=false"
METHODS = {
    "image_lora_1head": ("one_per_layer", ["train.method=image_lora"]),
    "image_lora_all": ("-", ["train.method=image_lora_all"]),
    "image_lora_upper": ("upper", ["train.method=image_lora"]),
    "lora_v_proj": ("-", ["train.method=lora", "train.lora_targets=[v_proj]"]),
    "lora_all_linear": ("-", ["train.method=lora", "train.lora_targets=all-linear"]),
    "image_lora_1head+cache": ("one_per_layer", ["train.method=image_lora", CACHE]),
    "image_lora_upper+cache": ("upper", ["train.method=image_lora", CACHE]),
    "lora_v_proj+cache": ("-", ["train.method=lora", "train.lora_targets=[v_proj]", CACHE]),
    "image_lora_upper+prefix": ("upper", ["train.method=image_lora", CACHE, PREFIX]),
    # the cache without its image-processor skip: what skipping the processor on a full hit saves
    "image_lora_1head+cache-noskip": ("one_per_layer", ["train.method=image_lora", CACHE, NOSKIP]),
}
RATIOS_OF = [  # (ours, peer, issue target for the image-heavy step time)
    ("image_lora_1head", "lora_v_proj", "<= 0.85"),
    ("image_lora_1head", "lora_all_linear", "<= 0.65"),
    ("image_lora_all", "lora_v_proj", ""),
    ("image_lora_upper", "lora_all_linear", "<= 0.5"),
    ("image_lora_1head+cache", "lora_v_proj", "<= 0.85"),
    ("image_lora_1head+cache", "lora_all_linear", "<= 0.65"),
    ("image_lora_upper+cache", "lora_all_linear", "<= 0.5"),
    ("image_lora_upper+prefix", "lora_all_linear", "<= 0.5"),
    ("image_lora_1head+cache", "lora_v_proj+cache", ""),
    ("image_lora_1head+cache", "image_lora_1head+cache-noskip", ""),
]


def run(
    steps: int,
    repeats: int,
    ratios: list[str] | None = None,
    methods: list[str] | None = None,
    extra: list[str] | None = None,
) -> dict[tuple[str, str], dict[str, float]]:
    """Every (ratio, method) in its own process, `repeats` interleaved rounds; per configuration the
    round with the lowest median step time is kept (the least disturbed by other load on the machine)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    rows: dict[tuple[str, str], dict[str, float]] = {}
    samples_per_epoch_steps = 16 // 4
    with tempfile.TemporaryDirectory() as tmp:
        data = {}
        ratios, methods = ratios or list(RATIOS), methods or list(METHODS)
        for ratio in ratios:
            synth = RATIOS[ratio]
            data[ratio] = os.path.join(tmp, ratio)
            subprocess.run([sys.executable, "-m", "imagelora_dist", "synth", "--out", data[ratio],
                            *SYNTH, *synth],
                           check=True, env=env, capture_output=True)  # fmt: skip
        for round_ in range(repeats):
            for ratio in ratios:
                for method in methods:
                    selection, overrides = METHODS[method]
                    print(
                        f"[bench] round {round_ + 1}/{repeats} {ratio} {method} ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    out = os.path.join(tmp, f"{round_}-{ratio}-{method}")
                    os.makedirs(out)
                    proc = subprocess.run([sys.executable, "-c", WORKER, out, data[ratio], str(steps),
                                           str(samples_per_epoch_steps), json.dumps(HEADS.get(selection)),
                                           *COMMON, *overrides, *(extra or [])],
                                          env=env, capture_output=True, text=True)  # fmt: skip
                    if proc.returncode:
                        sys.exit(f"{ratio} {method} failed:\n{proc.stderr[-3000:]}")
                    got = json.loads(proc.stdout.split("RESULT", 1)[1])
                    best = rows.get((ratio, method))
                    if best is None or got["step_s"] < best["step_s"]:
                        rows[ratio, method] = got
    return rows


def render(rows: dict[tuple[str, str], dict[str, float]], steps: int) -> str:
    """The table and the ratio lines, as printed and as written to RESULTS.md."""
    lines = [
        f"{'ratio':<12} {'method':<29} {'visual':>6} {'step ms':>8} {'tok/s':>7} {'peak MB':>8} {'params':>8} "
        f"{'adapter FLOPs':>15}"
    ]
    for (ratio, method), r in rows.items():
        lines.append(f"{ratio:<12} {method:<29} {r['visual_fraction']:6.0%} {r['step_s'] * 1e3:8.0f} "
                     f"{r['tok_s']:7.0f} {r['peak_mb']:8.0f} {int(r['trainable_params']):8,} "
                     f"{int(r['adapter_train_flops']):15,}")  # fmt: skip
    lines.append("")
    lines.append(
        f"{'ratio':<12} {'ours / peer':<60} {'time':>6} {'memory':>7} {'params':>7} {'FLOPs':>7}  target"
    )
    for ratio in RATIOS:
        for ours, peer, target in RATIOS_OF:
            if (ratio, ours) not in rows or (ratio, peer) not in rows:
                continue  # a partial run (--ratio / --method)
            o, p = rows[ratio, ours], rows[ratio, peer]
            lines.append(
                f"{ratio:<12} {ours + ' / ' + peer:<60} {o['step_s'] / p['step_s']:6.2f} "
                f"{o['peak_mb'] / p['peak_mb']:7.2f} {o['trainable_params'] / p['trainable_params']:7.3f} "
                f"{o['adapter_train_flops'] / p['adapter_train_flops']:7.3f}  {target if ratio == 'image-heavy' else ''}"
            )
    return "\n".join(lines)


def machine() -> str:
    """Date, CPU and library versions for the RESULTS.md heading."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    libs = ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "peft", "deepspeed"))
    return f"{datetime.date.today().isoformat()} — {cpu}, {os.cpu_count()} cores, 2 threads; {libs}"


def write_results(text: str, steps: int, repeats: int) -> None:
    """Replace the suite's section of RESULTS.md (between the markers), atomically."""
    section = (
        f"{BEGIN}\n## {machine()}\n\n`make bench` (`python bench/suite.py --steps {steps} --repeats {repeats}`): "
        "tiny `qwen2_5_vl`, DeepSpeed ZeRO-2, world size 1, micro-batch 4, 16 samples (4 steps per epoch), median "
        "step after the first epoch, the fastest of the interleaved rounds; each configuration in its own process "
        "(peak RSS is its own).\n\n```\n"
        f"{text}\n```\n{END}"
    )
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + section + old[old.index(END) + len(END) :]
    else:
        head, sep, rest = old.partition("\n## ")
        new = f"{head}\n{section}\n\n{sep.strip()} {rest}" if sep else f"{old.rstrip()}\n\n{section}\n"
    tmp = RESULTS.with_name(f".{RESULTS.name}.tmp")
    tmp.write_text(new)
    os.replace(tmp, RESULTS)


def main() -> None:
    """Run the suite, print it, write RESULTS.md."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per configuration (>= 6)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the fastest round is kept")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    ap.add_argument("--ratio", action="append", choices=list(RATIOS), help="only this ratio (repeatable)")
    ap.add_argument("--method", action="append", choices=list(METHODS), help="only this method (repeatable)")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every configuration, e.g. data.num_workers=1 (repeatable)")  # fmt: skip
    args = ap.parse_args()
    if args.steps < 6:
        ap.error("--steps must be at least 6 (the first epoch of 4 steps is not measured)")
    rows = run(args.steps, max(1, args.repeats), args.ratio, args.method, args.override)
    text = render(rows, args.steps)
    print(text)
    if args.ratio or args.method or args.override:
        print("[bench] a partial run: bench/RESULTS.md left alone", file=sys.stderr)
    elif not args.no_write:
        write_results(text, args.steps, max(1, args.repeats))
        print(f"[bench] wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
