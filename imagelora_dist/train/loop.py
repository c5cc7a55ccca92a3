"""The per-worker training loop: DeepSpeed ZeRO over the worker's split of the shards.

Runs the same in a single process (world size 1) and inside a Ray Train worker. Checkpoints hold the
adapter, optimizer and scheduler state (frozen weights excluded), the step and the data cursor, so a
resumed run continues with exactly the batches an uninterrupted run would have seen next. The final
checkpoint also carries the adapter in its inference format (`<tag>/adapter`). Dropped samples are
summed over ranks every step (train/data_budget.py): a step with no usable sample on any rank is skipped
on all of them (no optimizer update), and more drops than `data.max_dropped_fraction` stop the run.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imagelora_dist.config import RunConfig
from imagelora_dist.data.answer_formats import resolve_answer_format
from imagelora_dist.data.collate import BatchCollator, move_to_device
from imagelora_dist.data.drops import Counters, describe_drops
from imagelora_dist.data.reader import Cursor, ShardReader, make_loader
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.faults import crash_if
from imagelora_dist.models.registry import resolve_model
from imagelora_dist.models.shared_prefix import attach_shared_prefix
from imagelora_dist.resources import DEEPSPEED_PRESETS, deepspeed_json
from imagelora_dist.selection import HeadSelection
from imagelora_dist.speed import apply_speed_flags
from imagelora_dist.train.data_budget import count_step_drops, drop_metrics
from imagelora_dist.train.methods import Adapted, attach_method
from imagelora_dist.train.portable_state import PORTABLE_FILE, load_portable_state, save_portable_state
from imagelora_dist.train.zero3_loading import build_rank_model, import_deepspeed, local_parameter_bytes

Report = Callable[[dict[str, float], str | None], None]


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept.

    Not retried: a restart from the last checkpoint replays the same data on the same weights.
    """


@dataclass
class WorkerContext:
    """Where this worker sits in the job."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    # The probe stage's head_selection.json content, sent along by the driver: a worker on another node
    # cannot read the driver's output_dir. None: read it from output_dir (one machine, or a shared disk).
    selection: dict[str, Any] | None = None


def load_deepspeed_template(cfg: RunConfig) -> dict[str, Any]:
    """Read `train.deepspeed` (on the driver: a bad file fails before any worker starts)."""
    path = deepspeed_json(cfg.train.deepspeed)
    try:
        ds = json.loads(path.read_text())
    except FileNotFoundError:
        presets = ", ".join(DEEPSPEED_PRESETS)
        raise ImageLoRAError(
            f"train.deepspeed: {path} not found (or name a shipped preset: {presets})"
        ) from None
    except json.JSONDecodeError as exc:
        raise ImageLoRAError(f"train.deepspeed: {path} is not valid JSON ({exc})") from None
    stage = ds.get("zero_optimization", {}).get("stage") if isinstance(ds, dict) else None
    if stage not in (0, 1, 2, 3):
        raise ImageLoRAError(f"train.deepspeed: {path} has no zero_optimization.stage in 0..3")
    if stage != 3 and (cfg.train.zero3_hpz > 1 or cfg.train.zero3_quantized_weights):
        raise ImageLoRAError(
            f"train.zero3_hpz / train.zero3_quantized_weights need ZeRO-3; {path} is stage {stage}"
        )
    return ds


def deepspeed_config(
    cfg: RunConfig, world_size: int, base_dtype: str, template: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ZeRO JSON of `train.deepspeed` completed with this run's batch sizes, optimizer, schedule and
    precision (`base_dtype`: the frozen base's dtype while training, models.build.training_dtype)."""
    ds = json.loads(json.dumps(template if template is not None else load_deepspeed_template(cfg)))
    t = cfg.train
    ds["train_micro_batch_size_per_gpu"] = t.micro_batch_size
    ds["gradient_accumulation_steps"] = t.grad_accum_for(world_size)
    ds["train_batch_size"] = t.micro_batch_size * t.grad_accum_for(world_size) * world_size
    ds["gradient_clipping"] = t.grad_clip
    if t.zero3_hpz > 1 or t.zero3_quantized_weights:  # ZeRO++ (config.py: TrainConfig)
        ds["zero_optimization"]["zero_hpz_partition_size"] = t.zero3_hpz
        ds["zero_optimization"]["zero_quantized_weights"] = t.zero3_quantized_weights
    ds.setdefault("optimizer", {"type": "AdamW", "params": {"torch_adam": True}})
    ds["optimizer"].setdefault("params", {})["lr"] = t.lr
    ds["scheduler"] = {
        "type": "WarmupCosineLR",
        "params": {
            "total_num_steps": t.steps,
            "warmup_num_steps": max(1, t.warmup_steps),
            # Start warm-up above zero: a first step at lr 0 would be a wasted step.
            "warmup_min_ratio": 1.0 / (t.warmup_steps + 1),
            "cos_min_ratio": t.min_lr_ratio,
            "warmup_type": "linear",
        },
    }
    if t.method == "full" and base_dtype == "bfloat16":
        # Every parameter trains: DeepSpeed's bf16 mode keeps the fp32 masters in its optimizer. Adapters
        # never use it: it would cast the fp32 adapter modules to bf16 (their weights, the export and the
        # update all rounded); they stay fp32 and train as such beside the bf16 base.
        ds["bf16"] = {"enabled": True}
    return ds


