"""Ray fan-out of the head probe: actors score probe batches by index, the driver sums in fixed order.

Each actor loads the model once and scores the batches sent to it. Every batch is scored by the same
code with the same thread count wherever it runs, and the float64 per-batch scores are summed in batch
order, so head_selection.json is bitwise identical for 1, 2 or N workers. A crashed actor is restarted
and its unfinished batches retried (Ray's max_restarts / max_task_retries); a batch that keeps failing
stops the run with an error naming it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray
import torch

from imagelora_dist.config import RunConfig
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.faults import FAULT_MARKER_ENV, crash_if

Log = Callable[[str], None]

# Fault injection (imagelora_dist.faults): the actor process dies on this probe batch index.
FAULT_BATCH_ENV = "IMAGELORA_FAULT_PROBE_BATCH"
WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
}


class ProbeFailed(RuntimeError):
    """A probe batch failed on every retry."""


class ProbeActor:
    """Holds one model replica with the probe attached; scores batches by index."""

    def __init__(self, cfg: dict[str, Any], threads: int) -> None:
        from imagelora_dist.pipeline import build_model
        from imagelora_dist.probe.scores import HeadProbe

        torch.set_num_threads(max(1, threads))
        run_cfg = RunConfig.model_validate(cfg)
        model, _ = build_model(run_cfg)
        if torch.cuda.is_available():
            model = model.to("cuda")
        self.probe = HeadProbe(
            model, run_cfg.probe.method, seed=run_cfg.probe.seed, num_vectors=run_cfg.probe.num_vectors
        )

    def score(self, index: int, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """float64 [layers, kv_heads] scores of probe batch `index`."""
        crash_if(FAULT_BATCH_ENV, str(index))
        return self.probe.score_batch(batch, index).numpy()

    def ready(self) -> int:
        """Return the process id once the model is loaded (for tests and progress)."""
        return os.getpid()


def ensure_ray(cfg: RunConfig, log: Log = print) -> bool:
    """Connect to the configured Ray cluster, or start a local one. True if this call started Ray."""
    if ray.is_initialized():
        return False
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    env = dict(WORKER_ENV)
    if address:
        log(f"[ray] connecting to {address}")
        # Under `ray job submit` the job's runtime env is inherited, and Ray refuses a driver env that
        # repeats any of its keys: add only what the job does not already set.
        missing = {k: v for k, v in env.items() if k not in os.environ}
        ray.init(address=address, runtime_env={"env_vars": missing} if missing else None, log_to_driver=True)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            num_cpus=cfg.ray.num_cpus,
            include_dashboard=False,
            runtime_env={"env_vars": env},
            log_to_driver=True,
        )
        log(f"[ray] started a local Ray with {int(ray.cluster_resources().get('CPU', 0))} CPUs")
    return True


def worker_resources(cfg: RunConfig) -> tuple[float, float]:
    """(CPUs, GPUs) per probe actor: one GPU each when the cluster has GPUs, unless configured."""
    gpus = cfg.ray.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    return cfg.ray.cpus_per_worker, gpus


def distributed_probe_scores(
    cfg: RunConfig, batches: Sequence[dict[str, torch.Tensor]], log: Log = print
) -> tuple[torch.Tensor, float]:
    """Score `batches` on `ray.num_workers` actors; float64 [layers, kv_heads] summed in batch order.

    Returns (scores, examples per second of the scoring phase).
    """
    cpus, gpus = worker_resources(cfg)
    n_workers = min(cfg.ray.num_workers, len(batches))
    # Actors that can never be placed would wait forever: use as many as the cluster can hold.
    total = ray.cluster_resources()
    fits = int(total.get("CPU", 0) // cpus) if cpus else n_workers
    if gpus:
        fits = min(fits, int(total.get("GPU", 0) // gpus))
    if fits < 1:
        raise ImageLoRAError(
            f"the Ray cluster ({total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU) cannot hold one probe "
            f"worker ({cpus:g} CPU, {gpus:g} GPU): lower ray.cpus_per_worker / ray.gpus_per_worker"
        )
    if fits < n_workers:
        log(f"[probe] the cluster holds {fits} of the {n_workers} requested workers; using {fits}")
        n_workers = fits
    retries = cfg.ray.max_retries
    options: dict[str, Any] = {
        "num_cpus": cpus,
        "num_gpus": gpus,
        "max_restarts": retries,
        "max_task_retries": retries,
    }
    fault = {k: os.environ[k] for k in (FAULT_BATCH_ENV, FAULT_MARKER_ENV) if k in os.environ}
    if fault:
        options["runtime_env"] = {"env_vars": fault}
    actor_cls = ray.remote(ProbeActor).options(**options)
    cfg_dict = cfg.model_dump(mode="json")
    actors = [actor_cls.remote(cfg_dict, int(cpus)) for _ in range(n_workers)]
    try:
        ray.get([a.ready.remote() for a in actors])
        log(f"[probe] {n_workers} Ray workers ready ({cpus:g} CPU, {gpus:g} GPU each)")
        refs = [ray.put(b) for b in batches]
        # retry_exceptions: an exception inside `score` (say a transient CUDA OOM) is retried like a
        # crash of the actor process, up to the same count.
        pending = {
            actors[i % n_workers].score.options(retry_exceptions=True).remote(i, refs[i]): i
            for i in range(len(batches))
        }
        results: dict[int, np.ndarray] = {}
        examples = [int(b["input_ids"].shape[0]) for b in batches]
        start = time.perf_counter()
        done_examples = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            try:
                results[index] = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                reason = str(exc).strip().splitlines()[0][:300]
                raise ProbeFailed(f"probe batch {index} failed after {retries} retries: {reason}") from None
            done_examples += examples[index]
            rate = done_examples / (time.perf_counter() - start)
            log(f"[probe] batches {len(results)}/{len(batches)}  {rate:.1f} examples/s")
        elapsed = time.perf_counter() - start
    finally:
        for a in actors:
            ray.kill(a)
    total = np.zeros_like(results[0])
    for index in range(len(batches)):  # fixed order: the same bits for any worker count
        total += results[index]
    if total.dtype != np.float64:
        raise ImageLoRAError("probe scores must be float64")
    return torch.from_numpy(total), sum(examples) / elapsed
