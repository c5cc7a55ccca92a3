"""`eval.backend: zero3`: eval inside a Ray Train + DeepSpeed ZeRO-3 group, for a model no GPU holds whole.

`ray.num_workers` ranks each load only their partition of the base (the loading training and the ZeRO-3
probe use: train/zero3_loading.py), DeepSpeed's hooks gather each layer's weights while it runs, and the
adapter is attached after the engine exists, so it stays whole on every rank. Rank r scores the r-th,
(r+W)-th ... of the chunks not yet stored. Generation is synchronized (transformers' `synced_gpus`: a rank
whose answers are done keeps running forward passes until every rank's are), and every rank makes the
same number of `generate` calls per round (a rank out of chunks, or with fewer usable samples, repeats a
filler batch and drops it), because ZeRO-3's gathers are collective. Finished chunks go to a small
collector actor on the driver's node, which writes them to the chunk store at once; a restarted group
(Ray Train's max_failures) asks it which chunks are still missing and scores only those. The text-only
part runs on every rank with the same prompts, rank 0 reports it. The driver merges the store in sample
order exactly as the replicas backend does (eval/distributed.py), so the two give the same report for the
same predictions; greedy answers agree with a replica's on CPU.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train import FailureConfig, ScalingConfig
from ray.train import RunConfig as RayRunConfig
from ray.train.torch import TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from imagelora_dist.config import RunConfig
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.eval.chunks import ChunkStore
from imagelora_dist.eval.distributed import (
    FAULT_CHUNK_ENV,
    TEXT_ITEM,
    TEXT_NAME,
    EvalFailed,
    Log,
    Plan,
    adapter_here,
    adapter_payload,
    answer_settings,
    decode_chunk,
    dir_digest,
    index_digest,
    infer_plan,
    make_plan,
    merge,
    open_source,
    question_items,
    sample_positions,
    score_decoded,
    source_digest,
    text_results,
    todo_items,
    write_answers,
)
from imagelora_dist.faults import FAULT_MARKER_ENV, crash_if
from imagelora_dist.train.collective import collective_torch_config


@ray.remote(num_cpus=0)
class _Collector:
    """On the driver's node: hands each group attempt its list of missing chunks, stores finished ones, and
    reads samples for ranks on nodes that cannot see the shards."""

    def __init__(self, store_root: str, todo: list[int], source: dict[str, Any], trust: bool) -> None:
        self.store = ChunkStore(store_root)
        self.todo, self.source, self.trust = todo, source, trust
        self.done: set[int] = set()
        self.snapshots: dict[str, list[int]] = {}
        self.per_rank: dict[int, int] = {}
        self.seconds = 0.0
        self.reader: Any = None

    def snapshot(self, attempt: str) -> list[int]:
        """The items still missing, the same list for every rank of one group attempt."""
        if attempt not in self.snapshots:
            self.snapshots[attempt] = [i for i in self.todo if i not in self.done]
        return self.snapshots[attempt]

    def put(self, item: int, payload: dict[str, Any], rank: int) -> None:
        """Store a finished item (a chunk, or the text part)."""
        self.store.put(TEXT_NAME if item == TEXT_ITEM else ChunkStore.chunk_name(item), payload)
        if item not in self.done:
            self.per_rank[rank] = self.per_rank.get(rank, 0) + 1
        self.done.add(item)

    def raws(self, positions: list[int]) -> list:
        """Raw samples at `positions`, for a rank that cannot read the shards itself."""
        if self.reader is None:
            self.reader = open_source(self.source, self.trust)
        return self.reader.read(positions)

    def finish(self, seconds: float) -> None:
        """A rank's scoring time (the slowest counts)."""
        self.seconds = max(self.seconds, seconds)

    def get(self) -> dict[str, Any]:
        """What the group did."""
        return {"done": sorted(self.done), "per_rank": self.per_rank, "seconds": self.seconds}


def _filler(processor: Any) -> dict[str, Any]:
    """A batch-of-one sample a rank generates and drops to keep its `generate` calls in step with the group."""
    from PIL import Image

    record = {"task": "grounding", "instruction": "Click the button.", "answer": "(500, 500)",
              "bbox": [0, 0, 10, 10], "width": 64, "height": 64, "id": "filler"}  # fmt: skip
    return {"image": Image.new("RGB", (64, 64), "white"), "record": record}


