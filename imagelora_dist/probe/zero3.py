"""`probe.backend: zero3`: the head probe inside a Ray Train + DeepSpeed ZeRO-3 group, for models no worker holds.

Each of `ray.num_workers` ranks loads only its partition of the base (partitioned loading for
`model.path` checkpoints, train/loop.py), DeepSpeed's ZeRO-3 hooks gather each module's weights while it
runs, forward and backward. The probe's own parameters are attached after the engine is made, so ZeRO-3
leaves them whole on every rank and each rank's backward fills their gradients from its own batch alone.
Rank r scores probe batches r, r + W, r + 2W, ...; every rank runs the same number of passes (a rank out
of batches scores one again and drops it), because ZeRO-3's gathers are collective. Per-batch float64
scores go to a small collector actor on the driver's node and the driver sums them in batch order, so the
selection does not depend on the group size. Against the `actors` backend the scores agree to about 1e-7
relative, not bit for bit (ZeRO-3 runs the layers on gathered weights through its own ops), so the
backend is part of the selection's config hash.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
from ray.train import FailureConfig, ScalingConfig
from ray.train import RunConfig as RayRunConfig
from ray.train.torch import TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from imagelora_dist.config import RunConfig
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.faults import FAULT_MARKER_ENV, crash_if
from imagelora_dist.probe.distributed import (
    FAULT_BATCH_ENV,
    Log,
    ProbeFailed,
    ProbeOutcome,
    _workers_that_fit,
    check_plans,
    plan_record,
    sum_in_order,
    worker_resources,
)
from imagelora_dist.resources import deepspeed_json
from imagelora_dist.train.collective import collective_torch_config


@ray.remote(num_cpus=0)
class _Collector:
    """Where the ranks leave their plans and per-batch scores (Ray Train's result carries neither)."""

    def __init__(self) -> None:
        self.plans: list[dict[str, Any]] = []
        self.scores: dict[int, np.ndarray] = {}
        self.seconds = 0.0
        self.per_rank: dict[int, int] = {}
        self.skips: list[int] = []  # per restarted group: how many batches it found already scored

    def plan(self, record: dict[str, Any]) -> None:
        self.plans.append(record)

    def done(self) -> list[int]:
        """The batches already scored (by a group Ray has since restarted): a new group skips them."""
        return sorted(self.scores)

    def skipped(self, count: int) -> None:
        self.skips.append(count)

    def put(self, index: int, scores: np.ndarray, rank: int) -> None:
        if index not in self.scores:  # a restarted group re-scores: the same bits, counted once
            self.per_rank[rank] = self.per_rank.get(rank, 0) + 1
        self.scores[index] = scores

    def finish(self, seconds: float) -> None:
        self.seconds = max(self.seconds, seconds)

    def get(self) -> dict[str, Any]:
        return {
            "plans": self.plans,
            "scores": self.scores,
            "seconds": self.seconds,
            "per_rank": self.per_rank,
            "skips": self.skips,
        }


def probe_deepspeed_config(cfg: RunConfig, dtype: str, world_size: int) -> dict[str, Any]:
    """The ZeRO-3 JSON the probe group runs with: `train.deepspeed`'s zero_optimization section when it is a
    stage-3 file (its offload settings apply), else the shipped zero3 preset's; no optimizer."""
    from imagelora_dist.train.loop import load_deepspeed_template

    template = load_deepspeed_template(cfg)
    if int(template["zero_optimization"]["stage"]) != 3:
        import json

        template = json.loads(deepspeed_json("zero3").read_text())
    size = cfg.probe.batch_size
    ds: dict[str, Any] = {
        "zero_optimization": dict(template["zero_optimization"]),
        "train_micro_batch_size_per_gpu": size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": size * world_size,
        "steps_per_print": 10**9,
    }
    if dtype == "bfloat16":
        ds["bf16"] = {"enabled": True}
    return ds


def _rank_entry(config: dict[str, Any]) -> None:
    """train_loop_per_worker: load the partitioned base, build the probe set, score this rank's batches."""
    from imagelora_dist.data.probe_set import ProbeSet
    from imagelora_dist.models.build import resolved_dtype
    from imagelora_dist.models.registry import resolve_model
    from imagelora_dist.probe.scores import HeadProbe
    from imagelora_dist.speed import apply_speed_flags
    from imagelora_dist.train.loop import on_every_rank
    from imagelora_dist.train.zero3_loading import build_rank_model, import_deepspeed

    cfg = RunConfig.model_validate(config["cfg"])
    os.environ.update(config.get("fault_env") or {})
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(config["threads"])))
    deepspeed = import_deepspeed()
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    dtype = resolved_dtype(cfg.model)
    ds_config = probe_deepspeed_config(cfg, dtype, world)
    model, processor, partitioned = build_rank_model(cfg.model.model_copy(update={"dtype": dtype}), ds_config)
    if not partitioned:
        model.to(device)
    model.eval()
    # No optimizer: DeepSpeed sets up ZeRO-3's partitioning and gather hooks only (its "ZeRO Offload").
    deepspeed.initialize(model=model, config=ds_config)
    spec = resolve_model(model)
    speed = apply_speed_flags(model, cfg, lowest_layer=0, dtype=dtype)
    for cache in (speed.vision, speed.prefix) if world > 1 else ():
        if cache is not None:  # a cache hit must skip the tower on every rank or on none (the gathers)
            cache.agree = lambda flag: on_every_rank(flag, device)
    # A batch without images gets a filler image: the tower runs on every rank in every pass.
    probe_set = ProbeSet(cfg, processor, spec, config["shards"], vision_every_batch=True)
    collector = config["collector"]
    ray.get(collector.plan.remote(plan_record(probe_set)))
    # A group Ray restarted (a rank or its node lost) scores only what its predecessors left: every rank
    # reads the same list, since no batch is scored until every rank has joined the first pass's gathers.
    done = set(ray.get(collector.done.remote()))
    todo = [i for i in range(len(probe_set)) if i not in done]
    if done and rank == 0:
        ray.get(collector.skipped.remote(len(done)))
    start = time.perf_counter()
    with HeadProbe(model, cfg.probe.method, seed=cfg.probe.seed, num_vectors=cfg.probe.num_vectors) as probe:
        for slot in range(rank, -(-len(todo) // world) * world, world):
            mine = slot < len(todo)
            index = todo[slot] if mine else todo[rank % len(todo)]
            if mine:
                crash_if(FAULT_BATCH_ENV, str(index))
            scores = probe.score_batch(probe_set.batch(index), index)
            if mine:
                ray.get(collector.put.remote(index, scores.numpy(), rank))
    ray.get(collector.finish.remote(time.perf_counter() - start))


def zero3_probe_scores(cfg: RunConfig, shards: str, log: Log = print) -> ProbeOutcome:
    """Score the probe set on a ZeRO-3 group of `ray.num_workers` ranks; float64 scores summed in batch order."""
    from imagelora_dist.train.ray_train import (
        failure_summary,
        placement_timed_out,
        start_retries,
        train_storage,
    )

    cpus, gpus = worker_resources(cfg)
    world = cfg.ray.num_workers
    here = ray.get_runtime_context().get_node_id()
    # On the driver's node: a worker node lost mid-probe must not take the collected scores with it.
    collector = _Collector.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)
    ).remote()
    storage = train_storage(cfg)
    if "://" not in storage:
        Path(storage).mkdir(parents=True, exist_ok=True)
    if not cfg.ray.autoscale_wait_s:  # a static cluster: a group that cannot be placed would wait forever
        world = _workers_that_fit(world, cpus, gpus, log)

    def fit(world: int) -> None:
        trainer = TorchTrainer(
            _rank_entry,
            train_loop_config={
                "cfg": cfg.model_dump(mode="json"),
                "shards": str(Path(shards).absolute()) if "://" not in shards else shards,
                "threads": int(cpus),
                "collector": collector,
                "fault_env": {k: os.environ[k] for k in (FAULT_BATCH_ENV, FAULT_MARKER_ENV) if k in os.environ},
            },
            scaling_config=ScalingConfig(
                num_workers=world, use_gpu=gpus > 0, resources_per_worker={"CPU": cpus, **({"GPU": gpus} if gpus else {})}
            ),
            torch_config=collective_torch_config(gpus),
            run_config=RayRunConfig(
                name=f"{cfg.name}-probe", storage_path=storage,
                # Placement bounded as training bounds it: enough tries to cover ray.autoscale_wait_s.
                failure_config=FailureConfig(max_failures=cfg.ray.max_retries,
                                             controller_failure_limit=start_retries(cfg, failures=0)),
            ),
        )  # fmt: skip
        log(f"[probe] ZeRO-3 group of {world} ranks ({cpus:g} CPU, {gpus:g} GPU each)")
        trainer.fit()

    try:
        try:
            fit(world)
        except ray.train.TrainingFailedError as exc:
            if not placement_timed_out(exc):
                raise ProbeFailed(f"the ZeRO-3 probe failed: {failure_summary(exc)}") from None
            waited = f"waited {cfg.ray.autoscale_wait_s:g} s (ray.autoscale_wait_s), {start_retries(cfg, 0) + 1} tries"
            fits = min(world, _workers_that_fit(world, cpus, gpus, lambda m: None))
            if fits >= world:
                raise ProbeFailed(
                    f"the ZeRO-3 probe group of {world} ranks could not be placed ({waited})"
                ) from None
            # As the actors backend does: go on with the ranks that fit; the batches scored stay scored.
            log(f"[probe] no room for {world} ZeRO-3 ranks ({waited}); probing on the {fits} that fit")
            world = fits
            try:
                fit(world)
            except ray.train.TrainingFailedError as again:
                raise ProbeFailed(f"the ZeRO-3 probe failed: {failure_summary(again)}") from None
        got = ray.get(collector.get.remote())
    finally:
        ray.kill(collector)
    for count in got["skips"]:
        log(f"[probe] a restarted ZeRO-3 group found {count} of the batches scored: it skipped them")
    if not got["plans"]:
        raise ImageLoRAError("the ZeRO-3 probe group reported no probe set")
    plan = check_plans(got["plans"])
    infos = plan["batches"]
    total = sum_in_order(got["scores"], len(infos))
    examples = sum(i.examples for i in infos)
    per_rank = [got["per_rank"].get(r, 0) for r in range(max([world, *(r + 1 for r in got["per_rank"])]))]
    log(f"[probe] {examples} examples in {len(infos)} batches on {world} ranks (batches per rank {per_rank})")
    return ProbeOutcome(total, examples / max(got["seconds"], 1e-9), infos, plan["first_input_ids"], per_rank)
