"""The job: probe -> select (train and eval stages arrive with their issues; nothing is faked here).

The driver synthesizes shards on first use, builds the probe set, fans the probe out over Ray actors,
selects heads and records everything in MLflow (a parent run, one nested run per stage).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs
import torch

from imagelora_dist.adapter.accounting import compare_costs, count_tokens
from imagelora_dist.config import RunConfig
from imagelora_dist.data.answer_formats import resolve_answer_format
from imagelora_dist.data.probe_set import ProbeSet
from imagelora_dist.data.shard_pool import spec_record
from imagelora_dist.data.shards import (
    INDEX_NAME,
    ShardIndex,
    atomic_write_bytes,
    index_location,
    is_url,
    url_filesystem,
)
from imagelora_dist.data.synth import SynthSpec, synthesize
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models import resolve_model
from imagelora_dist.models.build import checkpoint_identity, resolved_dtype, skeleton_model
from imagelora_dist.models.registry import ModelSpec
from imagelora_dist.resources import deepspeed_json
from imagelora_dist.selection import HeadSelection, config_hash, resolve_budget, select_heads
from imagelora_dist.tracking import Tracker, selection_heatmap

Log = Callable[[str], None]


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """The config with every local path made absolute against this process's working directory."""

    def fix(value: str | None) -> str | None:
        if value is None or "://" in value or value.startswith("pipe:"):
            return value
        return str(Path(value).expanduser().absolute())

    return cfg.model_copy(
        update={
            "output_dir": fix(cfg.output_dir),
            "model": cfg.model.model_copy(update={"path": fix(cfg.model.path)}),
            "data": cfg.data.model_copy(update={"train": fix(cfg.data.train)}),
            "train": cfg.train.model_copy(
                update={
                    "storage": fix(cfg.train.storage),
                    "deepspeed": str(deepspeed_json(cfg.train.deepspeed)),
                }
            ),
            "eval": cfg.eval.model_copy(update={"shards": fix(cfg.eval.shards)}),
            "speed": cfg.speed.model_copy(
                update={
                    "vision_cache_dir": fix(cfg.speed.vision_cache_dir),
                    "prefix_cache_dir": fix(cfg.speed.prefix_cache_dir),
                }
            ),
        }
    )


def train_shards(cfg: RunConfig) -> str:
    """Where the training shards live: `data.train`, or <output_dir>/data/train."""
    return cfg.data.train or str(Path(cfg.output_dir) / "data" / "train")


def synth_spec(cfg: RunConfig) -> SynthSpec:
    """The synthesizer's spec from the config's `data.synth` section."""
    s = cfg.data.synth
    return SynthSpec(
        num_samples=s.num_samples,
        samples_per_shard=s.samples_per_shard,
        width=s.width,
        height=s.height,
        min_elements=s.min_elements,
        max_elements=s.max_elements,
        instruction_words=tuple(s.instruction_words),
        tasks=tuple(s.tasks),
        seed=s.seed,
        style=s.style,
        phrasing=s.phrasing,
    )


def ensure_train_shards(cfg: RunConfig, log: Log = print) -> str:
    """The training shards, synthesized on first use when `data.train` is a local path without an index."""
    path = train_shards(cfg)
    if cfg.data.train is None:  # our own synthetic set: made, or re-made when stale
        return _synthesized(path, synth_spec(cfg), cfg, log, "screenshots")
    if "://" in path or (Path(path) / INDEX_NAME).exists():
        return path
    # A path the user named: a typo must not turn into synthetic data.
    raise ImageLoRAError(f"data.train: no {INDEX_NAME} at {path} (make shards with `imagelora-dist shard`)")


def _synthesized(path: str | Path, spec: SynthSpec, cfg: RunConfig, log: Log, what: str) -> str:
    """The synthetic set of `spec` at `path`: reused when its index records the same spec, else (re)made.

    A changed `data.synth` (sample count, style, seed...) must not train on the old set silently.
    """
    index = Path(path) / INDEX_NAME
    if index.exists():
        made_from = ShardIndex.read(path).meta.get("spec")
        if made_from == spec_record(spec):
            return str(path)
        log(f"[data] {path} was synthesized from another data.synth spec: synthesizing it again")
    else:
        log(f"[data] no shards at {path}: synthesizing {spec.num_samples} {what}")
    synthesize(spec, path, workers=cfg.data.synth.workers, progress=log, overwrite=index.exists())
    return str(path)


