"""Pre-train a small base VLM, so fine-tuning starts from a model that sees and reads.

    python -m fidelity.pretrain [--config FILE] [--no-ray] [key=value ...]   (make pretrain-base*)


The job: synthesize the pre-training shards (generic screen tasks plus text-only arithmetic,
`fidelity/pretrain_tasks.py`) and a held-out set on first use, train every parameter of the configured model
with the adapter trainer (method `full`: Ray Train workers, DeepSpeed ZeRO), and write the result as a
transformers checkpoint directory plus processor, `<output_dir>/base`, atomically. The pipeline then
loads it from that local path like any real checkpoint (`model.path=<output_dir>/base`). Held-out exact
match per task (greedy generation) and answer loss go to `<output_dir>/pretrain_report.json`; everything
is recorded in MLflow as a parent run with a nested `pretrain` run, like the pipeline's stages.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from fidelity.pretrain_tasks import POINT, TEXT_ONLY_TASKS, PretrainSpec, synthesize_pretrain
from imagelora_dist.config import RunConfig
from imagelora_dist.data.collate import BatchCollator, Sample, collate, fit_pixels
from imagelora_dist.data.reader import ShardReader, ShardStream
from imagelora_dist.data.shards import INDEX_NAME, atomic_write_bytes
from imagelora_dist.data.tasks import GROUNDING
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.eval.generate import (
    eval_mode,
    generate_for_samples,
    model_device_dtype,
    padding_side,
    to_model,
)
from imagelora_dist.eval.metrics import chance_baselines, click_distance, grounding_hit
from imagelora_dist.selection import config_hash

Log = Callable[[str], None]

BASE_DIR = "base"
REPORT_NAME = "pretrain_report.json"
DONE_NAME = "pretrain_done.json"
SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain_base.yaml"
BLANK = (200, 200, 200)


@dataclass
class PretrainResult:
    """Where the base model is, what was measured, and whether the run was skipped (already done)."""

    base: Path
    report: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


def pretrain_config(cfg: RunConfig) -> RunConfig:
    """The config with method `full` and every local path absolute (Ray workers run elsewhere)."""
    from imagelora_dist.pipeline import absolute_paths

    return absolute_paths(cfg.model_copy(update={"train": cfg.train.model_copy(update={"method": "full"})}))


def pretrain_spec(cfg: RunConfig, *, held_out: bool = False) -> PretrainSpec:
    """The pre-training set from `data.synth` (count, sharding, screen size, clutter, seed); the held-out
    set has `eval.num_samples` (else `eval.synth_samples`) samples and seed + 1, so it shares no screen with training."""
    s = cfg.data.synth
    num = (cfg.eval.num_samples or cfg.eval.synth_samples) if held_out else s.num_samples
    return PretrainSpec(
        num_samples=num,
        samples_per_shard=min(s.samples_per_shard, num),
        width=s.width,
        height=s.height,
        min_elements=s.min_elements,
        max_elements=s.max_elements,
        seed=s.seed + 1 if held_out else s.seed,
        prefix="pretrain-eval" if held_out else "pretrain",
        style=s.style,
        **({"tasks": tuple(cfg.data.pretrain_tasks)} if cfg.data.pretrain_tasks else {}),
    )


def held_out_shards(cfg: RunConfig) -> str:
    """Where the held-out set of a pre-training run is: `eval.shards`, else <output_dir>/data/pretrain-eval."""
    return cfg.eval.shards or str(Path(cfg.output_dir) / "data" / "pretrain-eval")


def ensure_pretrain_shards(cfg: RunConfig, log: Log = print) -> tuple[str, str]:
    """(training shards, held-out shards), synthesized on first use under <output_dir>/data."""
    data = Path(cfg.output_dir) / "data"
    train = cfg.data.train or str(data / "pretrain")
    if "://" not in train and not (Path(train) / INDEX_NAME).exists():
        if cfg.data.train is not None:  # a path the user named: a typo must not turn into synthetic data
            raise ImageLoRAError(f"data.train: no {INDEX_NAME} at {train}")
        spec = pretrain_spec(cfg)
        log(f"[pretrain] synthesizing {spec.num_samples} pre-training samples into {train}")
        synthesize_pretrain(spec, train, workers=cfg.data.synth.workers, progress=log)
    held_out = held_out_shards(cfg)
    if "://" not in held_out and not (Path(held_out) / INDEX_NAME).exists():
        if cfg.eval.shards is not None:
            raise ImageLoRAError(f"eval.shards: no {INDEX_NAME} at {held_out}")
        spec = pretrain_spec(cfg, held_out=True)
        log(f"[pretrain] synthesizing {spec.num_samples} held-out samples (seed {spec.seed})")
        synthesize_pretrain(spec, held_out, workers=cfg.data.synth.workers, progress=None)
    return train, held_out


def pretrain_hash(cfg: RunConfig, shards: str) -> str:
    """Hash of everything the base model depends on: model, training, data settings and the shard index."""
    index = Path(shards) / INDEX_NAME
    parts: dict[str, Any] = {k: getattr(cfg, k).model_dump() for k in ("model", "train")}
    parts["train"].pop("workers", None)  # the global batch, not the worker count, defines the run
    parts["data"] = cfg.data.model_dump(exclude={"num_workers", "train"})
    parts["index"] = hashlib.sha256(index.read_bytes()).hexdigest() if index.exists() else shards
    return config_hash(parts)


def answer_samples(
    model: torch.nn.Module,
    processor: Any,
    decoded: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int = 16,
    max_pixels: int | None = None,
    batch_size: int = 8,
) -> list[str]:
    """Greedy answers like `eval.generate.generate_answers`, honouring text-only records (no image)."""
    samples = [
        Sample(d["record"]["instruction"], None,
               [] if d["record"].get("text_only") is True else [fit_pixels(d["image"], max_pixels)])
        for d in decoded
    ]  # fmt: skip
    return generate_for_samples(model, processor, samples, max_new_tokens=max_new_tokens, max_pixels=max_pixels,
                                batch_size=batch_size)  # fmt: skip


def answer_losses(
    model: torch.nn.Module,
    processor: Any,
    decoded: Sequence[dict[str, Any]],
    *,
    max_pixels: int | None = None,
    batch_size: int = 8,
) -> list[float]:
    """Mean cross-entropy over each sample's answer tokens (the training loss, per sample)."""
    collator = BatchCollator(processor, (), max_pixels=max_pixels)
    device, dtype = model_device_dtype(model)
    losses: list[float] = []
    with padding_side(processor, "right"), eval_mode(model), torch.no_grad():
        for start in range(0, len(decoded), batch_size):
            chunk = decoded[start : start + batch_size]
            batch = collate(processor, collator.samples(chunk), **collator.processor_kwargs)
            labels = batch.pop("labels").to(device)
            logits = model(**to_model(batch, device, dtype)).logits.float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
            ce = torch.nn.functional.cross_entropy(
                shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none"
            )
            mask = (shift_labels != -100).float()
            losses.extend((ce * mask).sum(1).div(mask.sum(1).clamp(min=1)).tolist())
    return losses


