"""A study: the pipeline over methods x settings (ratios) x seeds on your data, and its report.

    imagelora-dist study SPEC [key=value ...] [--only CELL]

A study spec names a base pipeline config (the downstream task and the model, e.g. the pre-trained
tiny base), the ratios (synthesis overrides), the methods (train/selection overrides; `train.method=none`
is the zero-shot base) and the seeds. Every cell is one pipeline run in one MLflow experiment, labelled
with its ratio, method and seed (`labels.*` params); data are synthesized once per ratio and shared by
its cells. `imagelora-dist compare` then finds the labels and writes `study.md` with the table and
plots (see `write_study_report`).
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from imagelora_dist.config import RunConfig, load_config
from imagelora_dist.errors import ImageLoRAError

LABEL_KEYS = ("study", "ratio", "method", "seed")


class StudySpec(BaseModel):
    """What to run: a base config and the grid of ratios x methods x seeds."""

    model_config = ConfigDict(extra="forbid")

    name: str = "study"
    base: str  # a pipeline config file (relative paths: to the spec's directory)
    output_dir: str = "runs/study"
    experiment: str | None = None  # None: the study name
    overrides: list[str] = []  # applied to every cell before the grid's own
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    ratios: dict[str, list[str]] = Field(min_length=1)
    methods: dict[str, list[str]] = Field(min_length=1)
    # the spec file's own ratios and methods, in order: a `ratios=` / `methods=` override that narrows the
    # grid must not renumber the cells' report order (two ratios would both be first and interleave)
    _file_order: dict[str, list[str]] = PrivateAttr(default_factory=dict)

    def order_of(self, grid: str, key: str) -> int:
        """Where `key` stands among the spec file's `grid` ("ratios"/"methods"); keys it lacks go after."""
        listed = self._file_order.get(grid) or list(getattr(self, grid))
        return listed.index(key) if key in listed else len(listed) + list(getattr(self, grid)).index(key)


def load_spec(path: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[StudySpec, Path]:
    """Read and validate a study spec (key=value overrides on its top level); returns it and its directory."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ImageLoRAError(f"study spec {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ImageLoRAError(f"study spec {path}: expected a mapping at the top level")
    file_order = {g: list(data[g]) for g in ("ratios", "methods") if isinstance(data.get(g), dict)}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ImageLoRAError(f"study override {item!r}: expected key=value")
        data[key.strip()] = yaml.safe_load(value)
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top)"
        raise ImageLoRAError(f"study spec {path}: {where}: {err['msg']}") from None
    spec._file_order = file_order
    return spec, path.parent


def cell_config(spec: StudySpec, spec_dir: Path, ratio: str, method: str, seed: int) -> RunConfig:
    """The pipeline config of one cell (before the shared data paths are filled in)."""
    base = spec.base if Path(spec.base).is_absolute() else str(spec_dir / spec.base)
    out = Path(spec.output_dir) / ratio / method / f"seed{seed}"
    items = [
        *spec.overrides,
        *spec.ratios[ratio],
        *spec.methods[method],
        f"name={spec.name}-{ratio}-{method}-s{seed}",
        f"output_dir={out}",
        f"train.seed={seed}",
        f"data.seed={seed}",
        f"tracking.experiment={spec.experiment or spec.name}",
        *(f"labels.{k}={v}" for k, v in zip(LABEL_KEYS, (spec.name, ratio, method, seed), strict=True)),
        # the spec's order of ratios and methods, so the report lists them as the study defines them
        f"labels.order=r{spec.order_of('ratios', ratio):02d}m{spec.order_of('methods', method):02d}",
    ]
    return load_config(base, items)


def shared_data(cfg: RunConfig, spec: StudySpec, ratio: str, log: Any) -> tuple[str, str]:
    """(train, eval) shards of one ratio, synthesized once into <output_dir>/data/<ratio>."""
    from imagelora_dist.pipeline import absolute_paths, ensure_train_shards, eval_shards

    root = Path(spec.output_dir) / "data" / ratio
    data_cfg = absolute_paths(cfg.model_copy(update={"output_dir": str(root)}))
    data_cfg = data_cfg.model_copy(update={"data": data_cfg.data.model_copy(update={"train": None}),
                                           "eval": data_cfg.eval.model_copy(update={"shards": None})})  # fmt: skip
    return ensure_train_shards(data_cfg, log), eval_shards(data_cfg, log)


def run_study(spec: StudySpec, spec_dir: Path, log: Any = print, only: Sequence[str] = ()) -> list[str]:
    """Run every cell (those already done are skipped by the pipeline's own hashes); returns cell names."""
    from imagelora_dist.pipeline import run_pipeline

    names = []
    cells = [(r, m, s) for r in spec.ratios for m in spec.methods for s in spec.seeds]
    data: dict[str, tuple[str, str]] = {}
    for i, (ratio, method, seed) in enumerate(cells, 1):
        cfg = cell_config(spec, spec_dir, ratio, method, seed)
        if only and cfg.name not in only:
            continue
        if ratio not in data:
            data[ratio] = shared_data(cfg, spec, ratio, log)
        train, held_out = data[ratio]
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": train}),
                                     "eval": cfg.eval.model_copy(update={"shards": held_out})})  # fmt: skip
        log(f"[study] cell {i}/{len(cells)}: {cfg.name}")
        run_pipeline(cfg, log=log)
        names.append(cfg.name)
    return names


