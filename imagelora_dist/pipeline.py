"""The job: probe -> select (train and eval stages arrive with their issues; nothing is faked here).

Runs in one process for now; the Ray fan-out of the probe wraps `probe_batches`/`HeadProbe` later.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from imagelora_dist.adapter.accounting import compare_costs, count_tokens
from imagelora_dist.config import RunConfig
from imagelora_dist.data.collate import Sample, collate
from imagelora_dist.data.screens import make_screen
from imagelora_dist.models import build_tiny_vlm, load_vlm, resolve_model
from imagelora_dist.probe.scores import HeadProbe
from imagelora_dist.selection import HeadSelection, config_hash, select_heads

Log = Callable[[str], None]


def build_model(cfg: RunConfig) -> tuple[torch.nn.Module, object]:
    """The configured model and processor: a local checkpoint if `model.path` is set, else a tiny one."""
    dtype = getattr(torch, cfg.model.dtype)
    if cfg.model.path:
        return load_vlm(cfg.model.path, dtype=dtype)
    model, processor = build_tiny_vlm(cfg.model.family, seed=cfg.model.seed)
    return model.to(dtype), processor


def probe_batches(cfg: RunConfig, processor: object) -> list[dict[str, torch.Tensor]]:
    """The probe set: `probe.num_examples` synthetic screens from a fixed seed, in fixed batches."""
    samples = []
    for i in range(cfg.probe.num_examples):
        s = make_screen(
            cfg.data.seed * 1_000_003 + i, cfg.data.image_size, cfg.data.image_size, cfg.data.elements
        )
        samples.append(Sample(s.instruction, s.answer, [s.image]))
    size = cfg.probe.batch_size
    return [collate(processor, samples[i : i + size]) for i in range(0, len(samples), size)]


def selection_hash(cfg: RunConfig) -> str:
    """Hash of everything the head selection depends on (so a re-run can skip a finished probe)."""
    return config_hash({k: getattr(cfg, k).model_dump() for k in ("model", "data", "probe", "selection")})


def run_probe_select(cfg: RunConfig, log: Log = print) -> Path:
    """Probe the heads, select them, write `head_selection.json`; skipped if it exists for this config."""
    out = Path(cfg.output_dir) / "head_selection.json"
    digest = selection_hash(cfg)
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
    batches = probe_batches(cfg, processor)
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