def probe_batches(
    cfg: RunConfig, processor: object, spec: ModelSpec, shards: str
) -> list[dict[str, torch.Tensor]]:
    """The probe set's batches, collated here (the probe itself builds them in its workers: ProbeSet)."""
    probe_set = ProbeSet(cfg, processor, spec, shards)
    return [probe_set.batch(i) for i in range(len(probe_set))]


def selection_hash(cfg: RunConfig, shards: str) -> str:
    """Hash of everything the head selection depends on, including the shard index's content."""
    index = Path(shards) / INDEX_NAME
    if is_url(shards):
        data_id = object_store_identity(shards)
    else:  # local: the index's content, as hashed since the first version (stored selections keep matching)
        data_id = hashlib.sha256(index.read_bytes()).hexdigest() if index.exists() else shards
    parts = {k: getattr(cfg, k).model_dump() for k in ("model", "probe", "selection")}
    data = cfg.data.model_dump(exclude={"synth", "num_workers", "train", "max_dropped_fraction"})
    parts["data"] = {"index": data_id, **data}
    # What build_model actually uses: the resolved dtype, and the checkpoint's weights, not just its path.
    parts["dtype"] = resolved_dtype(cfg.model)
    fmt = resolve_answer_format(cfg.data.answer_format, cfg.model.family, bool(cfg.model.path))
    if fmt != "point":  # the labels the probe (and training) see; point keeps the hashes made before formats
        parts["answer_format"] = fmt
    if cfg.model.path:
        parts["checkpoint"] = checkpoint_identity(cfg.model.path) if Path(cfg.model.path).is_dir() else None
    return config_hash(parts)


def object_store_identity(url: str) -> str:
    """The content identity of a dataset on an object store, read through the filesystem the reader uses:
    the index's bytes and each shard object's size and modification time (a re-upload changes it)."""
    where = index_location(url)
    try:
        fs, path = url_filesystem(where)
        with fs.open_input_stream(path) as f:
            raw = f.read()
        base = path.rsplit("/", 1)[0]
        # One listing of the prefix, not a request per shard.
        listed = {i.path: i for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))}
        stats = []
        for entry in json.loads(raw)["shards"]:
            url = str(entry["url"])
            if is_url(url):  # an external entry (data.trust_index_urls): on its own filesystem
                shard_fs, shard_path = url_filesystem(url)
                info = shard_fs.get_file_info(shard_path)
            else:
                info = listed.get(f"{base}/{url}")
            stats.append([url, info and info.size, info and info.mtime_ns])
    except (OSError, ValueError, KeyError, TypeError) as exc:  # no such object, no access, a bad index
        raise ImageLoRAError(f"data.train: cannot read the shard index {where}: {exc}") from None
    return f"{hashlib.sha256(raw).hexdigest()}:{config_hash(stats)}"


@dataclass
class StageResult:
    """What a stage produced: its main output, metrics and artifacts for tracking, and whether it ran."""

    output: Path
    skipped: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    tables: dict[str, dict[str, list]] = field(default_factory=dict)  # MLflow table artifacts by file name


def existing_selection(out: Path, digest: str) -> bool:
    """True when `out` holds a selection made from this very config and data."""
    if not out.exists():
        return False
    try:
        return HeadSelection.from_json(out).config_hash == digest
    except ImageLoRAError:
        return False  # an unreadable old file is simply redone