def evaluate_base(
    model: torch.nn.Module,
    processor: Any,
    shards: str,
    *,
    num_samples: int,
    max_new_tokens: int = 16,
    max_pixels: int | None = None,
    batch_size: int = 8,
    trust_index_urls: bool = False,
) -> dict[str, Any]:
    """Per-task exact match (greedy answer == reference), answer loss, and how much of that loss the image
    explains (`image_gain`: the loss with a blank screen minus the loss with the real one)."""
    # Read one sample per batch (in index order): any set size works, no tail sample is dropped.
    reader = ShardReader.from_path(shards, 1, shuffle_buffer=0, shuffle_shards=False,
                                   trust_index_urls=trust_index_urls)  # fmt: skip
    decoded: list[dict[str, Any]] = []
    for batch in ShardStream(reader):
        decoded.extend(batch["samples"])
        if len(decoded) >= num_samples:
            break
    decoded = decoded[:num_samples]
    if not decoded:
        raise ImageLoRAError(f"no usable held-out sample in {shards}")
    answers = answer_samples(model, processor, decoded, max_new_tokens=max_new_tokens, max_pixels=max_pixels,
                             batch_size=batch_size)  # fmt: skip
    losses = answer_losses(model, processor, decoded, max_pixels=max_pixels, batch_size=batch_size)
    # Does the model use its eyes? The same questions about a blank (uniform grey) screen of the same size:
    # a model answering from text priors alone loses nothing.
    blank = [
        d
        if d["record"].get("text_only") is True
        else {**d, "image": Image.new("RGB", d["image"].size, BLANK)}
        for d in decoded
    ]
    blank_losses = answer_losses(model, processor, blank, max_pixels=max_pixels, batch_size=batch_size)
    per_task: dict[str, dict[str, float]] = {}
    examples: dict[str, list[dict[str, str]]] = {}
    for d, answer, loss, blank_loss in zip(decoded, answers, losses, blank_losses, strict=True):
        rec = d["record"]
        stats = per_task.setdefault(
            rec["task"], {"count": 0, "correct": 0, "loss_sum": 0.0, "blank_sum": 0.0}
        )
        stats["count"] += 1
        stats["correct"] += int(answer == rec["answer"].strip())
        if rec["task"] == POINT and rec.get("bbox"):  # an exact click is luck: score it as grounding is
            stats["hits"] = stats.get("hits", 0) + grounding_hit(answer, rec)
            stats.setdefault("dists", []).append(click_distance(answer, rec))
            stats.setdefault("points", []).append(rec)
        stats["loss_sum"] += loss
        stats["blank_sum"] += blank_loss
        shown = examples.setdefault(rec["task"], [])
        if len(shown) < 3:
            shown.append({"instruction": rec["instruction"], "answer": rec["answer"], "generated": answer})
    tasks = {
        task: {
            "count": int(s["count"]),
            "accuracy": s["correct"] / s["count"],
            "answer_loss": s["loss_sum"] / s["count"],
            # answer loss on a blank screen minus on the real one: > 0 when the answer uses the image
            "image_gain": (s["blank_sum"] - s["loss_sum"]) / s["count"],
            **(_click_stats(s) if "points" in s else {}),
        }
        for task, s in sorted(per_task.items())
    }
    return {
        "eval_samples": len(decoded),
        "accuracy": sum(s["correct"] for s in per_task.values()) / len(decoded),
        "answer_loss": sum(losses) / len(losses),
        "tasks": tasks,
        "examples": examples,
    }