# ---- the report ---------------------------------------------------------------------------------------

REPORT_METRICS = {  # report column -> metric names, parent run first, then its stage runs
    "accuracy": ("grounding_accuracy",),
    "dist": ("grounding_median_dist",),
    "referring": ("referring_exact_match",),
    "ref_type": ("referring_type_accuracy",),
    "ref_text": ("referring_text_accuracy",),
    "params": ("trainable_params",),
    "flops": ("adapter_train_flops",),
    "step_s": ("final_step_time_s",),
    "text_dlogit": ("text_max_abs_logit_diff",),
    "text_acc": ("text_task_accuracy",),
    "text_acc_base": ("text_task_accuracy_base",),
    # What an image-blind answer scores on the cell's held-out questions (one row per ratio in the report)
    "chance_acc": ("grounding_chance",),
    "chance_dist": ("grounding_median_dist_centre",),
    "chance_ref": ("referring_chance",),
    "chance_ref_type": ("referring_type_chance",),
    "chance_ref_text": ("referring_text_chance",),
}
CHANCE_COLUMNS = {"accuracy": "chance_acc", "dist": "chance_dist", "referring": "chance_ref",
                  "ref_type": "chance_ref_type", "ref_text": "chance_ref_text"}  # fmt: skip
CHANCE_METHOD = "chance (image-blind)"
TRAIN_COLUMNS = ("params", "flops", "step_s")  # the training stage's figures (the rest: evaluation)
# Computed from the training stage's loss curve (how far each cell fitted the task): the mean training loss
# of its first LOSS_HEAD and of its last LOSS_TAIL steps.
LOSS_COLUMNS = ("loss_start", "loss_end")
LOSS_HEAD, LOSS_TAIL = 5, 10