def run_probe_select(
    cfg: RunConfig, log: Log = print, on_ray: Callable[[], object] | None = None
) -> StageResult:
    """Probe the heads on Ray, select them, write `head_selection.json` (+ heatmap); skipped if done."""
    from imagelora_dist.probe.distributed import actor_probe_scores
    from imagelora_dist.ray_runtime import ensure_ray

    out = Path(cfg.output_dir) / "head_selection.json"
    heatmap = out.with_name("head_heatmap.png")
    shards = ensure_train_shards(cfg, log)
    digest = selection_hash(cfg, shards)
    if existing_selection(out, digest):
        log(f"[probe] {out} exists for this config ({digest}); skipping")
        return StageResult(out, skipped=True, artifacts=[p for p in (out, heatmap) if p.exists()])
    model, processor = skeleton_model(cfg.model)
    spec = resolve_model(model)
    resolve_budget(cfg.selection.budget, spec.total_kv_heads)  # fail before the probe, not after it
    log(
        f"[probe] {spec.family}: {spec.num_layers} layers x {spec.num_kv_heads} KV heads, "
        f"{cfg.probe.num_examples} examples in batches of {cfg.probe.batch_size}, method {cfg.probe.method}, "
        f"backend {cfg.probe.backend}"
    )
    (on_ray or (lambda: ensure_ray(cfg, log)))()  # Ray only when there is work for it
    # The workers read the probe set from the shards themselves: no pixels pass through here.
    if "://" not in shards and multi_node():
        log(f"[probe] data.train {shards} is a local path on a multi-node cluster: every node must see it "
            "at that path (else put the shards on an object store, s3://...)")  # fmt: skip
    if cfg.probe.backend == "zero3":
        from imagelora_dist.probe.zero3 import zero3_probe_scores

        outcome = zero3_probe_scores(cfg, shards, log)
    else:
        outcome = actor_probe_scores(cfg, shards, log)
    total, rate = outcome.scores, outcome.examples_per_s
    if not float(total.sum()) > 0:
        raise ImageLoRAError(
            "probe scores are all zero: the probe set has no visual tokens, or the model's image token id "
            f"({spec.image_token_id}) does not match its processor"
        )
    selection = select_heads(
        total,
        cfg.selection.budget,
        cfg.selection.tau,
        family=spec.family,
        probe_method=cfg.probe.method,
        probe_examples=cfg.probe.num_examples,
        config_hash=digest,
    )
    selection.to_json(out)
    selection_heatmap(selection, heatmap)
    visual = sum(b.visual_tokens for b in outcome.batches)
    real = visual + sum(b.text_tokens for b in outcome.batches)
    costs = compare_costs(model, selection, cfg.adapter.rank, outcome.first_input_ids)
    log(
        f"[select] {selection.total_heads} heads; per layer {selection.layer_budgets()} (tau={cfg.selection.tau})"
    )
    log(f"[select] visual-token fraction of the probe set: {visual / max(real, 1):.2f}")
    base = costs[0]
    for c in costs:
        log(
            f"[select] {c.method:<16} trainable params {c.trainable_params:>9,}  "
            f"adapter train FLOPs/batch {c.train_flops:>14,}  ({c.train_flops / max(base.train_flops, 1):.1f}x image_lora)"
        )
    log(f"[select] wrote {out} and {heatmap.name}")
    metrics = {
        "probe_examples_per_s": rate,
        "visual_token_fraction": visual / max(real, 1),
        "heads_selected": float(selection.total_heads),
        "trainable_params": float(base.trainable_params),
        "adapter_train_flops": float(base.train_flops),
    }
    for c in costs[1:]:
        metrics[f"{c.method}_trainable_params"] = float(c.trainable_params)
        metrics[f"{c.method}_adapter_train_flops"] = float(c.train_flops)
    return StageResult(out, metrics=metrics, artifacts=[out, heatmap])


def train_hash(cfg: RunConfig, shards: str) -> str:
    """Hash of everything the trained adapter depends on (selection included for image_lora)."""
    parts = {k: getattr(cfg, k).model_dump() for k in ("model", "adapter", "train")}
    parts["data"] = selection_hash(cfg, shards)
    for key in ("workers", "min_workers"):  # the global batch, not the worker count, defines the run
        parts["train"].pop(key, None)
    if cfg.train.method == "image_lora":
        sel = Path(cfg.output_dir) / "head_selection.json"
        parts["selection"] = hashlib.sha256(sel.read_bytes()).hexdigest() if sel.exists() else None
    return config_hash(parts)


