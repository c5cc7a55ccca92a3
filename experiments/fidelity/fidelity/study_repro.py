"""Compare two runs of the same study, cell by cell: is the re-run the same?

    python -m fidelity.study_repro runs/study-shapes-fmt runs/study-shapes-fmt-rerun [--out FILE.md]

For every cell (ratio/method/seed directory with an eval_report.json in both), it compares the head
selection, the adapter tensors (bit for bit, else the largest difference) and the evaluation (grounding,
referring, text task), then prints the per-(ratio, method) means of both runs next to the first run's
seed spread. Reads only JSON and safetensors.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from safetensors.torch import load_file

METRICS = ("grounding_accuracy", "referring_exact_match", "text_task_accuracy")


def cells(root: Path) -> dict[tuple[str, str, str], Path]:
    """(ratio, method, seed) -> cell directory, for the cells with an evaluation report."""
    return {
        (p.parent.parent.parent.name, p.parent.parent.name, p.parent.name): p.parent
        for p in sorted(root.glob("*/*/seed*/eval_report.json"))
    }


def adapter_diff(a: Path, b: Path) -> float | None:
    """Largest absolute difference between the two cells' adapter tensors (None: no adapter in either)."""
    fa, fb = a / "adapter" / "adapter_model.safetensors", b / "adapter" / "adapter_model.safetensors"
    if not fa.exists() and not fb.exists():
        return None
    ta, tb = load_file(str(fa)), load_file(str(fb))
    if ta.keys() != tb.keys():
        return float("inf")
    return max((float((ta[k].float() - tb[k].float()).abs().max()) for k in ta), default=0.0)


def selection(cell: Path) -> object:
    """The cell's selected heads (None without a probe stage)."""
    path = cell / "head_selection.json"
    return json.loads(path.read_text()).get("kv_indices") if path.exists() else None


def compare(first: Path, second: Path) -> str:
    """The report as Markdown."""
    a, b = cells(first), cells(second)
    common = [k for k in a if k in b]
    if not common:
        _fail(f"no cell evaluated in both {first} and {second}")
    lines = [
        f"# Study re-run: `{second}` against `{first}`",
        "",
        f"{len(common)} cells in both ({len(a) - len(common)} only in the first, {len(b) - len(common)} only "
        "in the second).",
        "",
        "| ratio | method | seed | same heads | adapter max diff | grounding % | referring % | text task % |",
        "|---|---|---|---|---:|---|---|---|",
    ]
    identical = 0
    for key in common:
        ra, rb = (json.loads((c[key] / "eval_report.json").read_text()) for c in (a, b))
        diff = adapter_diff(a[key], b[key])
        same_eval = all(ra.get(m) == rb.get(m) for m in METRICS)
        identical += same_eval and diff in (None, 0.0)
        cols = [f"{100 * ra[m]:.1f} / {100 * rb[m]:.1f}" if m in ra and m in rb else "-" for m in METRICS]
        same_heads = "yes" if selection(a[key]) == selection(b[key]) else "**no**"
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {same_heads} | "
            f"{'-' if diff is None else f'{diff:.3g}'} | " + " | ".join(cols) + " |"
        )
    lines += ["", f"Identical cells (evaluation and adapter bit for bit): {identical} of {len(common)}.", ""]
    lines += [
        "Means over seeds (first run / re-run; ± = the first run's sample std over seeds):",
        "",
        "| ratio | method | grounding % | referring % |",
        "|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for key in common:
        groups.setdefault(key[:2], []).append(key)
    for (ratio, method), keys in groups.items():
        cols = []
        for m in METRICS[:2]:
            va = [100 * json.loads((a[k] / "eval_report.json").read_text())[m] for k in keys]
            vb = [100 * json.loads((b[k] / "eval_report.json").read_text())[m] for k in keys]
            sd = statistics.stdev(va) if len(va) > 1 else 0.0
            cols.append(f"{statistics.fmean(va):.1f} ± {sd:.1f} / {statistics.fmean(vb):.1f}")
        lines.append(f"| {ratio} | {method} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def _fail(message: str) -> None:
    print(f"study_repro: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    """Print (and optionally write) the comparison."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", type=Path, help="the first run's study output_dir")
    ap.add_argument("second", type=Path, help="the re-run's study output_dir")
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    args = ap.parse_args()
    for root in (args.first, args.second):
        if not root.is_dir():
            _fail(f"{root} is not a directory")
    text = compare(args.first, args.second)
    print(text)
    if args.out:
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(text)
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