def _in_step(
    loaded: Any, cfg: RunConfig, source: dict[str, Any], raws: list, keep: bool, device: torch.device
) -> dict[str, Any] | None:
    """Score (eval) or answer (batch inference) a chunk, or a repeat (`keep` False), making as many
    `generate` calls as the busiest rank: the counts are agreed before any call (a collective between two
    generate calls would deadlock the group)."""
    import torch.distributed as dist

    from imagelora_dist.eval.batch_infer import answer_prepared, prepare_questions
    from imagelora_dist.eval.generate import generate_answers

    if source.get("mode") == "infer":
        settings = answer_settings(cfg, source)
        good, errors = prepare_questions(question_items(source, raws), settings["answer_format"])
        count = len(good)
    else:
        decoded, dropped, reasons = decode_chunk(raws)
        count = len(decoded)
    calls = -(-count // cfg.eval.batch_size)
    most = torch.tensor([calls], device=device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    if source.get("mode") == "infer":
        payload = {"lines": answer_prepared(loaded, good, **settings), "errors": errors}
    else:
        payload = {"scored": score_decoded(loaded, cfg, decoded), "dropped": dropped, "reasons": reasons}
    filler = [_filler(loaded.processor)]
    for _ in range(int(most.item()) - calls):  # fewer usable inputs here: filler calls, answers dropped
        generate_answers(loaded.model, loaded.processor, filler, max_new_tokens=cfg.eval.max_new_tokens,
                         max_pixels=cfg.data.max_pixels, batch_size=1)  # fmt: skip
    return payload if keep else None


def _rank_entry(config: dict[str, Any]) -> None:
    """train_loop_per_worker: load the partitioned base, attach the adapter, score this rank's chunks."""
    import torch.distributed as dist

    from imagelora_dist.eval.chunks import chunk_positions
    from imagelora_dist.eval.generate import synced_generation
    from imagelora_dist.models.build import resolved_dtype
    from imagelora_dist.probe.zero3 import probe_deepspeed_config
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
    deepspeed.initialize(model=model, config=ds_config)  # no optimizer: ZeRO-3's gather hooks only
    scratch = Path(config["scratch"]) / f"rank-{rank}"
    scratch.mkdir(parents=True, exist_ok=True)
    loaded = _with_adapter(model, processor, adapter_here(config["adapter"], scratch))
    collector = config["collector"]
    attempt = [uuid.uuid4().hex if rank == 0 else None]
    dist.broadcast_object_list(attempt, src=0)
    todo = ray.get(collector.snapshot.remote(attempt[0]))
    chunks = [i for i in todo if i != TEXT_ITEM]
    source = config["source"]
    reader: Any = None
    try:  # this node reads the inputs itself only if it sees the same content there
        if source_digest(source) == config["data_id"]:
            reader = open_source(source, cfg.data.trust_index_urls)
    except (ImageLoRAError, OSError):
        reader = None
    positions = config["positions"]
    if isinstance(positions, dict):
        positions = range(positions["start"], positions["stop"])
    start = time.perf_counter()
    with synced_generation():
        for first in range(0, len(chunks), world):
            mine = first + rank < len(chunks)
            item = (
                chunks[first + rank] if mine else chunks[first]
            )  # a rank out of chunks repeats one, dropped
            wanted = chunk_positions(positions, item, cfg.eval.chunk_size)
            raws = reader.read(wanted) if reader is not None else ray.get(collector.raws.remote(wanted))
            if mine:
                crash_if(FAULT_CHUNK_ENV, str(item))
            payload = _in_step(loaded, cfg, source, raws, mine, device)
            if payload is not None:
                ray.get(collector.put.remote(item, {"chunk": item, "positions": wanted, **payload}, rank))
        if TEXT_ITEM in todo:
            text = text_results(loaded, cfg)  # the same prompts on every rank: the same calls
            if rank == 0:
                ray.get(collector.put.remote(TEXT_ITEM, text, rank))
    ray.get(collector.finish.remote(time.perf_counter() - start))


def _with_adapter(model: torch.nn.Module, processor: Any, adapter: Path | None) -> Any:
    """The rank's model with the adapter attached after the engine (whole and local on every rank)."""
    import contextlib

    from imagelora_dist.adapter.io import load_adapter
    from imagelora_dist.eval.inference import FULL, IMAGE_LORA, LoadedModel, adapter_kind, attach_adapter

    if adapter is None:
        return LoadedModel(model, processor, "none", contextlib.nullcontext)
    kind = adapter_kind(adapter)
    if kind == FULL:
        raise ImageLoRAError(
            "eval.backend zero3 evaluates adapters; a full checkpoint: use replicas or device_map"
        )
    if kind == IMAGE_LORA:
        handle = load_adapter(model, adapter, beside_partitioned=True)
        return LoadedModel(model, processor, kind, handle.disabled)
    tuned, kind = attach_adapter(model, adapter)
    return LoadedModel(tuned, processor, kind, tuned.disable_adapter)


def evaluate_zero3(cfg: RunConfig, shards: str, adapter_dir: Path | None, log: Log = print) -> dict[str, Any]:
    """The eval report of `shards` scored by a ZeRO-3 group of `ray.num_workers` ranks."""
    from imagelora_dist.data.shards import ShardIndex

    data_id = index_digest(shards)
    total = ShardIndex.read(shards).total_samples
    positions = sample_positions(cfg, shards, total, log)
    plan: Plan = make_plan(cfg, data_id, dir_digest(adapter_dir), positions, "zero3")
    todo = todo_items(plan, log)
    rate = float("nan")
    if todo:
        source = {"mode": "eval", "kind": "shards", "path": shards}
        rate = run_group(cfg, source, data_id, adapter_dir, plan, todo, log)
    return {**merge(plan, {}, total, cfg, log), "_samples_per_s": rate}


def infer_zero3(cfg: RunConfig, source: dict[str, Any], adapter_dir: Path | None, out: Path, errors: Path,
                log: Log = print) -> tuple[int, int]:  # fmt: skip
    """Batch inference (eval/batch_infer.py) on a ZeRO-3 group: `out` and `errors` as `infer_on_workers`."""
    data_id, plan, todo = infer_plan(cfg, source, adapter_dir, out, "zero3", log)
    if todo:
        run_group(cfg, {**source, "mode": "infer"}, data_id, adapter_dir, plan, todo, log)
    return write_answers(plan, {}, out, errors)


def run_group(cfg: RunConfig, source: dict[str, Any], data_id: str, adapter_dir: Path | None, plan: Plan,
              todo: list[int], log: Log) -> float:  # fmt: skip
    """Score (or answer) the items `todo` of `plan` on a ZeRO-3 group of `ray.num_workers` ranks; each
    finished one is stored by the collector as it arrives. Samples per second."""
    import tempfile

    from imagelora_dist.probe.distributed import worker_resources
    from imagelora_dist.train.ray_train import failure_summary, train_storage

    cpus, gpus = worker_resources(cfg)
    world = cfg.ray.num_workers
    here = ray.get_runtime_context().get_node_id()
    collector = _Collector.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)
    ).remote(plan.store.root, todo, source, cfg.data.trust_index_urls)
    storage = train_storage(cfg)
    if "://" not in storage:
        Path(storage).mkdir(parents=True, exist_ok=True)
    positions = plan.positions
    is_range = isinstance(positions, range)
    trainer = TorchTrainer(
        _rank_entry,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"), "source": source, "data_id": data_id,
            "threads": int(cpus), "collector": collector, "adapter": adapter_payload(adapter_dir, log),
            "positions": {"start": positions.start, "stop": positions.stop} if is_range else list(positions),
            "scratch": tempfile.gettempdir() + f"/imagelora-eval-{uuid.uuid4().hex[:8]}",
            "fault_env": {k: os.environ[k] for k in (FAULT_CHUNK_ENV, FAULT_MARKER_ENV) if k in os.environ},
        },
        scaling_config=ScalingConfig(
            num_workers=world, use_gpu=gpus > 0,
            resources_per_worker={"CPU": cpus, **({"GPU": gpus} if gpus else {})},
        ),
        torch_config=collective_torch_config(gpus),
        run_config=RayRunConfig(name=f"{cfg.name}-eval", storage_path=storage,
                                failure_config=FailureConfig(max_failures=cfg.ray.max_retries)),
    )  # fmt: skip
    stage = "infer" if source.get("mode") == "infer" else "eval"
    log(f"[{stage}] ZeRO-3 group of {world} ranks ({cpus:g} CPU, {gpus:g} GPU each); {len(positions)} inputs "
        f"in {plan.chunks} chunks of {plan.chunk_size}, {len(todo)} to do")  # fmt: skip
    try:
        try:
            trainer.fit()
        except ray.train.TrainingFailedError as exc:
            raise EvalFailed(
                f"the ZeRO-3 {stage} failed: {failure_summary(exc)}; finished chunks stay in {plan.store}"
            ) from None
        got = ray.get(collector.get.remote())
    finally:
        ray.kill(collector)
    done = sum(len(plan.chunk(c)) for c in got["done"] if c != TEXT_ITEM)
    rate = done / max(got["seconds"], 1e-9)
    per_rank = [got["per_rank"].get(r, 0) for r in range(world)]
    log(f"[{stage}] chunks per rank {per_rank}; {rate:.2f} inputs/s")
    return rate