def run_train(
    cfg: RunConfig,
    log: Log = print,
    *,
    resume: bool = False,
    restart: bool = False,
    on_ray: Callable[[], object] | None = None,
    mlflow_uri: str | None = None,
    mlflow_run_id: str | None = None,
) -> StageResult:
    """Train the adapter with DeepSpeed on Ray Train; skipped when the adapter exists for this config
    (unless `restart`); stored checkpoints of this config are continued, `restart` deletes them."""
    from imagelora_dist.ray_runtime import ensure_ray
    from imagelora_dist.train.loop import load_deepspeed_template
    from imagelora_dist.train.ray_train import run_training
    from imagelora_dist.train.storage import plan_storage, run_identity

    adapter_dir = Path(cfg.output_dir) / "adapter"
    done_file = Path(cfg.output_dir) / "train_done.json"
    shards = ensure_train_shards(cfg, log)
    digest = train_hash(cfg, shards)
    if done_file.exists() and adapter_dir.is_dir() and not restart:
        try:
            done = json.loads(done_file.read_text())
        except (OSError, json.JSONDecodeError):
            done = {}
        if done.get("config_hash") == digest:
            log(f"[train] {adapter_dir} exists for this config ({digest}); skipping")
            metrics = {k: float(v) for k, v in done.get("metrics", {}).items() if isinstance(v, int | float)}
            return StageResult(adapter_dir, skipped=True, metrics=metrics)  # the run that trained it, again
    load_deepspeed_template(cfg)  # a bad DeepSpeed file fails here, before any worker starts
    if cfg.train.method == "image_lora" and not (Path(cfg.output_dir) / "head_selection.json").exists():
        raise ImageLoRAError("train.method image_lora needs head_selection.json: run the probe stage first")
    identity = run_identity(cfg, selection_hash(cfg, shards))
    plan_storage(cfg, identity, resume=resume, restart=restart)  # refused here, before Ray starts
    if restart:
        done_file.unlink(missing_ok=True)  # the adapter it vouches for is about to be replaced
    (on_ray or (lambda: ensure_ray(cfg, log)))()
    workers = (
        cfg.train.workers if cfg.train.min_workers is None else f"{cfg.train.min_workers}-{cfg.train.workers}"
    )
    log(
        f"[train] {cfg.train.method}: {workers} workers, {Path(cfg.train.deepspeed).name}, "
        f"{cfg.train.steps} steps of {cfg.train.micro_batch_size} x {cfg.train.grad_accum} x {cfg.train.workers}"
    )
    start = time.perf_counter()
    if "://" not in shards and multi_node():
        log(f"[train] data.train {shards} is a local path on a multi-node cluster: every node must see it "
            "at that path (else put the shards on an object store, s3://...)")  # fmt: skip
    result = run_training(cfg, shards, resume=resume, restart=restart, identity=identity,
                          mlflow_uri=mlflow_uri, mlflow_run_id=mlflow_run_id, log=log)  # fmt: skip
    elapsed = time.perf_counter() - start
    trained = cfg.train.steps - getattr(result, "resumed_step", 0)  # after a resume: this run's steps only
    samples = trained * cfg.train.micro_batch_size * cfg.train.grad_accum * cfg.train.workers
    metrics_cost = method_costs(cfg, shards)
    metrics = {
        f"final_{k}": float(v) for k, v in (result.metrics or {}).items() if isinstance(v, int | float)
    }
    metrics["train_samples_per_s"] = samples / elapsed
    metrics["train_steps_run"] = float(trained)
    metrics.update(metrics_cost)
    atomic_write_bytes(done_file, json.dumps({"config_hash": digest, "metrics": metrics}).encode())
    log(f"[train] wrote {adapter_dir} ({metrics.get('final_loss', float('nan')):.4f} final loss)")
    return StageResult(adapter_dir, metrics=metrics, artifacts=[adapter_dir])