def study_rows(tracking_uri: str, experiment: str) -> list[dict[str, Any]]:
    """One row per cell (the newest finished, labelled pipeline run of each study/ratio/method/seed)."""
    from imagelora_dist.run_queries import (
        all_runs,
        children_by_parent,
        descendants,
        experiment_id,
        first_metric,
        open_client,
    )
    from imagelora_dist.tracking import PARENT_TAG

    client = open_client(tracking_uri)
    runs = all_runs(client, experiment_id(client, experiment))
    children = children_by_parent(runs)
    by_cell: dict[tuple[Any, ...], list[Any]] = {}
    for run in runs:  # newest first
        params = run.data.params
        if run.data.tags.get(PARENT_TAG) or "labels.ratio" not in params or run.info.status != "FINISHED":
            continue
        by_cell.setdefault(tuple(params.get(f"labels.{k}") for k in LABEL_KEYS), []).append(run)
    rows = []
    for cell_runs in by_cell.values():
        # The newest run of a cell counts (a study edited and re-run).
        newest = cell_runs[0]
        stages = descendants(newest.info.run_id, children)
        row: dict[str, Any] = {k: newest.data.params.get(f"labels.{k}") for k in (*LABEL_KEYS, "order")}
        row["run_id"] = newest.info.run_id
        row.update({col: first_metric(names, newest, stages) for col, names in REPORT_METRICS.items()})
        row["loss_start"], row["loss_end"] = _loss_window(client, stages)
        if _train_skipped(stages):
            # Its adapter came from the newest older run that trained it: that run's training figures.
            for older in cell_runs[1:]:
                older_stages = descendants(older.info.run_id, children)
                if _train_skipped(older_stages) or not any(s.info.run_name == "train" for s in older_stages):
                    continue
                for col in TRAIN_COLUMNS:
                    if row[col] is None:
                        row[col] = first_metric(REPORT_METRICS[col], older, older_stages)
                if row["loss_start"] is None:
                    row["loss_start"], row["loss_end"] = _loss_window(client, older_stages)
                break
        if row["params"] is None and newest.data.params.get("train.method") == "none":
            row["params"] = row["flops"] = 0.0
        rows.append(row)
    return rows


def _train_skipped(stages: list[Any]) -> bool:
    """Whether the run's train stage reused an adapter trained by an earlier run."""
    return any(s.info.run_name == "train" and s.data.tags.get("imagelora.skipped") == "true" for s in stages)


def _loss_window(client: Any, stages: list[Any]) -> tuple[float | None, float | None]:
    """Mean training loss of the first LOSS_HEAD and the last LOSS_TAIL steps (None, None without training)."""
    for stage in sorted(stages, key=lambda r: r.info.run_name != "train"):  # the train stage first
        if "loss" in stage.data.metrics:
            history = sorted((m.step, m.value) for m in client.get_metric_history(stage.info.run_id, "loss"))
            values = [v for _, v in history]
            if values:
                return statistics.fmean(values[:LOSS_HEAD]), statistics.fmean(values[-LOSS_TAIL:])
    return None, None


def _mean_spread(values: list[float]) -> tuple[float, float] | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows grouped by (ratio, method) in the study's order: mean and spread (sample std) over seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    # a ratio's rows stay together even where runs of an older narrowed study share an order number
    first: dict[str, str] = {}
    for r in rows:
        first[r["ratio"]] = min(first.get(r["ratio"], "~"), str(r.get("order"))[:3])
    for row in sorted(
        rows,
        key=lambda r: (
            first[r["ratio"]],
            str(r["ratio"]),
            str(r.get("order")),
            str(r["method"]),
            str(r["seed"]),
        ),
    ):
        groups.setdefault((row["ratio"], row["method"]), []).append(row)
    out = []
    for (ratio, method), members in groups.items():
        s: dict[str, Any] = {"ratio": ratio, "method": method, "seeds": len(members)}
        for col in (*REPORT_METRICS, *LOSS_COLUMNS):
            s[col] = _mean_spread([m[col] for m in members])
        out.append(s)
    return _with_chance_rows(out)