def score_base(cfg: RunConfig, model: torch.nn.Module, processor: Any, held_out: str) -> dict[str, Any]:
    """`evaluate_base` with the run's evaluation settings (what pretrain-base reports at its end)."""
    return evaluate_base(model, processor, held_out, num_samples=cfg.eval.num_samples or cfg.eval.synth_samples,
                         max_new_tokens=cfg.eval.max_new_tokens, max_pixels=cfg.data.max_pixels,
                         batch_size=cfg.eval.batch_size, trust_index_urls=cfg.data.trust_index_urls)  # fmt: skip


def _click_stats(stats: dict[str, Any]) -> dict[str, float]:
    """A pointing task scored as grounding: hit rate and median click distance, beside a random click's
    hit rate and the centre click's distance on the same questions."""
    chance = chance_baselines([{**r, "task": GROUNDING} for r in stats["points"]])
    return {
        "click_hit_rate": stats["hits"] / len(stats["points"]),
        "random_click_hit_rate": chance["grounding_chance"],
        "median_click_dist": statistics.median(stats["dists"]),
        "centre_click_median_dist": chance["grounding_median_dist_centre"],
    }


def _loss_curve(tracker: Any, run_id: str | None) -> list[tuple[int, float]]:
    """The training loss per step, read back from the nested MLflow run (empty without tracking)."""
    if run_id is None:
        return []
    history = tracker.client.get_metric_history(run_id, "loss")
    return sorted((int(m.step), float(m.value)) for m in history)


