"""`imagelora-dist compare`: one row per pipeline run of an experiment, as a text table and an HTML page,
then the grounding accuracy per data source x element type side by side (a column per run)."""

from __future__ import annotations

import html
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagelora_dist.eval.breakdown import ALL, MACRO, cells, format_cell, group_order
from imagelora_dist.run_queries import (
    all_runs,
    children_by_parent,
    descendants,
    experiment_id,
    first_metric,
    open_client,
)
from imagelora_dist.tracking import PARENT_TAG

if TYPE_CHECKING:
    from mlflow.entities import Run

COMPARE_TAG = "imagelora.compare"
METHOD_TAG = "imagelora.method"
# The pipeline logs the flattened config as params; train.method is image_lora | image_lora_all | lora.
METHOD_PARAM = "train.method"
DEFAULT_METHOD = "image_lora"

# column -> metric names tried in order (parent run first, then its stage runs).
METRICS: dict[str, tuple[str, ...]] = {
    "trainable_params": ("trainable_params",),
    "adapter_flops": ("adapter_train_flops",),
    "accuracy": ("grounding_accuracy",),
    "throughput": ("train_samples_per_s", "probe_examples_per_s"),
    "text_preservation": ("text_max_abs_logit_diff",),
}
COLUMNS = ("run", "run_id", "status", "method", *METRICS)
HEADERS = {
    "run": "run",
    "run_id": "run id",
    "status": "status",
    "method": "method",
    "trainable_params": "trainable params",
    "adapter_flops": "adapter FLOPs",
    "accuracy": "accuracy",
    "throughput": "samples/s",
    "text_preservation": "text max |dlogit|",
}
_TEXT_COLUMNS = {"run", "run_id", "status", "method"}


def _number(value: str | None) -> float | int | None:
    if value is None:
        return None
    try:
        f = float(value)
    except ValueError:
        return None
    return int(f) if f.is_integer() else f


def pipeline_runs(tracking_uri: str, experiment: str) -> list[tuple[Run, list[Run]]]:
    """Each pipeline (parent) run of `experiment`, newest first, with its stage runs (newest first)."""
    client = open_client(tracking_uri)
    runs = all_runs(client, experiment_id(client, experiment))
    children = children_by_parent(runs)
    parents = [r for r in runs if not r.data.tags.get(PARENT_TAG) and r.data.tags.get(COMPARE_TAG) != "1"]
    return [(run, descendants(run.info.run_id, children)) for run in parents]


def compare_runs(tracking_uri: str, experiment: str) -> list[dict[str, Any]]:
    """One row per pipeline (parent) run of `experiment`, newest first; missing values are None."""
    return [_row(run, stages) for run, stages in pipeline_runs(tracking_uri, experiment)]


def _row(run: Run, stages: Sequence[Run]) -> dict[str, Any]:
    """The table row of one pipeline run: its name, status, method and METRICS columns."""
    row: dict[str, Any] = {
        "run": run.info.run_name or run.info.run_id,
        "run_id": run.info.run_id[:8],
        "status": run.info.status,
        "method": run.data.params.get(METHOD_PARAM) or run.data.tags.get(METHOD_TAG) or DEFAULT_METHOD,
    }
    for column, names in METRICS.items():
        row[column] = first_metric(names, run, stages)
    for column in ("trainable_params", "adapter_flops"):
        # MLflow stores every metric as a float; counts read better (and compare exactly) as ints.
        value = row[column]
        if isinstance(value, float) and value.is_integer():
            row[column] = int(value)
    if row["trainable_params"] is None:
        row["trainable_params"] = _number(run.data.params.get("trainable_params"))
    return row


def run_groups(run: Run, stages: Sequence[Run]) -> dict[str, Any]:
    """A run's grounding accuracy per group: {"run", "run_id", "cells": (source, type) -> (accuracy, count),
    "macro": float | None}, read from its MLflow metrics (the parent's, else its stages')."""
    metrics: dict[str, float] = {}
    for r in (*reversed(stages), run):  # the parent's value wins, then the newest stage's
        metrics.update(r.data.metrics)
    table = cells(metrics)
    if table and "grounding_accuracy" in metrics:  # every sample (micro), below the groups
        table[(ALL, ALL)] = (metrics["grounding_accuracy"], int(metrics.get("grounding_count", 0)))
    return {"run": run.info.run_name or run.info.run_id, "run_id": run.info.run_id[:8],
            "cells": table, "macro": metrics.get(MACRO)}  # fmt: skip


