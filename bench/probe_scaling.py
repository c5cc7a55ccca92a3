"""Probe throughput on Ray on the tiny model, and the scaling efficiency.

    python bench/probe_scaling.py [--examples 32] [--batch 2]          # 1 and 2 workers, one local Ray
    python bench/probe_scaling.py --nodes 1,2,3 [--examples 32]        # 1, 2, 3 worker nodes

Efficiency = rate(N) / (N x rate(1)); 1.0 is perfect. Actor start-up (model load) is excluded: the rate
is the scoring phase, as in the pipeline's progress lines.

`--nodes` starts, for each count N, a private cluster on this machine through launch/start_cluster.sh (a
0-CPU head and N worker nodes of 1 CPU each, separate raylets, loopback only, free ports, its own temp
dirs; the helper tests/ray_cluster.py uses for the multi-node tests), runs the probe with
ray.num_workers = N against it (one actor per node), and stops every node with launch/stop_cluster.sh,
checking that none of its processes is left. On a machine with fewer cores than N + 1 (the driver), the
figure beyond the core count measures contention, not scaling.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from imagelora_dist.config import RunConfig, load_config  # noqa: E402
from imagelora_dist.pipeline import ensure_train_shards  # noqa: E402
from imagelora_dist.probe.distributed import actor_probe_scores  # noqa: E402
from imagelora_dist.ray_runtime import WORKER_ENV  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def with_workers(cfg: RunConfig, workers: int) -> RunConfig:
    """`cfg` with ray.num_workers = `workers` (1 CPU each)."""
    return cfg.model_copy(
        update={"ray": cfg.ray.model_copy(update={"num_workers": workers, "cpus_per_worker": 1})}
    )


def local_rates(cfg: RunConfig, shards: str) -> dict[int, float]:
    """examples/s of 1 and 2 actors on one in-process local Ray."""
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        return {
            w: actor_probe_scores(with_workers(cfg, w), shards, log=lambda m: None).examples_per_s
            for w in (1, 2)
        }
    finally:
        ray.shutdown()


def node_rates(cfg: RunConfig, shards: str, counts: list[int]) -> dict[int, float]:
    """examples/s with N worker nodes (one actor each), a fresh private cluster per N."""
    sys.path.insert(0, str(REPO / "tests"))
    from ray_cluster import private_ray_nodes

    rates = {}
    os.environ["RAY_AUTH_MODE"] = "disabled"  # the private cluster's mode; the client reads it from here
    for n in counts:
        with private_ray_nodes(workers=n, cpus_per_worker=1) as nodes:
            print(f"# {n} worker node(s) up in {nodes.start_s:.0f} s", file=sys.stderr)
            ray.init(
                address=nodes.gcs_address, runtime_env={"env_vars": dict(WORKER_ENV)}, log_to_driver=False
            )
            try:
                rates[n] = actor_probe_scores(with_workers(cfg, n), shards, log=lambda m: None).examples_per_s
            finally:
                ray.shutdown()
    return rates


def main() -> None:
    """Print examples/s per worker (or node) count and the efficiency."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--nodes", help="comma-separated worker-node counts, e.g. 1,2,3 (a private cluster each)")
    args = ap.parse_args()
    counts = sorted({int(n) for n in args.nodes.split(",")}) if args.nodes else []
    if counts and (counts[0] < 1 or 1 not in counts):
        ap.error("--nodes must include 1 (the base of the efficiency) and only counts >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"output_dir={tmp}", f"probe.num_examples={args.examples}", f"probe.batch_size={args.batch}",
                     "data.synth.num_samples=64", "data.synth.samples_per_shard=16", "tracking.enabled=false"]  # fmt: skip
        cfg = load_config(None, overrides)
        shards = ensure_train_shards(cfg, log=lambda m: None)
        rates = node_rates(cfg, shards, counts) if counts else local_rates(cfg, shards)
    unit = "worker node" if counts else "worker"
    print(
        f"# tiny qwen2_5_vl, {args.examples} probe examples in batches of {args.batch}, {os.cpu_count()} cores"
        + (", 1 CPU per node, a 0-CPU head" if counts else "")
    )
    for n, rate in rates.items():
        print(f"probe, {n} {unit}{'s' if n > 1 else ' '}: {rate:7.1f} examples/s")
    for n, rate in rates.items():
        if n > 1:
            print(f"scaling efficiency ({n} {unit}s): {rate / (n * rates[1]):.2f}")


if __name__ == "__main__":
    main()