def _curve_summary(curve: list[tuple[int, float]], window: int = 10) -> dict[str, Any]:
    """Start and end of the loss curve (single steps and `window`-step means) and about 20 points of it."""
    if not curve:
        return {}
    losses = [v for _, v in curve]
    k = min(window, len(losses))
    every = max(1, math.ceil(len(curve) / 20))
    points = curve[::every] + ([curve[-1]] if (len(curve) - 1) % every else [])
    return {
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_window": k,
        "loss_first_mean": sum(losses[:k]) / k,
        "loss_last_mean": sum(losses[-k:]) / k,
        "loss_curve": [[s, round(v, 4)] for s, v in points],
    }


def run_pretrain(cfg: RunConfig, log: Log = print, *, use_ray: bool = True) -> PretrainResult:
    """Synthesize the data, train every parameter on Ray Train (or, without Ray, in this process), write
    `<output_dir>/base` and the report."""
    from imagelora_dist.models import load_vlm
    from imagelora_dist.tracking import Tracker
    from imagelora_dist.train.loop import load_deepspeed_template

    cfg = pretrain_config(cfg)
    if not use_ray and cfg.train.workers != 1:
        raise ImageLoRAError(
            f"train.workers={cfg.train.workers}: --no-ray trains in this process; set train.workers=1"
        )
    out = Path(cfg.output_dir)
    base, report_path, done_file = out / BASE_DIR, out / REPORT_NAME, out / DONE_NAME
    load_deepspeed_template(cfg)  # a bad DeepSpeed file fails here, before any work
    tracker = Tracker(cfg)
    tracker.check_reachable()
    shards, held_out = ensure_pretrain_shards(cfg, log)
    digest = pretrain_hash(cfg, shards)
    if done_file.exists() and base.is_dir() and report_path.exists():
        try:
            done = json.loads(done_file.read_text())
        except (OSError, json.JSONDecodeError):
            done = {}
        if done.get("config_hash") == digest:
            log(f"[pretrain] {base} exists for this config ({digest}); skipping")
            return PretrainResult(base, json.loads(report_path.read_text()), skipped=True)
    t = cfg.train
    global_batch = t.micro_batch_size * t.grad_accum * t.workers
    log(
        f"[pretrain] {cfg.model.path or cfg.model.family}: all parameters, {t.workers} workers, "
        f"{Path(t.deepspeed).name}, {t.steps} steps of {t.micro_batch_size} x {t.grad_accum} x {t.workers} "
        f"({t.steps * global_batch} samples seen, lr {t.lr:g})"
    )
    started = False
    try:
        with tracker.pipeline_run(tags={"imagelora.method": "full", "imagelora.stages": "pretrain"}):
            with tracker.stage_run("pretrain") as run_id:
                start = time.perf_counter()
                if use_ray:
                    from imagelora_dist.ray_runtime import ensure_ray
                    from imagelora_dist.train.ray_train import run_training

                    started = ensure_ray(cfg, log)
                    result = run_training(cfg, shards, mlflow_uri=tracker.uri if run_id else None,
                                          mlflow_run_id=run_id, dest=base)  # fmt: skip
                    final = dict(result.metrics or {})
                else:
                    from imagelora_dist.train.in_process import train_in_process

                    def on_step(m: dict[str, float]) -> None:
                        tracker.log_metrics(m, step=int(m["step"]))

                    final = train_in_process(cfg, shards, dest=base, log=log, on_step=on_step)
                train_s = time.perf_counter() - start
                log(f"[pretrain] trained in {train_s:.0f} s; evaluating on held-out samples")
                model, processor = load_vlm(base)
                if torch.cuda.is_available():
                    model = model.to("cuda")
                scores = score_base(cfg, model, processor, held_out)
                report = {
                    "base": str(base),
                    "family": processor_family(base),
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "steps": t.steps,
                    "global_batch": global_batch,
                    "samples_seen": t.steps * global_batch,
                    "train_seconds": round(train_s, 1),
                    "final_loss": float(final.get("loss", float("nan"))),
                    **_curve_summary(_loss_curve(tracker, run_id)),
                    **scores,
                }
                atomic_write_bytes(report_path, (json.dumps(report, indent=2) + "\n").encode())
                metrics = {
                    "pretrain_seconds": train_s,
                    "samples_per_s": report["samples_seen"] / train_s,
                    "heldout_accuracy": scores["accuracy"],
                    "heldout_answer_loss": scores["answer_loss"],
                    "parameters": float(report["parameters"]),
                    **{f"heldout_accuracy_{k}": v["accuracy"] for k, v in scores["tasks"].items()},
                    **{f"heldout_answer_loss_{k}": v["answer_loss"] for k, v in scores["tasks"].items()},
                    **{f"heldout_image_gain_{k}": v["image_gain"] for k, v in scores["tasks"].items()},
                    **{
                        f"heldout_click_hit_rate_{k}": v["click_hit_rate"]
                        for k, v in scores["tasks"].items()
                        if "click_hit_rate" in v
                    },  # fmt: skip
                }
                tracker.log_metrics(metrics)
                tracker.log_artifact(report_path, "pretrain")
                tracker.log_artifact(base / "config.json", "pretrain/base")
            tracker.log_metrics(metrics)
    finally:
        if started:
            import ray

            ray.shutdown()
    atomic_write_bytes(done_file, json.dumps({"config_hash": digest}).encode())
    tasks = ", ".join(f"{k} {v['accuracy']:.2f}" for k, v in scores["tasks"].items())
    gains = ", ".join(
        f"{k} {v['image_gain']:+.3f}" for k, v in scores["tasks"].items() if k not in TEXT_ONLY_TASKS
    )
    log(f"[pretrain] held-out exact match: {scores['accuracy']:.3f} overall; {tasks}")
    log(f"[pretrain] answer loss saved by the image (blank screen minus real): {gains}")
    for k, v in scores["tasks"].items():
        if "click_hit_rate" in v:
            log(f"[pretrain] {k} scored as grounding: {v['click_hit_rate']:.3f} of clicks hit (a random "
                f"click: {v['random_click_hit_rate']:.3f}); median distance {v['median_click_dist']:.0f} "
                f"(the centre: {v['centre_click_median_dist']:.0f}, in 1/1000 of the screen)")  # fmt: skip
    log(f"[pretrain] wrote {base} ({report['parameters']:,} parameters) and {report_path}")
    log(f"[pretrain] use it: imagelora-dist run model.path={base}")
    return PretrainResult(base, report)