def _breakdown_grid(columns: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the side-by-side breakdown: a row per group, then the macro average."""
    columns = [c for c in columns if c["cells"]]
    names = [c["run"] for c in columns]
    headers = ["group"] + [
        f"{n} {c['run_id']}" if names.count(n) > 1 else n for n, c in zip(names, columns, strict=True)
    ]
    keys = group_order(k for c in columns for k in c["cells"])
    rows = [
        [
            " / ".join(k) if k != (ALL, ALL) else "all (micro)",
            *(format_cell(c["cells"].get(k)) for c in columns),
        ]
        for k in keys
    ]
    rows.append(
        ["macro average", *("-" if c["macro"] is None else f"{100 * c['macro']:.1f}" for c in columns)]
    )
    return headers, rows


def render_breakdown(columns: Sequence[dict[str, Any]]) -> str:
    """Grounding accuracy % (samples) per data source / element type, a column per run (from `run_groups`);
    `all` rows are totals. Empty when no run logged groups."""
    headers, rows = _breakdown_grid(columns)
    if len(headers) == 1:
        return ""
    cells_ = [headers, *rows]
    widths = [max(len(r[i]) for r in cells_) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    out = ["grounding accuracy % (samples) by data source / element type", line(headers)]
    out += ["  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    return "\n".join(out) + "\n"


def format_value(value: Any) -> str:
    """None -> '-', whole numbers with thousands separators, other floats to 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.4g}"
    return str(value)


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    """Aligned plain-text table (text left-aligned, numbers right-aligned)."""
    cells = [[HEADERS[c] for c in COLUMNS]] + [[format_value(r.get(c)) for c in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]

    def line(values: list[str]) -> str:
        parts = [
            v.ljust(w) if c in _TEXT_COLUMNS else v.rjust(w)
            for c, v, w in zip(COLUMNS, values, widths, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(values) for values in cells[1:]]
    if not rows:
        out.append("(no pipeline runs)")
    return "\n".join(out) + "\n"


def render_html(rows: Sequence[dict[str, Any]], title: str, groups: Sequence[dict[str, Any]] = ()) -> str:
    """A self-contained HTML page (inline CSS, no scripts or external files) with the table, and the
    grounding breakdown of `groups` (from `run_groups`) when any run logged one."""
    esc = html.escape
    head = "".join(f"<th>{esc(HEADERS[c])}</th>" for c in COLUMNS)
    body = []
    for row in rows:
        tds = "".join(
            f'<td class="{"text" if c in _TEXT_COLUMNS else "num"}">{esc(format_value(row.get(c)))}</td>'
            for c in COLUMNS
        )
        body.append(f'<tr class="{esc(str(row.get("status", "")).lower())}">{tds}</tr>')
    if not rows:
        body.append(f'<tr><td colspan="{len(COLUMNS)}">no pipeline runs</td></tr>')
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;font-size:14px}"
        "th,td{border:1px solid #ccc;padding:4px 10px}"
        "th{background:#f2f2f2;text-align:left}"
        "td.num{text-align:right;font-variant-numeric:tabular-nums}"
        "tr.failed td,tr.killed td{color:#a00}"
        "p.note{color:#666;font-size:12px}"
    )
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    headers, grid = _breakdown_grid(groups)
    breakdown = ""
    if len(headers) > 1:
        head2 = "".join(f"<th>{esc(h)}</th>" for h in headers)
        body2 = "\n".join(
            "<tr>"
            + "".join(f'<td class="{"text" if i == 0 else "num"}">{esc(v)}</td>' for i, v in enumerate(r))
            + "</tr>"
            for r in grid
        )
        breakdown = (
            "<h2>Grounding accuracy % (samples) by data source / element type</h2>\n"
            f"<table>\n<thead><tr>{head2}</tr></thead>\n<tbody>\n{body2}\n</tbody>\n</table>\n"
        )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{style}</style></head>\n<body>\n<h1>{esc(title)}</h1>\n"
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>\n"
        f"{breakdown}"
        f'<p class="note">{len(rows)} pipeline run(s), newest first; "-" = not recorded. '
        f"Generated {esc(generated)}.</p>\n</body></html>\n"
    )


def compare_main(tracking_uri: str, experiment: str, out_dir: str | os.PathLike) -> Path:
    """Print the table, write out_dir/compare.html (and study.md + plots for a study's runs), and log them
    to a new "compare" run; returns the HTML path."""
    runs = pipeline_runs(tracking_uri, experiment)
    rows = [_row(run, stages) for run, stages in runs]
    groups = [run_groups(run, stages) for run, stages in runs]
    print(render_table(rows), end="", flush=True)
    breakdown = render_breakdown(groups)
    if breakdown:
        print("\n" + breakdown, end="", flush=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "compare.html"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(render_html(rows, f"{experiment}: Image-LoRA runs", groups), encoding="utf-8")
    os.replace(tmp, path)
    from imagelora_dist.study import write_study_report

    study = write_study_report(tracking_uri, experiment, out)  # only when the runs carry study labels
    if study is not None:
        print(f"[compare] wrote {study}", flush=True)

    from mlflow.tracking import MlflowClient
    from mlflow.tracking.context.registry import resolve_tags

    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = experiment_id(client, experiment)
    run = client.create_run(exp_id, tags=resolve_tags({COMPARE_TAG: "1"}), run_name="compare")
    status = "FAILED"
    try:
        client.log_artifact(run.info.run_id, str(path))
        if study is not None:
            for item in sorted(study.parent.glob("*.png")) + [study]:
                client.log_artifact(run.info.run_id, str(item), artifact_path="study")
        status = "FINISHED"
    finally:
        client.set_terminated(run.info.run_id, status=status)
    return path


__all__ = [
    "COMPARE_TAG",
    "compare_main",
    "compare_runs",
    "format_value",
    "pipeline_runs",
    "render_breakdown",
    "render_html",
    "render_table",
    "run_groups",
]
