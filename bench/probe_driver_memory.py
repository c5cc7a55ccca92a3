"""The driver's peak memory during the probe at 8 vs 64 probe examples: it must stay flat.

    python bench/probe_driver_memory.py [--small 8] [--large 64] [--width 1280 --height 800]

Each figure is the peak RSS of a fresh driver process that runs the probe stage (`run_probe_select`) on a
local Ray with 2 actors over synthetic screenshots of the given size; the actors read the probe set from
the shards themselves. For comparison the same process sizes are measured for what the driver used to do
before the actors read their own samples: collate the whole probe set itself (pixel tensors in driver
memory, then `ray.put`). Ratios near 1.0 for the probe stage are the target.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _overrides(tmp: str, examples: int, width: int, height: int) -> list[str]:
    return [
        f"output_dir={tmp}/run-{examples}", f"data.train={tmp}/shards", f"probe.num_examples={examples}",
        "probe.batch_size=2", "ray.num_workers=2", "ray.num_cpus=2", "tracking.enabled=false",
        f"data.synth.num_samples={max(examples, 64)}", "data.synth.samples_per_shard=16",
        f"data.synth.width={width}", f"data.synth.height={height}", f"data.max_pixels={width * height}",
    ]  # fmt: skip


def child(mode: str, tmp: str, examples: int, width: int, height: int) -> None:
    """In a fresh process: run the probe stage (or only collate the probe set); print the peak RSS in MB."""
    from imagelora_dist.config import load_config
    from imagelora_dist.models import resolve_model
    from imagelora_dist.models.build import skeleton_model
    from imagelora_dist.pipeline import probe_batches, run_probe_select

    cfg = load_config(None, _overrides(tmp, examples, width, height))
    if mode == "probe":
        run_probe_select(cfg, log=lambda m: None)
    else:  # the old driver-side path: every probe batch's pixel tensors in this process
        model, processor = skeleton_model(cfg.model)
        batches = probe_batches(cfg, processor, resolve_model(model), str(cfg.data.train))
        assert sum(b["input_ids"].shape[0] for b in batches) >= examples
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _measure(mode: str, tmp: str, examples: int, width: int, height: int) -> float:
    cmd = [sys.executable, __file__, "--child", mode, "--tmp", tmp, "--large", str(examples),
           "--width", str(width), "--height", str(height)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]


def main() -> None:
    """Print the driver's peak RSS at both sizes for the probe stage and for driver-side collation."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=8)
    ap.add_argument("--large", type=int, default=64)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--child", choices=["probe", "collate"], help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.tmp, args.large, args.width, args.height)
        return
    with tempfile.TemporaryDirectory() as tmp:
        from imagelora_dist.config import load_config
        from imagelora_dist.data.synth import synthesize
        from imagelora_dist.pipeline import synth_spec

        synthesize(synth_spec(load_config(None, _overrides(tmp, args.large, args.width, args.height))),
                   f"{tmp}/shards", workers=2)  # fmt: skip
        rows = {}
        for mode in ("probe", "collate"):
            rows[mode] = [_measure(mode, tmp, n, args.width, args.height) for n in (args.small, args.large)]
    print(f"# driver peak RSS, tiny qwen2_5_vl, {args.width}x{args.height} screenshots, 2 probe actors")
    for mode, label in (("probe", "probe stage (actors read the shards)"),
                        ("collate", "driver-side collation (before)")):  # fmt: skip
        small, large = rows[mode]
        print(f"{label:<40} {args.small:>3} examples {small:8.0f} MB   {args.large:>3} examples {large:8.0f} MB"
              f"   ratio {large / small:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
