"""Eval at scale on CPU: throughput with 1, 2, 3 workers, and the driver's peak memory at 100 vs 2,000 samples.

    python bench/eval_scaling.py [--workers 1,2,3] [--samples 48] [--small 100] [--large 2000]

Throughput: `run_eval` (the data-parallel eval stage) on a local Ray with `--workers` replicas of the tiny
Qwen2.5-VL over `--samples` synthetic screenshots, each worker count with its own chunk store (nothing
reused); samples/s is the stage's own figure (scoring only, model loading excluded) and the efficiency is
rate(N) / (N x rate(1)). On a 2-core machine 3 workers share 2 cores: read the 3-worker row as contention.

Driver memory: the peak RSS of a fresh driver process running the eval stage with 2 workers over
`--small` and `--large` held-out screenshots (224x168, 4 new tokens); the workers read the shards
themselves, so the driver's peak should not grow with the set (a ratio near 1.0 is the target).
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


def _cfg(out: str, samples: int, workers: int, store: str, cpus: float) -> list[str]:
    return [
        f"output_dir={out}", "train.method=none", f"eval.synth_samples={samples}", "eval.chunk_size=8",
        "eval.batch_size=4", "eval.max_new_tokens=4", "eval.text_task_problems=0", f"eval.workers={workers}",
        f"eval.storage={store}", "tracking.enabled=false", "data.synth.workers=2", "ray.num_cpus=2",
        f"ray.cpus_per_worker={cpus}", "data.synth.width=224", "data.synth.height=168", "data.max_pixels=37632",
    ]  # fmt: skip


def child(tmp: str, samples: int) -> None:
    """In a fresh process: run the eval stage; print the peak RSS in MB."""
    from imagelora_dist.config import load_config
    from imagelora_dist.pipeline import absolute_paths, run_eval

    cfg = absolute_paths(
        load_config(None, _cfg(f"{tmp}/mem-{samples}", samples, 2, f"{tmp}/mem-store-{samples}", 1))
    )
    run_eval(cfg, log=lambda m: None)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def throughput(tmp: str, workers: list[int], samples: int) -> dict[int, float]:
    """Samples/s of the eval stage at each worker count (one local Ray, a fresh chunk store each)."""
    import ray

    from imagelora_dist.config import load_config
    from imagelora_dist.pipeline import absolute_paths, run_eval
    from imagelora_dist.ray_runtime import ensure_ray

    rates = {}
    base = absolute_paths(load_config(None, _cfg(f"{tmp}/tp", samples, 1, f"{tmp}/tp-store", 0.5)))
    ensure_ray(base, log=lambda m: None)
    try:
        for n in workers:
            cfg = base.model_copy(
                update={"eval": base.eval.model_copy(update={"workers": n, "storage": f"{tmp}/s{n}"})}
            )
            result = run_eval(cfg, log=lambda m: None)
            rates[n] = result.metrics["eval_samples_per_s"]
            print(f"[bench] {n} workers: {rates[n]:.2f} samples/s", flush=True)
    finally:
        ray.shutdown()
    return rates


def main() -> None:
    """Print throughput per worker count with the efficiency, and the driver's peak RSS at both sizes."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,3")
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--large", type=int, default=2000)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.tmp, args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rates = throughput(tmp, [int(w) for w in args.workers.split(",")], args.samples)
        one = rates.get(1)
        for n, rate in rates.items():
            eff = rate / (n * one) if one else float("nan")
            print(f"workers {n}: {rate:.2f} samples/s, scaling efficiency {eff:.2f}")
        peaks = {}
        for size in (args.small, args.large):
            cmd = [sys.executable, __file__, "--child", str(size), "--tmp", tmp]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            peaks[size] = json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]
            print(f"driver peak RSS at {size} eval samples: {peaks[size]:.0f} MB", flush=True)
        print(f"driver peak ratio {args.large}/{args.small}: {peaks[args.large] / peaks[args.small]:.2f}")


if __name__ == "__main__":
    main()