def method_costs(cfg: RunConfig, shards: str) -> dict[str, float]:
    """Trainable parameters and adapter-only FLOPs per micro-batch of the configured method."""
    from imagelora_dist.adapter.accounting import (
        decoder_lora_targets,
        image_lora_num_parameters,
        image_lora_train_flops,
        lora_num_parameters,
        lora_train_flops,
    )

    model, processor = skeleton_model(cfg.model)
    spec = resolve_model(model)
    size = {"num_examples": cfg.train.micro_batch_size, "batch_size": cfg.train.micro_batch_size}
    probe_cfg = cfg.model_copy(update={"probe": cfg.probe.model_copy(update=size)})
    batch = ProbeSet(probe_cfg, processor, spec, shards).batch(0)
    counts = count_tokens(batch["input_ids"], spec, batch.get("attention_mask"))
    rank = cfg.adapter.rank
    if cfg.train.method == "lora":
        targets = decoder_lora_targets(model, cfg.train.lora_targets)
        return {
            "trainable_params": float(lora_num_parameters(model, targets, rank)),
            "adapter_train_flops": float(lora_train_flops(model, targets, rank, counts.total)),
        }
    if cfg.train.method == "image_lora":
        selection = HeadSelection.from_json(Path(cfg.output_dir) / "head_selection.json")
    else:
        selection = HeadSelection.all_heads(spec)
    return {
        "trainable_params": float(image_lora_num_parameters(selection, spec, rank)),
        "adapter_train_flops": float(image_lora_train_flops(selection, spec, rank, counts.visual)),
    }


def eval_shards(cfg: RunConfig, log: Log = print) -> str:
    """The held-out shards: eval.shards, else a synthetic set made on first use with another seed."""
    if cfg.eval.shards:
        if "://" not in cfg.eval.shards and not (Path(cfg.eval.shards) / INDEX_NAME).exists():
            raise ImageLoRAError(f"eval.shards: no {INDEX_NAME} at {cfg.eval.shards}")
        return cfg.eval.shards
    spec = synth_spec(cfg)
    spec = SynthSpec(**{**spec.__dict__, "num_samples": cfg.eval.synth_samples, "seed": spec.seed + 1,
                        "prefix": "eval", "samples_per_shard": min(spec.samples_per_shard, cfg.eval.synth_samples)})  # fmt: skip
    return _synthesized(
        Path(cfg.output_dir) / "data" / "eval", spec, cfg, log, f"held-out screenshots (seed {spec.seed})"
    )


def multi_node() -> bool:
    """True when the connected Ray cluster has more than one live node (tasks may run off the driver's)."""
    from imagelora_dist.ray_runtime import multi_node as live_nodes_over_one

    return live_nodes_over_one()


def resolve_eval_backend(cfg: RunConfig) -> str:
    """eval.backend with `auto` resolved: replicas on a CPU-only cluster or for a tiny model; on GPUs the
    plan's choice for the model's size (a replica per GPU when one fits, else a device map, else ZeRO-3)."""
    import ray

    if cfg.eval.backend != "auto":
        return cfg.eval.backend
    gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
    if not cfg.model.path or gpus < 1:
        return "replicas"
    from imagelora_dist.plan import eval_backend_for

    return eval_backend_for(cfg, gpu_memory_gib())


def gpu_memory_gib() -> float:
    """One cluster GPU's memory in GiB, read on a GPU worker (the driver, a KubeRay head, may have none)."""
    import ray

    def total() -> float:
        return torch.cuda.get_device_properties(0).total_memory / 2**30

    return float(ray.get(ray.remote(total).options(num_gpus=1, num_cpus=0).remote()))


def eval_predictions_table(predictions: list[dict]) -> dict[str, list]:
    """The report's predictions as columns (MLflow's table artifact)."""
    keys = list(dict.fromkeys(k for p in predictions for k in p))
    return {k: [p.get(k) for p in predictions] for k in keys}


