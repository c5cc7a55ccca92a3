"""The job: probe -> select (train and eval stages arrive with their issues; nothing is faked here).

Runs in one process for now; the Ray fan-out of the probe wraps `probe_batches`/`HeadProbe` later.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

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
from imagelora_dist.probe.scores import HeadProbe
from imagelora_dist.selection import HeadSelection, config_hash, resolve_budget, select_heads

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


def run_probe_select(cfg: RunConfig, log: Log = print) -> Path:
    """Probe the heads, select them, write `head_selection.json`; skipped if it exists for this config."""
    out = Path(cfg.output_dir) / "head_selection.json"
    shards = ensure_train_shards(cfg, log)
    digest = selection_hash(cfg, shards)
    if out.exists():
        try:
            previous = HeadSelection.from_json(out)
        except Exception:  # an unreadable old file is simply redone
            previous = None
        if previous is not None and previous.config_hash == digest:
            log(f"[probe] {out} exists for this config ({digest}); skipping")
            return out
    model, processor = build_model(cfg)
    spec = resolve_model(model)
    resolve_budget(cfg.selection.budget, spec.total_kv_heads)  # fail before the probe, not after it
    batches = probe_batches(cfg, processor, spec, shards)
    log(
        f"[probe] {spec.family}: {spec.num_layers} layers x {spec.num_kv_heads} KV heads, "
        f"{cfg.probe.num_examples} examples in {len(batches)} batches, method {cfg.probe.method}"
    )
    total = torch.zeros(spec.num_layers, spec.num_kv_heads, dtype=torch.float64)
    start = time.perf_counter()
    done = 0
    visual = real = 0
    with HeadProbe(model, cfg.probe.method, seed=cfg.probe.seed, num_vectors=cfg.probe.num_vectors) as probe:
        for index, batch in enumerate(batches):
            total += probe.score_batch(batch, index)
            counts = count_tokens(batch["input_ids"], spec, batch.get("attention_mask"))
            visual, real = visual + counts.visual, real + counts.visual + counts.text
            done += batch["input_ids"].shape[0]
            rate = done / (time.perf_counter() - start)
            log(f"[probe] batch {index + 1}/{len(batches)}  {rate:.1f} examples/s")
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
    log(f"[select] wrote {out}")
    return out


STAGES = ("probe",)


def run_pipeline(cfg: RunConfig, log: Log = print) -> dict[str, Path]:
    """Run every stage that exists so far, each skipped when its output is already there."""
    return {"probe": run_probe_select(cfg, log)}
