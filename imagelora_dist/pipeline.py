"""The job: probe -> select (train and eval stages arrive with their issues; nothing is faked here).

The driver synthesizes shards on first use, builds the probe set, fans the probe out over Ray actors,
selects heads and records everything in MLflow (a parent run, one nested run per stage).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ray
import torch

from imagelora_dist.adapter.accounting import compare_costs, count_tokens
from imagelora_dist.config import RunConfig
from imagelora_dist.data.collate import BatchCollator
from imagelora_dist.data.reader import ShardReader, ShardStream
from imagelora_dist.data.shards import INDEX_NAME
from imagelora_dist.data.synth import SynthSpec, synthesize
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models import build_tiny_vlm, load_vlm, resolve_model
from imagelora_dist.models.registry import ModelSpec
from imagelora_dist.probe.distributed import distributed_probe_scores, ensure_ray
from imagelora_dist.selection import HeadSelection, config_hash, resolve_budget, select_heads
from imagelora_dist.tracking import Tracker, selection_heatmap

Log = Callable[[str], None]


def build_model(cfg: RunConfig) -> tuple[torch.nn.Module, object]:
    """The configured model and processor: a local checkpoint if `model.path` is set, else a tiny one."""
    name = cfg.model.dtype
    if name == "auto":
        name = "bfloat16" if torch.cuda.is_available() else "float32"
    dtype = getattr(torch, name)
    if cfg.model.path:
        return load_vlm(cfg.model.path, dtype=dtype)
    model, processor = build_tiny_vlm(cfg.model.family, seed=cfg.model.seed)
    return model.to(dtype), processor


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
    )


def ensure_train_shards(cfg: RunConfig, log: Log = print) -> str:
    """The training shards, synthesized on first use when `data.train` is a local path without an index."""
    path = train_shards(cfg)
    if "://" in path or (Path(path) / INDEX_NAME).exists():
        return path
    log(f"[data] no shards at {path}: synthesizing {cfg.data.synth.num_samples} screenshots")
    synthesize(synth_spec(cfg), path, workers=cfg.data.synth.workers, progress=log)
    return path


def probe_batches(
    cfg: RunConfig, processor: object, spec: ModelSpec, shards: str
) -> list[dict[str, torch.Tensor]]:
    """The probe set: the first `probe.num_examples` samples of the shards in a `probe.seed` order."""
    size = cfg.probe.batch_size
    reader = ShardReader.from_path(shards, size, seed=cfg.probe.seed, shuffle_buffer=cfg.data.shuffle_buffer)
    if reader.index.total_samples < cfg.probe.num_examples:
        raise ImageLoRAError(
            f"probe.num_examples {cfg.probe.num_examples} exceeds the {reader.index.total_samples} samples in {shards}"
        )
    collator = BatchCollator(
        processor, spec.visual_token_ids, max_pixels=cfg.data.max_pixels, max_length=cfg.data.max_length
    )
    batches, taken = [], 0
    for raw in ShardStream(reader, epoch=0):
        want = min(size, cfg.probe.num_examples - taken)
        out = collator(raw["samples"][:want])
        if out["inputs"] is not None:
            batches.append(out["inputs"])
            taken += out["num_samples"]
        if taken >= cfg.probe.num_examples:
            break
    if taken < cfg.probe.num_examples:
        raise ImageLoRAError(f"only {taken} usable probe examples in {shards} (corrupt or too long samples)")
    return batches


def selection_hash(cfg: RunConfig, shards: str) -> str:
    """Hash of everything the head selection depends on, including the shard index's content."""
    index = Path(shards) / INDEX_NAME
    data_id = hashlib.sha256(index.read_bytes()).hexdigest() if index.exists() else shards
    parts = {k: getattr(cfg, k).model_dump() for k in ("model", "probe", "selection")}
    parts["data"] = {"index": data_id, "max_pixels": cfg.data.max_pixels, "max_length": cfg.data.max_length}
    return config_hash(parts)