def run_eval(cfg: RunConfig, log: Log = print, on_ray: Callable[[], object] | None = None) -> StageResult:
    """Evaluate the trained adapter on held-out screens on Ray workers; writes eval_report.json. Finished
    chunks are kept in eval.storage and reused by a re-run of the same adapter on the same data."""
    from imagelora_dist.ray_runtime import ensure_ray

    adapter_dir = Path(cfg.output_dir) / "adapter"
    if cfg.train.method != "none" and not adapter_dir.is_dir():
        raise ImageLoRAError(f"no trained adapter at {adapter_dir}: run the train stage first")
    shards = eval_shards(cfg, log)
    (on_ray or (lambda: ensure_ray(cfg, log)))()
    backend = resolve_eval_backend(cfg)
    adapter = adapter_dir if cfg.train.method != "none" else None
    if backend == "zero3":
        from imagelora_dist.eval.zero3 import evaluate_zero3

        result = evaluate_zero3(cfg, shards, adapter, log)
    else:
        from imagelora_dist.eval.distributed import evaluate_on_workers

        result = evaluate_on_workers(cfg, shards, adapter, backend, log)
    rate = result.pop("_samples_per_s", float("nan"))
    report = Path(cfg.output_dir) / "eval_report.json"
    atomic_write_bytes(report, json.dumps(result, indent=2, default=str).encode())
    metrics = {k: float(v) for k, v in result.items() if isinstance(v, int | float)}
    if rate == rate:  # NaN when every chunk was reused
        metrics["eval_samples_per_s"] = rate
    log(
        f"[eval] grounding accuracy {result['grounding_accuracy']:.3f} ({result['grounding_count']}), referring "
        f"exact match {result['referring_exact_match']:.3f} ({result['referring_count']}), text max |dlogit| "
        f"{result['text_max_abs_logit_diff']:.3g}"
        + (f", text task {result['text_task_accuracy']:.3f} (base {result['text_task_accuracy_base']:.3f})"
           if "text_task_accuracy" in result else "")
        + f"; wrote {report}"
    )  # fmt: skip
    tables = {"eval_predictions.json": eval_predictions_table(result["predictions"])}
    return StageResult(report, metrics=metrics, artifacts=[report], tables=tables)


STAGES = ("probe", "train", "eval")


def stages_for(cfg: RunConfig) -> tuple[str, ...]:
    """The stages this config's method needs (only image_lora needs the probe; none only evaluates)."""
    if cfg.train.method == "none":
        return ("eval",)
    return STAGES if cfg.train.method == "image_lora" else tuple(s for s in STAGES if s != "probe")


def run_pipeline(
    cfg: RunConfig,
    log: Log = print,
    stages: Sequence[str] | None = None,
    *,
    resume: bool = False,
    restart: bool = False,
) -> dict[str, StageResult]:
    """Run `stages` (default: what the method needs) as nested MLflow runs; each is skipped when done."""
    import ray

    from imagelora_dist.ray_runtime import ensure_ray

    cfg = absolute_paths(cfg)  # Ray workers run in other directories
    stages = tuple(stages or stages_for(cfg))
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ImageLoRAError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    tracker = Tracker(cfg)
    tracker.check_reachable()
    started: list[bool] = []

    def start_ray() -> None:
        if not ray.is_initialized():
            started.append(ensure_ray(cfg, log))

    results: dict[str, StageResult] = {}
    try:
        tags = {"imagelora.method": cfg.train.method, "imagelora.stages": ",".join(stages)}
        with tracker.pipeline_run(tags=tags):  # params: the flattened config
            runners: dict[str, tuple[Callable[[str | None], StageResult], str]] = {
                "probe": (lambda run_id: run_probe_select(cfg, log, on_ray=start_ray), "selection"),
                "train": (
                    lambda run_id: run_train(
                        cfg, log, resume=resume, restart=restart, on_ray=start_ray,
                        mlflow_uri=tracker.uri if run_id else None,
                        mlflow_run_id=run_id,
                    ),
                    "adapter",
                ),
                "eval": (lambda run_id: run_eval(cfg, log, on_ray=start_ray), "eval"),
            }  # fmt: skip
            for stage in STAGES:
                if stage not in stages:
                    continue
                runner, artifact_path = runners[stage]
                with tracker.stage_run(stage) as run_id:
                    result = runner(run_id)
                    _record(tracker, result, artifact_path)
                results[stage] = result
                if result.metrics:  # the parent carries every stage's metrics too, for compare
                    tracker.log_metrics(result.metrics)
    finally:
        if any(started):
            ray.shutdown()  # a local Ray or a connection this run made; the cluster itself stays up
    return results


def _record(tracker: Tracker, result: StageResult, artifact_path: str) -> None:
    tracker.set_tags({"imagelora.skipped": str(result.skipped).lower()})
    if result.metrics:
        tracker.log_metrics(result.metrics)
    for path in result.artifacts:
        tracker.log_artifact(path, artifact_path)
    for name, columns in result.tables.items():
        tracker.log_table(columns, f"{artifact_path}/{name}")
