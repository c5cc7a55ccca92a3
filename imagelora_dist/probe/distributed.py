"""Ray fan-out of the head probe: actors build the probe set from the shards and score batches handed out
one at a time; the driver sums in fixed order.

Each actor loads the model once and reads the probe set itself (data/probe_set.py): the driver sends batch
indices, never pixels, so its memory does not grow with the probe set. Work is handed out dynamically: an
actor gets the next batch when it returns one, so a slow or restarting actor holds up at most the batches
it has, and once nothing is left an idle actor also takes a copy of a batch still running elsewhere (the
first copy back counts; copies score the same bits). Every batch is scored by the same code with the same
thread count wherever it runs, and the float64 per-batch scores are summed in batch order, so
head_selection.json is bitwise identical for 1, 2 or N workers. The batch of an actor that fails (its
process crashed, its node was lost) goes back in the queue for whichever actor is free next; the failed
actor gets work again once it answers a ping (Ray restarts it up to `ray.max_retries` times, on another
node if its own is gone), or is dropped when its restarts are spent. A batch that fails more than
`ray.max_retries` times stops the run with an error naming it.

`probe.backend: zero3` scores inside a Ray Train + DeepSpeed ZeRO-3 group instead (probe/zero3.py), for
models that do not fit one worker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch

from imagelora_dist.config import RunConfig
from imagelora_dist.data.drops import describe_drops
from imagelora_dist.data.probe_set import ProbeBatchInfo, ProbeSet
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.faults import FAULT_MARKER_ENV, crash_if
from imagelora_dist.hand_out import HandOut, workers_that_fit

Log = Callable[[str], None]

# Fault injection (imagelora_dist.faults): the actor process dies on this probe batch index.
FAULT_BATCH_ENV = "IMAGELORA_FAULT_PROBE_BATCH"
# Straggler drill: "W:S" makes probe worker W sleep S seconds before each batch it scores ("W:S,V:T" both).
SLOW_WORKER_ENV = "IMAGELORA_FAULT_PROBE_SLOW"
# How long the probe waits for a failed worker to come back when no other worker is scoring.
STALL_S = 120.0


class ProbeFailed(RuntimeError):
    """A probe batch failed on every retry."""


@dataclass
class ProbeOutcome:
    """The summed scores and what the driver reports about the probe set."""

    scores: torch.Tensor  # float64 [layers, kv_heads], summed in batch order
    examples_per_s: float
    batches: list[ProbeBatchInfo]
    first_input_ids: torch.Tensor  # batch 0's ids, for the adapter cost figures
    per_worker: list[int]  # batches each worker's result was taken from


def straggle(worker: int) -> None:
    """Sleep as SLOW_WORKER_ENV asks, when it names this worker."""
    for item in os.environ.get(SLOW_WORKER_ENV, "").split(","):
        if item.partition(":")[0] == str(worker):
            time.sleep(float(item.partition(":")[2] or 0))


def plan_record(probe_set: ProbeSet) -> dict[str, Any]:
    """What a worker tells the driver about the probe set it built."""
    return {
        "digest": probe_set.digest,
        "batches": probe_set.infos,
        "first_input_ids": probe_set.first_input_ids,
        "dropped": {**probe_set.dropped.as_dict(), "read": probe_set.read},  # what building skipped
    }


class ProbeActor:
    """Holds one model replica with the probe attached and the probe set; scores batches by index."""

    def __init__(self, cfg: dict[str, Any], threads: int, shards: str, worker: int) -> None:
        from imagelora_dist.models.build import build_model, resolved_dtype
        from imagelora_dist.models.registry import resolve_model
        from imagelora_dist.probe.scores import HeadProbe
        from imagelora_dist.speed import apply_speed_flags

        torch.set_num_threads(max(1, threads))
        self.worker = worker
        run_cfg = RunConfig.model_validate(cfg)
        model, processor = build_model(run_cfg.model)
        if torch.cuda.is_available():
            model = model.to("cuda")
        self.probe_set = ProbeSet(run_cfg, processor, resolve_model(model), shards)
        # The probe scores every layer (lowest 0); the vision cache it fills is reused by training.
        apply_speed_flags(model, run_cfg, lowest_layer=0, dtype=resolved_dtype(run_cfg.model))
        self.probe = HeadProbe(
            model, run_cfg.probe.method, seed=run_cfg.probe.seed, num_vectors=run_cfg.probe.num_vectors
        )

    def plan(self) -> dict[str, Any]:
        """The probe set this actor built (every actor builds the same)."""
        return plan_record(self.probe_set)

    def score(self, index: int) -> tuple[np.ndarray, int]:
        """float64 [layers, kv_heads] scores of probe batch `index`, and this actor's worker number."""
        crash_if(FAULT_BATCH_ENV, str(index))
        straggle(self.worker)
        return self.probe.score_batch(self.probe_set.batch(index), index).numpy(), self.worker

    def ready(self) -> int:
        """Return the process id once the model and the probe set are loaded (for tests and progress)."""
        return os.getpid()