def _with_chance_rows(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A `chance (image-blind)` row ahead of each ratio whose cells logged the baselines of their questions."""
    out: list[dict[str, Any]] = []
    for s in summary:
        if out and out[-1]["ratio"] == s["ratio"]:
            out.append(s)
            continue
        cells = [c for c in summary if c["ratio"] == s["ratio"]]
        if any(c.get("chance_acc") or c.get("chance_ref") for c in cells):
            chance: dict[str, Any] = {"ratio": s["ratio"], "method": CHANCE_METHOD, "seeds": "-"}
            chance.update({col: None for col in (*REPORT_METRICS, *LOSS_COLUMNS)})
            for col, source in CHANCE_COLUMNS.items():
                # The cells of a ratio share one held-out set: their baselines agree; no spread to show.
                means = [c[source][0] for c in cells if c.get(source)]
                chance[col] = (statistics.fmean(means), 0.0) if means else None
            out.append(chance)
        out.append(s)
    return out


def _fmt(ms: tuple[float, float] | None, pct: bool = False, digits: int = 3) -> str:
    if ms is None:
        return "-"
    mean, spread = ms
    if pct:
        return f"{100 * mean:.1f} ± {100 * spread:.1f}"
    if abs(mean) >= 1000:
        return f"{mean:,.0f}"
    return f"{mean:.{digits}g}"


def _fmt_dist(ms: tuple[float, float] | None) -> str:
    return "-" if ms is None else f"{ms[0]:.0f} ± {ms[1]:.0f}"


def _fmt_parts(a: tuple[float, float] | None, b: tuple[float, float] | None) -> str:
    if a is None and b is None:
        return "-"
    return " / ".join("-" if m is None else f"{100 * m[0]:.0f}" for m in (a, b))


def render_study_md(summary: list[dict[str, Any]], experiment: str, plots: Sequence[str]) -> str:
    """Markdown: the table (accuracy ± spread over seeds, costs, text task before/after) and the plots."""
    lines = [
        f"# Study `{experiment}`",
        "",
        "Generated by `imagelora-dist compare` from the study's MLflow runs: mean ± sample std over seeds.",
        "`text Δlogit` = largest change of any text-only logit with vs without the adapter (0 = bit-identical);",
        "`text acc` = the arithmetic text task (GSM8K stand-in) with the adapter / without it;",
        f"`train loss` = mean training loss of the first {LOSS_HEAD} -> the last {LOSS_TAIL} steps (± over seeds).",
        "`click dist` = median distance of a grounding click from the target's centre, in 1/1000 of the screen",
        "(no point in the answer: 1414, the diagonal); `type / text` = referring answers with the right",
        "`type` (before the ':') / the right `text` (after it).",
        f"`{CHANCE_METHOD}` = the same questions answered blind: a uniformly random click (accuracy), always",
        "the screen centre (click dist), the most frequent referring answer, type and text (EM, type / text).",
        "",
        "| ratio | method | seeds | grounding acc % | click dist | referring EM % | type / text % | "
        "trainable params | adapter FLOPs | step s | train loss | text Δlogit | text acc % (after / before) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for s in summary:
        text_acc = f"{_fmt(s['text_acc'], pct=True)} / {_fmt(s['text_acc_base'], pct=True)}"
        if s["text_acc"] is None and s["text_acc_base"] is None:
            text_acc = "-"
        loss = "-"
        if s["loss_start"] is not None and s["loss_end"] is not None:
            loss = f"{s['loss_start'][0]:.2f} -> {s['loss_end'][0]:.2f} ± {s['loss_end'][1]:.2f}"
        lines.append(
            f"| {s['ratio']} | {s['method']} | {s['seeds']} | {_fmt(s['accuracy'], pct=True)} | "
            f"{_fmt_dist(s['dist'])} | {_fmt(s['referring'], pct=True)} | {_fmt_parts(s['ref_type'], s['ref_text'])} | {_fmt(s['params'])} | {_fmt(s['flops'])} | {_fmt(s['step_s'])} | "
            f"{loss} | {_fmt(s['text_dlogit'])} | {text_acc} |"
        )
    lines.append("")
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({Path(plot).name})", ""]
    return "\n".join(lines)


def render_plots(summary: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """accuracy_vs_flops.png (log x) and accuracy_by_ratio.png (bars with seed spread)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    ratios = list(dict.fromkeys(s["ratio"] for s in summary))
    chance = {s["ratio"]: s["accuracy"] for s in summary if s["method"] == CHANCE_METHOD}
    summary = [s for s in summary if s["method"] != CHANCE_METHOD]
    methods = list(dict.fromkeys(s["method"] for s in summary))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for ratio in ratios:
        pts = [
            s for s in summary if s["ratio"] == ratio and s["accuracy"] and s["flops"] and s["flops"][0] > 0
        ]
        ax.errorbar([p["flops"][0] for p in pts], [100 * p["accuracy"][0] for p in pts],
                    yerr=[100 * p["accuracy"][1] for p in pts], fmt="o", capsize=3, label=ratio)  # fmt: skip
        for p in pts:
            ax.annotate(p["method"], (p["flops"][0], 100 * p["accuracy"][0]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("adapter-only training FLOPs per micro-batch")
    ax.set_ylabel("grounding accuracy (%)")
    ax.legend(title="text:image ratio")
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out_dir / "accuracy_vs_flops.png"))
    fig, axes = plt.subplots(1, len(ratios), figsize=(4 * len(ratios), 4), sharey=True, squeeze=False)
    for ax, ratio in zip(axes[0], ratios, strict=True):
        vals = {s["method"]: s["accuracy"] for s in summary if s["ratio"] == ratio}
        xs = [m for m in methods if vals.get(m)]
        ax.bar(range(len(xs)), [100 * vals[m][0] for m in xs], yerr=[100 * vals[m][1] for m in xs], capsize=3)
        ax.set_xticks(range(len(xs)), xs, rotation=45, ha="right", fontsize=8)
        if chance.get(ratio):
            ax.axhline(
                100 * chance[ratio][0], color="grey", linestyle="--", linewidth=1, label="random click"
            )
            ax.legend(fontsize=7)
        ax.set_title(ratio)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("grounding accuracy (%)")
    paths.append(_save(fig, out_dir / "accuracy_by_ratio.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _head_heatmap(tracking_uri: str, rows: list[dict[str, Any]], out_dir: Path) -> Path | None:
    """The probe's head heatmap of one image_lora cell, copied next to the report."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    for row in rows:
        run = client.get_run(row["run_id"])
        if run.data.params.get("train.method") != "image_lora":
            continue
        for child in client.search_runs(
            [run.info.experiment_id], f"tags.mlflow.parentRunId = '{row['run_id']}'"
        ):
            hit = [n for n in _artifact_files(client, child.info.run_id) if n.endswith("head_heatmap.png")]
            if hit:
                local = client.download_artifacts(child.info.run_id, hit[0], str(out_dir))
                dest = out_dir / "head_heatmap.png"
                if Path(local) != dest:
                    shutil.move(local, dest)
                return dest
    return None


def _artifact_files(client: Any, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file of a run (MLflow lists one folder level at a time)."""
    files = []
    for item in client.list_artifacts(run_id, path):
        files.extend(_artifact_files(client, run_id, item.path) if item.is_dir else [item.path])
    return files


def write_study_report(tracking_uri: str, experiment: str, out_dir: str | os.PathLike) -> Path | None:
    """Write out_dir/study.md and its plots when the experiment holds labelled study runs; else None."""
    rows = study_rows(tracking_uri, experiment)
    if not rows:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    plots = [str(p) for p in render_plots(summary, out)]
    heatmap = _head_heatmap(tracking_uri, rows, out)
    if heatmap is not None:
        plots.append(str(heatmap))
    path = out / "study.md"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(render_study_md(summary, experiment, plots) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def study_command(spec_path: str, overrides: Sequence[str] = (), only: Sequence[str] = ()) -> int:
    """`imagelora-dist study SPEC [key=value ...] [--only CELL]`: run the study's cells, say how to report."""
    spec, spec_dir = load_spec(spec_path, overrides)
    names = run_study(spec, spec_dir, only=only)
    print(f"[study] {len(names)} cells done; report: imagelora-dist compare --config {spec.base} "
          f"tracking.experiment={spec.experiment or spec.name} --out reports")  # fmt: skip
    return 0