def processor_family(path: Path) -> str:
    """The registry family of the checkpoint at `path` (from its config.json's model_type)."""
    from imagelora_dist.models.registry import family_for_model_type

    model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    return family_for_model_type(str(model_type)).name


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fidelity.pretrain`: exit 0 done, 2 bad config or input (one line), 1 a failed run."""
    import argparse
    import sys

    from imagelora_dist.cli import print_where_to_look
    from imagelora_dist.config import load_config
    from imagelora_dist.errors import TrainingFailed
    from imagelora_dist.offline_env import apply_offline_env

    ap = argparse.ArgumentParser(
        prog="python -m fidelity.pretrain",
        description="Synthesizes the pre-training shards on first use, trains every parameter with DeepSpeed "
        "on Ray Train (train.method full), writes <output_dir>/base as a transformers checkpoint directory "
        "with its processor, and reports held-out exact match per task. Without --config: "
        "configs/pretrain_base.yaml. Use the result with model.path=<output_dir>/base.",
    )
    ap.add_argument("--config", metavar="FILE", help=f"YAML run config (default: {SHIPPED_CONFIG.name})")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    ap.add_argument(
        "--no-ray",
        action="store_true",
        help="train in this process (one DeepSpeed worker, GPU if there is one) instead of on Ray Train: "
        "for a single machine without Ray; needs train.workers=1",
    )
    args = ap.parse_args(argv)
    apply_offline_env()
    try:
        cfg = load_config(args.config or str(SHIPPED_CONFIG), args.overrides)
        result = run_pretrain(cfg, use_ray=not args.no_ray)
    except ImageLoRAError as exc:
        print(f"pretrain: error: {exc}", file=sys.stderr)
        return 2
    except TrainingFailed as exc:
        print(f"pretrain: failed: {exc}", file=sys.stderr)
        return 1
    print(f"[pretrain-base] done: {result.base}  (fine-tune it with model.path={result.base})")
    print_where_to_look(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
