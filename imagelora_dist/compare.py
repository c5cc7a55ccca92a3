"""`imagelora-dist compare`: one row per pipeline run of an experiment, as a text table and an HTML page."""

from __future__ import annotations

import html
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    pass

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


def compare_runs(tracking_uri: str, experiment: str) -> list[dict[str, Any]]:
    """One row per pipeline (parent) run of `experiment`, newest first; missing values are None."""
    client = open_client(tracking_uri)
    runs = all_runs(client, experiment_id(client, experiment))
    children = children_by_parent(runs)
    parents = [r for r in runs if not r.data.tags.get(PARENT_TAG) and r.data.tags.get(COMPARE_TAG) != "1"]
    rows = []
    for run in parents:
        stages = descendants(run.info.run_id, children)
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
        rows.append(row)
    return rows


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


def render_html(rows: Sequence[dict[str, Any]], title: str) -> str:
    """A self-contained HTML page (inline CSS, no scripts or external files) with the table."""
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
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{style}</style></head>\n<body>\n<h1>{esc(title)}</h1>\n"
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>\n"
        f'<p class="note">{len(rows)} pipeline run(s), newest first; "-" = not recorded. '
        f"Generated {esc(generated)}.</p>\n</body></html>\n"
    )


def compare_main(tracking_uri: str, experiment: str, out_dir: str | os.PathLike) -> Path:
    """Print the table, write out_dir/compare.html (and study.md + plots for a study's runs), and log them
    to a new "compare" run; returns the HTML path."""
    rows = compare_runs(tracking_uri, experiment)
    print(render_table(rows), end="", flush=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "compare.html"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(render_html(rows, f"{experiment}: Image-LoRA runs"), encoding="utf-8")
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


__all__ = ["COMPARE_TAG", "compare_main", "compare_runs", "format_value", "render_html", "render_table"]
