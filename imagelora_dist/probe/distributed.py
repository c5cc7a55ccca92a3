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


class ProbeFailed(RuntimeError):
    """A probe batch failed on every retry."""


class ProbeActor:
    """Holds one model replica with the probe attached; scores batches by index."""

    def __init__(self, cfg: dict[str, Any], threads: int) -> None:
        from imagelora_dist.models.build import build_model, resolved_dtype
        from imagelora_dist.probe.scores import HeadProbe
        from imagelora_dist.speed import apply_speed_flags

        torch.set_num_threads(max(1, threads))
        run_cfg = RunConfig.model_validate(cfg)
        model, _ = build_model(run_cfg.model)
        if torch.cuda.is_available():
            model = model.to("cuda")
        # The probe scores every layer (lowest 0); the vision cache it fills is reused by training.
        apply_speed_flags(model, run_cfg, lowest_layer=0, dtype=resolved_dtype(run_cfg.model))
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


def worker_resources(cfg: RunConfig) -> tuple[float, float]:
    """(CPUs, GPUs) per probe actor: one GPU each when the cluster has GPUs, unless configured."""
    gpus = cfg.ray.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    return cfg.ray.cpus_per_worker, gpus


def _workers_that_fit(n_workers: int, cpus: float, gpus: float, log: Log) -> int:
    """How many of `n_workers` actors the cluster's current resources can hold (at least 1, else an error)."""
    total = ray.cluster_resources()
    fits = int(total.get("CPU", 0) // cpus) if cpus else n_workers
    if gpus:
        fits = min(fits, int(total.get("GPU", 0) // gpus))
    if fits < 1:
        raise ImageLoRAError(
            f"the Ray cluster ({total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU) cannot hold one probe "
            f"worker ({cpus:g} CPU, {gpus:g} GPU): lower ray.cpus_per_worker / ray.gpus_per_worker, or set "
            "ray.autoscale_wait_s on an autoscaling cluster"
        )
    if fits < n_workers:
        log(f"[probe] the cluster holds {fits} of the {n_workers} requested workers; using {fits}")
    return min(fits, n_workers)


def _wait_for_actors(actors: list[Any], wait_s: float, cpus: float, gpus: float, log: Log) -> list[Any]:
    """The actors that became ready within `wait_s` (the autoscaler adds nodes meanwhile); the others
    are killed. None ready is an error naming what was asked for."""
    log(f"[probe] waiting up to {wait_s:g}s for {len(actors)} workers ({cpus:g} CPU, {gpus:g} GPU each)")
    pending = {a.ready.remote(): a for a in actors}
    ready_refs, _ = ray.wait(list(pending), num_returns=len(pending), timeout=wait_s)
    ready = [pending[r] for r in ready_refs]
    for ref, actor in pending.items():
        if ref not in ready_refs:
            ray.kill(actor)
    ray.get(ready_refs)  # an actor that failed to start raises here, not later
    if not ready:
        raise ProbeFailed(
            f"no probe worker ({cpus:g} CPU, {gpus:g} GPU) came up within ray.autoscale_wait_s={wait_s:g}s; "
            "check the cluster's worker groups and the autoscaler's limits"
        )
    if len(ready) < len(actors):
        log(f"[probe] {len(ready)} of {len(actors)} workers came up within {wait_s:g}s; using {len(ready)}")
    return ready


def distributed_probe_scores(
    cfg: RunConfig, batches: Sequence[dict[str, torch.Tensor]], log: Log = print
) -> tuple[torch.Tensor, float]:
    """Score `batches` on `ray.num_workers` actors; float64 [layers, kv_heads] summed in batch order.

    Returns (scores, examples per second of the scoring phase).
    """
    cpus, gpus = worker_resources(cfg)
    n_workers = min(cfg.ray.num_workers, len(batches))
    wait_s = cfg.ray.autoscale_wait_s
    if not wait_s:  # a static cluster: actors that can never be placed would wait forever
        n_workers = _workers_that_fit(n_workers, cpus, gpus, log)
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
        if wait_s:
            actors = _wait_for_actors(actors, wait_s, cpus, gpus, log)
            n_workers = len(actors)
        else:
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