# Fault injection (imagelora_dist.faults): rank R dies right after optimizer step S, given "R:S".
FAULT_ENV = "IMAGELORA_FAULT_TRAIN"
# Divergence drill: rank R's loss reads NaN from optimizer step S on, given "R:S" (every attempt alike).
NAN_FAULT_ENV = "IMAGELORA_FAULT_NAN"


def _nan_drill(rank: int, step: int) -> bool:
    value = os.environ.get(NAN_FAULT_ENV, "")
    if not value:
        return False
    r, _, s = value.partition(":")
    return int(r) == rank and step >= int(s)


def zero_stage(template: dict[str, Any] | None, cfg: RunConfig) -> int:
    """The ZeRO stage of this run's DeepSpeed JSON (the template the driver read, else the file)."""
    ds = template if template is not None else load_deepspeed_template(cfg)
    return int(ds["zero_optimization"]["stage"])


def on_every_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` holds on all ranks (a collective: every rank must call it at the same point)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item())


def finite_on_every_rank(loss: torch.Tensor, world_size: int) -> bool:
    """Whether the loss is finite on all ranks: they stop together, none is left waiting in a collective."""
    finite = bool(torch.isfinite(loss.detach()).all())
    return on_every_rank(finite, loss.device) if world_size > 1 else finite


def load_selection(cfg: RunConfig, content: dict[str, Any] | None = None) -> HeadSelection | None:
    """The probe stage's head selection (image_lora only): `content` (the JSON the driver sent), else
    `<output_dir>/head_selection.json`."""
    if cfg.train.method != "image_lora":
        return None
    path = Path(cfg.output_dir) / "head_selection.json"
    if content is not None:
        return HeadSelection.from_dict(content, source=f"{path} (sent by the driver)")
    return HeadSelection.from_json(path)


def speed_config(cfg: RunConfig) -> RunConfig:
    """The config the speed flags see: for `full` (nothing frozen) no no-grad scope and no caches,
    all of which assume a frozen vision tower and frozen lower layers."""
    if cfg.train.method != "full":
        return cfg
    off = {"no_grad_below_adapters": False, "vision_cache": False, "prefix_cache": False}
    speed = cfg.speed.model_copy(update=off)
    return cfg.model_copy(update={"speed": speed})


CURSOR_FILE = "cursor.json"


def write_cursor_file(checkpoint: Path, cursor: Cursor, **layout: int) -> None:
    """The data cursor (and the ZeRO stage, global batch) in plain JSON beside DeepSpeed's files, for the
    driver's check before a resume and the workers' choice of how to resume."""
    path = checkpoint / CURSOR_FILE
    tmp = path.with_name(f".{CURSOR_FILE}.tmp")
    tmp.write_text(json.dumps({**cursor.to_dict(), **layout}))
    os.replace(tmp, path)


LAYOUT_NAMES = {
    "world_size": "train.workers",
    "num_workers": "data.num_workers",
    "batch_size": "train.micro_batch_size",
    "zero_stage": "zero_optimization.stage",
}


def layout_changes(saved: dict[str, Any], now: dict[str, int]) -> list[str]:
    """`name old -> new` for every layout setting a checkpoint was written with that differs now."""
    return [
        f"{LAYOUT_NAMES[k]} {saved[k]} -> {v}" for k, v in now.items() if k in saved and int(saved[k]) != v
    ]


def check_resume_layout(saved: dict[str, Any], cfg: RunConfig, where: str, *, portable: bool) -> list[str]:
    """The layout changes against the checkpoint (workers, loader processes, micro-batch, ZeRO stage);
    refused unless the checkpoint has the world-size-independent state (older versions lack it)."""
    now = {"world_size": cfg.train.workers, "num_workers": cfg.data.num_workers,
           "batch_size": cfg.train.micro_batch_size, "zero_stage": zero_stage(None, cfg)}  # fmt: skip
    if cfg.train.min_workers is not None:
        del now["world_size"]  # elastic: Ray decides the count when the group starts; the workers check it
    changes = layout_changes(saved, now)
    if changes and not portable:
        key = next(k for k in now if k in saved and int(saved[k]) != now[k])
        raise ImageLoRAError(
            f"cannot resume: {where} was written with {LAYOUT_NAMES[key]}={saved[key]}, now {now[key]}, "
            f"and has no {PORTABLE_FILE} (written before resume on another layout existed); "
            f"resume with {LAYOUT_NAMES[key]}={saved[key]}, or start a fresh run"
        )
    return changes


def latest_checkpoint(ckpt_dir: Path) -> str | None:
    """The tag DeepSpeed marked as latest in `ckpt_dir`, if any."""
    latest = ckpt_dir / "latest"
    return latest.read_text().strip() if latest.exists() else None


def save_final_adapter(adapted: Adapted, method: str, tag_dir: Path, rank: int) -> None:
    """Put the adapter in its inference format into the final checkpoint (`<tag_dir>/adapter`).

    Every rank calls this (under ZeRO-3 saving gathers the partitioned weights collectively); only rank
    0's copy is kept, so the checkpoint Ray merges from all ranks holds exactly one adapter.
    """
    target = tag_dir / "adapter" if rank == 0 else tag_dir.parent / f".adapter-rank{rank}"
    adapted.save(target, {"method": method})
    if rank != 0:
        shutil.rmtree(target, ignore_errors=True)


def _resume(
    engine: Any,
    ckpt_dir: Path,
    tag: str,
    cursor: Cursor,
    stage: int,
    ctx: WorkerContext,
    log: Callable[[str], None],
) -> tuple[int, Cursor]:
    """Restore a checkpoint: DeepSpeed's own files where they fit this run's layout (bit-exact), else the
    world-size-independent state (another worker count, micro-batch, loader processes or ZeRO stage)."""
    folder = ckpt_dir / tag
    try:
        saved = json.loads((folder / CURSOR_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        saved = {}  # written before cursor files: only DeepSpeed's files can tell
    now = {**cursor.layout(), "zero_stage": stage}
    changes = layout_changes(saved, now)
    if not changes and any(folder.glob("*optim_states.pt")):
        _, client = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_module_strict=False)
        cursor = Cursor.from_dict(client["cursor"])
        if "torch_rng" in client:  # dropout-bearing models resume with the same random stream
            torch.set_rng_state(client["torch_rng"])
        if ctx.device.type == "cuda" and "cuda_rng" in client:
            torch.cuda.set_rng_state(client["cuda_rng"], ctx.device)
        how, step = "", int(client["step"])
    elif (folder / PORTABLE_FILE).is_file():
        state = load_portable_state(engine, folder / PORTABLE_FILE)
        step = state.step
        cursor = Cursor.from_dict(state.cursor).relayout(**cursor.layout())
        if state.torch_rng is not None:
            torch.set_rng_state(state.torch_rng)
        how = f", from {PORTABLE_FILE}: " + (", ".join(changes) or "DeepSpeed's files are missing")
        if ctx.rank == 0 and cursor.history:
            log(f"[train] the rest of epoch {cursor.epoch} is split anew over {ctx.world_size} worker(s): "
                "no sample of it is read twice")  # fmt: skip
        if (
            ctx.rank == 0
            and "global_batch" in saved
            and int(saved["global_batch"]) != engine.train_batch_size()
        ):
            log(f"[train] note: the global batch is now {engine.train_batch_size()} samples per step, "
                f"{saved['global_batch']} before (train.grad_accum keeps it)")  # fmt: skip
    else:
        raise ImageLoRAError(
            f"cannot resume from {folder}: "
            + (", ".join(changes) or "DeepSpeed's files are missing")
            + f", and it has no {PORTABLE_FILE} (written before resume on another layout existed)"
        )
    log(f"[train] rank {ctx.rank}: resumed from {tag} (step {step}, epoch {cursor.epoch}, "
        f"batch {cursor.batches}{how})")  # fmt: skip
    return step, cursor


@dataclass
class _Setup:
    """What a worker trains with: the adapted model in its DeepSpeed engine, and its data path."""

    adapted: Adapted
    engine: Any
    stage: int
    reader: ShardReader
    collator: BatchCollator
    vcache: Any
    pcache: Any
    memory: dict[str, float]  # parameter memory after loading: this rank's and the most any rank holds


def _adapted_model(
    cfg: RunConfig, ctx: WorkerContext, dtype: str, ds_config: dict[str, Any]
) -> tuple[Adapted, Any, Any, Any, int]:
    """The configured model on this worker's device with the method attached and the speed flags set;
    also its processor, the speed-ups applied, the base model's ModelSpec and its local parameter bytes."""
    torch.manual_seed(cfg.train.seed)
    model, processor, partitioned = build_rank_model(cfg.model.model_copy(update={"dtype": dtype}), ds_config)
    if not partitioned:  # zero.Init already placed each partition on this rank's device
        model.to(ctx.device)
    param_bytes = local_parameter_bytes(model)
    spec = resolve_model(model)
    adapted = attach_method(
        model,
        cfg.train.method,
        rank=cfg.adapter.rank,
        alpha=cfg.adapter.alpha,
        selection=load_selection(cfg, ctx.selection),
        lora_targets=cfg.train.lora_targets,
        seed=cfg.train.seed,
        processor=processor,
    )
    if cfg.data.targets_per_sample > 1:  # packed batches: block mask and as-if-alone positions
        attach_shared_prefix(adapted.model, model)
    if cfg.train.gradient_checkpointing:
        adapted.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # Non-reentrant checkpointing needs no grad on the embeddings; without this the backward would
        # also run through every layer below the lowest adapter.
        adapted.model.disable_input_require_grads()
    # Image-LoRA's lowest adapted layer bounds the backward; LoRA adapts layer 0, so only the tower.
    lowest = min(adapted.handle.modules, default=0) if adapted.handle is not None else 0
    speed = apply_speed_flags(model, speed_config(cfg), lowest_layer=lowest, dtype=dtype)
    return adapted, processor, speed, spec, param_bytes


def _setup(
    cfg: RunConfig,
    ctx: WorkerContext,
    shards: str,
    ds_template: dict[str, Any] | None,
    log: Callable[[str], None],
) -> _Setup:
    """Model, DeepSpeed engine, shard reader and collator of this worker."""
    from imagelora_dist.models.build import training_dtype

    deepspeed = import_deepspeed()
    on_gpu = ctx.device.type == "cuda"
    dtype = training_dtype(cfg.model, cfg.train.precision)  # the frozen base's; adapters stay fp32
    # Before the model (ZeRO-3 partitions it while loading), and also where Ray Train already made the
    # process group: DeepSpeed's own comm layer wraps it then (zero.Init reads the world size from it).
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    ds_config = deepspeed_config(cfg, ctx.world_size, dtype, ds_template)
    adapted, processor, speed, spec, param_bytes = _adapted_model(cfg, ctx, dtype, ds_config)
    held = torch.tensor([float(param_bytes)], device=ctx.device)
    if ctx.world_size > 1:  # the most any rank holds: what decides whether a model fits
        torch.distributed.all_reduce(held, op=torch.distributed.ReduceOp.MAX)
    memory = {"param_memory_gb": param_bytes / 2**30, "param_memory_gb_max": float(held.item()) / 2**30}
    vcache, pcache = speed.vision, speed.prefix
    # ZeRO-3 shards the frozen model too and gathers each module's weights collectively as it runs: every
    # rank must run the same modules in every step, or the gathers mismatch and the ranks hang or die. So
    # a batch without images gets a filler image (the tower runs everywhere), and a cache serves a step
    # only where it serves every rank (one small all-reduce per cache and micro-batch).
    stage = zero_stage(ds_template, cfg)
    lockstep = ctx.world_size > 1 and stage == 3
    for cache in (vcache, pcache) if lockstep else ():
        if cache is not None:
            cache.agree = functools.partial(on_every_rank, device=ctx.device)
    adapted.model.train()
    engine, _, _, _ = deepspeed.initialize(
        model=adapted.model, model_parameters=adapted.parameters, config=ds_config
    )
    t = cfg.train
    if ctx.rank == 0 and t.min_workers is not None and ctx.world_size != t.workers:  # elastic, below the most
        wanted = t.micro_batch_size * t.grad_accum * t.workers
        log(f"[train] {ctx.world_size} of {t.workers} workers: each accumulates {engine.gradient_accumulation_steps()} "
            f"micro-batches of {t.micro_batch_size}, a global batch of {engine.train_batch_size()}"
            + ("" if engine.train_batch_size() == wanted else f" (not the {wanted} of train.workers: it does not divide)"))  # fmt: skip
    reader = ShardReader.from_path(
        shards, cfg.train.micro_batch_size, seed=cfg.data.seed, shuffle_buffer=cfg.data.shuffle_buffer,
        trust_index_urls=cfg.data.trust_index_urls,
    )  # fmt: skip
    collator = BatchCollator(
        processor, spec.visual_token_ids, max_pixels=cfg.data.max_pixels, max_length=cfg.data.max_length,
        # a trained vision tower, or ZeRO-3's gathers, need the tower to run on every rank
        vision_every_batch=cfg.train.method == "full" or lockstep,
        image_digests=vcache is not None, sample_digests=pcache is not None,
        answer_format=resolve_answer_format(cfg.data.answer_format, cfg.model.family, bool(cfg.model.path)),
        targets_per_sample=cfg.data.targets_per_sample,
    )  # fmt: skip
    if vcache is not None and cfg.speed.vision_cache_skip_processor:
        if cfg.data.num_workers == 0:
            collator.features_cached = speed.features_cached  # the loader runs here: it can ask the cache
        elif ctx.rank == 0:
            log("[train] speed.vision_cache_skip_processor is inactive: loader processes "
                f"(data.num_workers: {cfg.data.num_workers}) cannot see the cache; every batch is processed")  # fmt: skip
    return _Setup(adapted, engine, stage, reader, collator, vcache, pcache, memory)


def _step_metrics(
    run: _Setup, ctx: WorkerContext, step: int, loss: torch.Tensor, tokens: int, visual: int, elapsed: float
) -> dict[str, float]:
    """The metrics of an optimizer step (the loss as the mean over ranks)."""
    engine, vcache, pcache = run.engine, run.vcache, run.pcache
    mean_loss = loss.detach().float().clone()
    if ctx.world_size > 1:  # report the global mean, not rank 0's micro-batch
        torch.distributed.all_reduce(mean_loss)
        mean_loss /= ctx.world_size
    metrics = {
        "loss": float(mean_loss),
        "lr": float(engine.get_lr()[0]),
        "grad_norm": float(engine.get_global_grad_norm() or 0.0),
        "tokens_per_s": tokens / elapsed,
        "visual_tokens_per_s": visual / elapsed,
        "step_time_s": elapsed,
        "step": float(step),
        "workers": float(ctx.world_size),  # an elastic run's group size, step by step
        **run.memory,
    }
    if ctx.device.type == "cuda":
        metrics["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    if vcache is not None:
        metrics["vision_cache_hit_rate"] = vcache.hits / max(1, vcache.hits + vcache.misses)
        metrics["image_processor_skipped_batches"] = float(run.collator.skipped_batches)
    if pcache is not None:
        metrics["prefix_cache_hit_rate"] = pcache.hits / max(1, pcache.hits + pcache.misses)
    return metrics


def _save_checkpoint(
    cfg: RunConfig, run: _Setup, ctx: WorkerContext, ckpt_dir: Path, step: int, cursor: Cursor
) -> str:
    """Write checkpoint `step-N` (DeepSpeed's files, the portable state, the cursor; at the last step the
    adapter in its inference format) and return its tag. Every rank calls this."""
    engine = run.engine
    tag = f"step-{step:06d}"
    client = {"step": step, "cursor": cursor.to_dict(), "torch_rng": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        client["cuda_rng"] = torch.cuda.get_rng_state(ctx.device)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client, exclude_frozen_parameters=True)
    # every rank: the whole adapter and moments are gathered; rank 0 writes them
    save_portable_state(engine, ckpt_dir / tag, rank=ctx.rank, step=step, cursor=cursor.to_dict())
    if ctx.rank == 0:  # for the driver's check, and the workers' choice of how to resume
        write_cursor_file(
            ckpt_dir / tag, cursor, zero_stage=run.stage, global_batch=engine.train_batch_size()
        )
    if step == cfg.train.steps:
        save_final_adapter(run.adapted, cfg.train.method, ckpt_dir / tag, ctx.rank)
    return tag


def train_worker(
    cfg: RunConfig,
    ctx: WorkerContext,
    shards: str,
    *,
    ckpt_dir: Path,
    resume: bool = False,
    report: Report | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
    ds_template: dict[str, Any] | None = None,
) -> tuple[Adapted, dict[str, float]]:
    """Train on this worker's split; returns the adapted model and the last metrics.

    `report(metrics, checkpoint_tag)` is called at every optimizer step (tag set when a checkpoint was
    written). `stop_after` stops after that many optimizer steps (for tests of resume).
    """
    run = _setup(cfg, ctx, shards, ds_template, log)
    engine = run.engine
    cursor = Cursor(
        world_size=ctx.world_size, num_workers=cfg.data.num_workers, batch_size=cfg.train.micro_batch_size
    )
    step = 0
    tag = latest_checkpoint(ckpt_dir) if resume else None
    if tag is not None:
        step, cursor = _resume(engine, ckpt_dir, tag, cursor, run.stage, ctx, log)
    metrics: dict[str, float] = {}
    gas = engine.gradient_accumulation_steps()
    batches, fill = _micro_batches(cfg, run, ctx, cursor), None
    seen = Counters()  # this attempt's drops by reason, for the line that stops the run
    planned = cfg.train.steps * engine.train_batch_size()  # samples the whole run reads (data/drops.py)
    t_step = time.perf_counter()
    while step < cfg.train.steps:
        group = [next(batches) for _ in range(gas)]
        usable, drops = count_step_drops(group, ctx.rank, ctx.world_size, ctx.device, cursor,
                                         cfg.data.max_dropped_fraction, planned, step + 1, seen, log)  # fmt: skip
        if usable:
            loss, fill, tokens, visual = _optimizer_step(run, ctx, group, fill, step + 1)
            metrics = _step_metrics(run, ctx, step + 1, loss, tokens, visual, time.perf_counter() - t_step)
        else:  # no rank has a usable sample: nothing runs, the weights and optimizer state stay as they are
            metrics = {"step": step + 1.0, "lr": float(engine.get_lr()[0]), "workers": float(ctx.world_size)}
        step += 1
        metrics.update(drop_metrics(drops, cursor, skipped=not usable))
        t_step = time.perf_counter()
        saved = None
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
            saved = _save_checkpoint(cfg, run, ctx, ckpt_dir, step, cursor)
        if report is not None:
            report(metrics, saved)
        crash_if(FAULT_ENV, f"{ctx.rank}:{step}")
        if ctx.rank == 0:
            dropped = f", dropped {describe_drops(drops)}" if any(drops.values()) else ""
            if usable:
                log(f"[train] step {step}/{cfg.train.steps} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
                    f"{metrics['tokens_per_s']:.0f} tok/s{dropped}")  # fmt: skip
            else:
                log(f"[train] step {step}/{cfg.train.steps} skipped: no usable sample on any rank{dropped}")
        if stop_after is not None and step >= stop_after:
            break
    return run.adapted, metrics


def _micro_batches(
    cfg: RunConfig, run: _Setup, ctx: WorkerContext, cursor: Cursor
) -> Iterator[dict[str, Any]]:
    """This rank's micro-batches, epoch after epoch; `cursor` counts each one as it is handed out."""
    while True:
        loader = make_loader(run.reader, rank=ctx.rank, world_size=ctx.world_size,
                             num_workers=cfg.data.num_workers, collate_fn=run.collator, cursor=cursor)  # fmt: skip
        batches_per_epoch = len(loader)  # this epoch's (a resume on another layout shortens its rest)
        if batches_per_epoch == 0:
            cursor.finish_epoch()
        for batch in loader:
            cursor.advance(batch["num_samples"], batches_per_epoch)
            yield batch


def _optimizer_step(
    run: _Setup, ctx: WorkerContext, group: list[dict[str, Any]], fill: dict[str, Any] | None, step: int
) -> tuple[torch.Tensor, dict[str, Any], int, int]:
    """Forward, backward and DeepSpeed step over one optimizer step's micro-batches; returns the last loss,
    the micro-batch to replay for an empty one later, and the tokens and visual tokens seen.

    A micro-batch without a usable sample on this rank (where some rank has one) replays an earlier one
    with weight 0: every rank runs the same modules and collectives (DDP, ZeRO-3), contributing nothing."""
    engine, vcache, pcache = run.engine, run.vcache, run.pcache
    if fill is None:
        fill = next((b for b in group if b["inputs"] is not None), None)
    tokens = visual = 0
    for batch in group:
        used, weight = batch, 1.0
        if batch["inputs"] is None:
            if fill is None:
                raise ImageLoRAError(f"rank {ctx.rank} has had no usable sample by step {step}: "
                                     "nothing to run in step with the other ranks")  # fmt: skip
            used, weight = fill, 0.0
        fill = used
        if pcache is not None:
            pcache.expect(used["sample_digests"])
        # A prefix-cache hit never reaches the vision tower: its digests would linger for another forward.
        if vcache is not None and (pcache is None or pcache.mode != "hit"):
            vcache.expect(used["image_digests"], without_pixels=used["without_pixels"])
        # The model's loss is the mean over the micro-batch's answer tokens; a packed micro-batch
        # (data.targets_per_sample) holds the same answer tokens, so it needs no other normalization.
        loss = engine(**move_to_device(used["inputs"], ctx.device)).loss
        if _nan_drill(ctx.rank, step):
            loss = loss * float("nan")
        if not finite_on_every_rank(loss, ctx.world_size):
            raise TrainingDiverged(
                f"the loss is not finite at step {step} (rank {ctx.rank}: {loss.item()}); "
                f"lower train.lr or check the data; the last good checkpoint is kept"
            )
        engine.backward(loss * weight)
        engine.step()
        tokens += batch["visual_tokens"] + batch["text_tokens"]
        visual += batch["visual_tokens"]
    return loss, fill, tokens, visual
