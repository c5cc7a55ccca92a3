"""Probe throughput on Ray with 1 and 2 workers on the tiny model, and the scaling efficiency.

    python bench/probe_scaling.py [--examples 32] [--batch 2]

Efficiency = rate(2 workers) / (2 x rate(1 worker)); 1.0 is perfect. Actor start-up (model load) is
excluded: the rate is the scoring phase, as in the pipeline's progress lines.
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from imagelora_dist.config import load_config  # noqa: E402
from imagelora_dist.models import resolve_model  # noqa: E402
from imagelora_dist.models.build import skeleton_model  # noqa: E402
from imagelora_dist.pipeline import ensure_train_shards, probe_batches  # noqa: E402
from imagelora_dist.probe.distributed import distributed_probe_scores  # noqa: E402


def main() -> None:
    """Print examples/s for 1 and 2 workers and the efficiency."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"output_dir={tmp}", f"probe.num_examples={args.examples}", f"probe.batch_size={args.batch}",
                     "data.synth.num_samples=64", "data.synth.samples_per_shard=16", "tracking.enabled=false"]  # fmt: skip
        cfg = load_config(None, overrides)
        shards = ensure_train_shards(cfg, log=lambda m: None)
        model, processor = skeleton_model(cfg.model)
        batches = probe_batches(cfg, processor, resolve_model(model), shards)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            rates = {}
            for workers in (1, 2):
                run_cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"num_workers": workers})})
                _, rates[workers] = distributed_probe_scores(run_cfg, batches, log=lambda m: None)
        finally:
            ray.shutdown()
    print(
        f"# tiny qwen2_5_vl, {args.examples} probe examples in batches of {args.batch}, {os.cpu_count()} cores"
    )
    for workers, rate in rates.items():
        print(f"probe, {workers} worker{'s' if workers > 1 else ' '}: {rate:7.1f} examples/s")
    print(f"scaling efficiency (2 workers): {rates[2] / (2 * rates[1]):.2f}")


if __name__ == "__main__":
    main()