def worker_resources(cfg: RunConfig) -> tuple[float, float]:
    """(CPUs, GPUs) per probe actor: one GPU each when the cluster has GPUs, unless configured."""
    gpus = cfg.ray.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    return cfg.ray.cpus_per_worker, gpus


def _workers_that_fit(n_workers: int, cpus: float, gpus: float, log: Log) -> int:
    """How many of `n_workers` probe actors the cluster's current resources hold (at least 1, else an error)."""
    return workers_that_fit(n_workers, cpus, gpus, log, stage="probe",
                            hint=", or set ray.autoscale_wait_s on an autoscaling cluster")  # fmt: skip


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


def check_plans(plans: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' common probe plan; workers that built different probe sets are an error."""
    digests = sorted({p["digest"] for p in plans})
    if len(digests) > 1:
        raise ImageLoRAError(
            f"probe workers built different probe sets ({', '.join(digests)}): do all nodes see the same "
            "shards and the same package version?"
        )
    return plans[0]


def sum_in_order(results: dict[int, np.ndarray], count: int) -> torch.Tensor:
    """The float64 sum of per-batch scores 0..count-1, in that order (the same bits for any worker count)."""
    missing = [i for i in range(count) if i not in results]
    if missing:
        raise ProbeFailed(f"probe batches {missing} have no scores")
    total = np.zeros_like(results[0])
    for index in range(count):
        total += results[index]
    if total.dtype != np.float64:
        raise ImageLoRAError("probe scores must be float64")
    return torch.from_numpy(total)


def actor_probe_scores(cfg: RunConfig, shards: str, log: Log = print) -> ProbeOutcome:
    """`probe.backend: actors`: one model replica per actor, batches handed out as actors free up."""
    cpus, gpus = worker_resources(cfg)
    n_workers = min(cfg.ray.num_workers, -(-cfg.probe.num_examples // cfg.probe.batch_size))
    wait_s = cfg.ray.autoscale_wait_s
    if not wait_s:  # a static cluster: actors that can never be placed would wait forever
        n_workers = _workers_that_fit(n_workers, cpus, gpus, log)
    retries = cfg.ray.max_retries
    options: dict[str, Any] = {
        "num_cpus": cpus,
        "num_gpus": gpus,
        "max_restarts": retries,
        # Retried by the hand-out, on whichever actor is free: Ray's own retries would wait for this actor
        # (on a lost node they are spent before Ray declares the node dead).
        "max_task_retries": 0,
    }
    fault = {
        k: os.environ[k] for k in (FAULT_BATCH_ENV, FAULT_MARKER_ENV, SLOW_WORKER_ENV) if k in os.environ
    }
    if fault:
        options["runtime_env"] = {"env_vars": fault}
    actor_cls = ray.remote(ProbeActor).options(**options)
    cfg_dict = cfg.model_dump(mode="json")
    actors = [actor_cls.remote(cfg_dict, int(cpus), shards, w) for w in range(n_workers)]
    try:
        if wait_s:
            actors = _wait_for_actors(actors, wait_s, cpus, gpus, log)
            n_workers = len(actors)
        else:
            ray.get([a.ready.remote() for a in actors])
        plan = check_plans(ray.get([a.plan.remote() for a in actors]))
        infos: list[ProbeBatchInfo] = plan["batches"]
        dropped = describe_drops(plan["dropped"])
        log(f"[probe] {n_workers} Ray workers ready ({cpus:g} CPU, {gpus:g} GPU each); "
            f"{sum(i.examples for i in infos)} examples in {len(infos)} batches"
            + (f" (building the probe set dropped {dropped})" if dropped else ""))  # fmt: skip
        stall_s = max(STALL_S, cfg.ray.autoscale_wait_s)
        results, per_worker, elapsed = _HandOut(actors, infos, retries, stall_s, log).run()
        log(f"[probe] batches per worker: {per_worker}")
    finally:
        for a in actors:
            ray.kill(a)
    total = sum_in_order(results, len(infos))
    examples = sum(i.examples for i in infos)
    return ProbeOutcome(total, examples / elapsed, infos, plan["first_input_ids"], per_worker)


class _HandOut(HandOut):
    """The probe's batches on the shared hand-out (imagelora_dist/hand_out.py), with its progress line."""

    def __init__(
        self,
        actors: list[Any],
        infos: list[ProbeBatchInfo],
        retries: int,
        stall_s: float,
        log: Log,
        **ray_calls: Any,
    ):
        self.infos, self.start, self.done_examples = infos, time.perf_counter(), 0
        super().__init__(actors, list(range(len(infos))), lambda actor, index: actor.score.remote(index),
                         retries=retries, stall_s=stall_s, log=log, stage="probe", name=lambda i: f"batch {i}",
                         failed=ProbeFailed, on_result=self._progress, **ray_calls)  # fmt: skip

    def _progress(self, index: int, scores: np.ndarray) -> None:
        self.done_examples += self.infos[index].examples
        rate = self.done_examples / (time.perf_counter() - self.start)
        self.log(f"[probe] batches {len(self.results)}/{len(self.infos)}  {rate:.1f} examples/s")