@dataclass
class StageResult:
    """What a stage produced: its main output, metrics and artifacts for tracking, and whether it ran."""

    output: Path
    skipped: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)


def driver_model(cfg: RunConfig) -> tuple[torch.nn.Module, object]:
    """Model skeleton and processor for the driver, which only collates and counts: a real checkpoint is
    built on the meta device (no weights loaded); the tiny model is cheap to build for real."""
    if not cfg.model.path:
        return build_tiny_vlm(cfg.model.family, seed=cfg.model.seed)
    from transformers import AutoConfig, AutoModelForImageTextToText

    from imagelora_dist.models.tiny import load_processor

    load_vlm_check(cfg.model.path)
    config = AutoConfig.from_pretrained(cfg.model.path, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return model, load_processor(cfg.model.path, config.model_type)


def load_vlm_check(path: str) -> None:
    """Fail in one line if `path` is not a local checkpoint of a supported family."""
    from imagelora_dist.models.registry import family_for_model_type

    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise ImageLoRAError(f"model.path {path}: not a model directory (no config.json)")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type", "")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise ImageLoRAError(f"{cfg_file}: unreadable ({exc})") from None
    family_for_model_type(str(model_type))


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
    out = Path(cfg.output_dir) / "head_selection.json"
    heatmap = out.with_name("head_heatmap.png")
    shards = ensure_train_shards(cfg, log)
    digest = selection_hash(cfg, shards)
    if existing_selection(out, digest):
        log(f"[probe] {out} exists for this config ({digest}); skipping")
        return StageResult(out, skipped=True, artifacts=[p for p in (out, heatmap) if p.exists()])
    model, processor = driver_model(cfg)
    spec = resolve_model(model)
    resolve_budget(cfg.selection.budget, spec.total_kv_heads)  # fail before the probe, not after it
    batches = probe_batches(cfg, processor, spec, shards)
    log(
        f"[probe] {spec.family}: {spec.num_layers} layers x {spec.num_kv_heads} KV heads, "
        f"{cfg.probe.num_examples} examples in {len(batches)} batches, method {cfg.probe.method}"
    )
    (on_ray or (lambda: ensure_ray(cfg, log)))()  # Ray only when there is work for it
    total, rate = distributed_probe_scores(cfg, batches, log)
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
    visual = real = 0
    for batch in batches:
        counts = count_tokens(batch["input_ids"], spec, batch.get("attention_mask"))
        visual, real = visual + counts.visual, real + counts.visual + counts.text
    costs = compare_costs(model, selection, cfg.adapter.rank, batches[0]["input_ids"])
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


STAGES = ("probe",)


def run_pipeline(
    cfg: RunConfig, log: Log = print, stages: Sequence[str] | None = None
) -> dict[str, StageResult]:
    """Run `stages` (default: every stage that exists) as nested MLflow runs; each is skipped when done."""
    stages = tuple(stages or STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ImageLoRAError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    tracker = Tracker(cfg)
    tracker.check_reachable()
    started: list[bool] = []

    def start_ray() -> None:
        started.append(ensure_ray(cfg, log))

    results: dict[str, StageResult] = {}
    try:
        tags = {"imagelora.method": "image_lora", "imagelora.stages": ",".join(STAGES)}
        with tracker.pipeline_run(tags=tags):  # params: the flattened config
            with tracker.stage_run("probe"):
                result = run_probe_select(cfg, log, on_ray=start_ray)
                tracker.set_tags({"imagelora.skipped": str(result.skipped).lower()})
                if result.metrics:
                    tracker.log_metrics(result.metrics)
                for path in result.artifacts:
                    tracker.log_artifact(path, "selection")
            results["probe"] = result
            if result.metrics:
                tracker.log_metrics(result.metrics)
    finally:
        if any(started):
            ray.shutdown()  # a local Ray or a connection this run made; the cluster itself stays up
    return results
