"""Grounding accuracy per group, data source x element type, as ScreenSpot reports it.

A grounding record's group is its `data_source` (platform or dataset: "mobile", "web", "desktop"; the
record's `source` when it has none) and its `element_type` ("text", "icon", ...). The flat metrics below go
to `eval_report.json` and MLflow alike; `compare` reads them back from MLflow:

    grounding_acc/<source>/<type>    grounding_count/<source>/<type>    one group
    grounding_acc/<source>/all       grounding_count/<source>/all       a source, every type (micro)
    grounding_acc/all/<type>         grounding_count/all/<type>         a type, every source (micro)
    grounding_acc_macro                                                 the mean over the groups
    grounding_accuracy               grounding_count                    every sample (micro; `evaluate`)

Names are made valid MLflow metric names: every run of characters other than ASCII letters, digits, `_`,
`-` and `.` becomes one `_` (so "Desktop App" is `Desktop_App`, "a/b" is `a_b`), a missing or empty name
is `unknown`, and a name that is literally `all` becomes `all_` (`all` marks the totals). Records whose
names sanitize alike share a group.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

ALL = "all"
UNKNOWN = "unknown"
ACC = "grounding_acc"
COUNT = "grounding_count"
MACRO = "grounding_acc_macro"
MICRO = "grounding_accuracy"

_BAD = re.compile(r"[^A-Za-z0-9_.\-]+")


def group_name(value: Any) -> str:
    """A data source or element type as a metric-name component (see the module docstring)."""
    text = _BAD.sub("_", str(value).strip()) if value is not None else ""
    if not text.strip("._"):
        return UNKNOWN
    return f"{ALL}_" if text == ALL else text


def record_group(record: Mapping[str, Any]) -> tuple[str, str]:
    """(data source, element type) of a grounding record, as group names."""
    source = record.get("data_source") or record.get("source")
    return group_name(source), group_name(record.get("element_type"))


def group_metrics(outcomes: Iterable[tuple[tuple[str, str], bool]]) -> dict[str, float | int]:
    """The flat per-group metrics of ((source, type), correct) outcomes; empty when there are none."""
    tally: dict[tuple[str, str], list[int]] = {}
    for key, correct in outcomes:
        cell = tally.setdefault(key, [0, 0])
        cell[0] += int(correct)
        cell[1] += 1
    if not tally:
        return {}
    out: dict[str, float | int] = {}
    totals: dict[tuple[str, str], list[int]] = {}
    for (source, etype), (hits, count) in sorted(tally.items()):
        out[f"{ACC}/{source}/{etype}"] = hits / count
        out[f"{COUNT}/{source}/{etype}"] = count
        for key in ((source, ALL), (ALL, etype)):
            total = totals.setdefault(key, [0, 0])
            total[0] += hits
            total[1] += count
    for (source, etype), (hits, count) in sorted(totals.items()):
        out[f"{ACC}/{source}/{etype}"] = hits / count
        out[f"{COUNT}/{source}/{etype}"] = count
    out[MACRO] = sum(h / n for h, n in tally.values()) / len(tally)
    return out


WRONG_FORMAT = "grounding_wrong_format"


def group_wrong_format(flags: Iterable[tuple[tuple[str, str], bool]]) -> dict[str, int]:
    """Answers with no readable click per group (`grounding_wrong_format/<source>/<type>`, totals under
    `all`), counted apart from misses as ScreenSpot-Pro's harness does; empty when there are none."""
    tally: dict[tuple[str, str], int] = {}
    for (source, etype), wrong in flags:
        for key in ((source, etype), (source, ALL), (ALL, etype)):
            tally[key] = tally.get(key, 0) + int(wrong)
    return {f"{WRONG_FORMAT}/{s}/{t}": n for (s, t), n in sorted(tally.items())}


def cells(metrics: Mapping[str, Any]) -> dict[tuple[str, str], tuple[float, int]]:
    """(source, type) -> (accuracy, count) from flat metrics (totals under `all`); other keys ignored."""
    out: dict[tuple[str, str], tuple[float, int]] = {}
    for name, value in metrics.items():
        parts = name.split("/")
        if len(parts) != 3 or parts[0] != ACC:
            continue
        count = metrics.get(f"{COUNT}/{parts[1]}/{parts[2]}")
        out[(parts[1], parts[2])] = (float(value), int(count) if count is not None else 0)
    return out


def _order(names: Iterable[str]) -> list[str]:
    return sorted(set(names) - {ALL}) + [ALL]


def format_cell(cell: tuple[float, int] | None) -> str:
    """`accuracy % (count)`, or `-` for an empty cell."""
    if cell is None:
        return "-"
    acc, count = cell
    return f"{'nan' if math.isnan(acc) else f'{100 * acc:.1f}'} ({count})"


def breakdown_table(metrics: Mapping[str, Any]) -> str:
    """A ScreenSpot-style table of flat metrics: a row per data source, a column per element type, cells
    `accuracy % (samples)`, totals in the `all` row and column; then the macro and micro averages.
    Empty when the metrics have no groups."""
    table = cells(metrics)
    groups = {k: v for k, v in table.items() if ALL not in k}
    if not groups:
        return ""
    sources = _order(s for s, _ in groups)
    types = _order(t for _, t in groups)
    rows = [["data source", *types]]
    for source in sources:
        if source == ALL:
            table.setdefault((ALL, ALL), (float(metrics.get(MICRO, math.nan)), int(metrics.get(COUNT, 0))))
        rows.append([source, *(format_cell(table.get((source, t))) for t in types)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    macro = metrics.get(MACRO)
    if macro is not None:
        lines.append(f"macro average over {len(groups)} groups: {100 * float(macro):.1f}%")
    if metrics.get(MICRO) is not None:
        lines.append(
            f"micro average over {int(metrics.get(COUNT, 0))} samples: {100 * float(metrics[MICRO]):.1f}%"
        )
    return "grounding accuracy % (samples)\n" + "\n".join(line.rstrip() for line in lines) + "\n"


def group_order(keys: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Groups by source then type, each source's total after its types, the `all` row last."""
    keys = set(keys)
    out = []
    for source in _order(s for s, _ in keys):
        out += [(source, t) for t in _order(t for s, t in keys if s == source) if (source, t) in keys]
    return out


__all__ = [
    "ALL",
    "MACRO",
    "breakdown_table",
    "cells",
    "format_cell",
    "group_metrics",
    "group_name",
    "group_order",
    "group_wrong_format",
    "record_group",
]
