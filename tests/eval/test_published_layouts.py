"""A published benchmark layout end to end, in process and without Ray: `shard` with the real converter,
`evaluate` with a tiny untrained qwen2_5_vl in the qwen25_abs format, and the table `eval` prints."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from gui_layouts import screenspot_pro, screenspot_v2

import imagelora_dist.eval.run as eval_run
from imagelora_dist.cli import print_eval_breakdown
from imagelora_dist.eval import evaluate, shard_samples
from imagelora_dist.eval.breakdown import group_name
from imagelora_dist.models import build_tiny_vlm

MAX_PIXELS = 112 * 112
BATCH = 4  # neither fixture's sample count (7, 5) is a multiple: the last, partial batch must count too


def _table_cells(text: str) -> dict[tuple[str, str], str]:
    """(row, column) -> cell text of the printed table, cut at the columns of its dashed rule."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line) <= {"-", " "} and line)
    spans = [m.span() for m in re.finditer(r"-+", lines[rule])]
    header = [lines[rule - 1][a:b].strip() for a, b in spans]
    cells = {}
    for line in lines[rule + 1 :]:
        if line.startswith(("macro average", "micro average")):
            break
        row = [line[a:b].strip() for a, b in spans]
        for column, cell in zip(header[1:], row[1:], strict=True):
            cells[(row[0], column)] = cell
    return cells


@pytest.mark.parametrize("make", [screenspot_v2, screenspot_pro], ids=lambda f: f.__name__)
def test_published_layout_shard_eval_table(make, tmp_path, monkeypatch, capsys):
    layout = make(tmp_path / "src")
    report = layout.shard(tmp_path / "shards")
    assert report.written == layout.count and report.skipped == 0
    expected = Counter(
        (group_name(e.data_source), group_name(e.element_type)) for e in layout.expected.values()
    )
    samples = list(shard_samples(tmp_path / "shards"))
    assert len(samples) == layout.count

    # An untrained model answers noise: a few tokens are enough to exercise parsing and scoring.
    monkeypatch.setattr(eval_run, "NATIVE_MIN_NEW_TOKENS", 4)
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    result = evaluate(model, processor, iter(samples), max_pixels=MAX_PIXELS, batch_size=BATCH,
                      max_new_tokens=4, answer_format="qwen25_abs")  # fmt: skip

    assert result["grounding_count"] == layout.count and result["eval_samples"] == layout.count
    counts = {
        tuple(k.split("/")[1:]): v
        for k, v in result.items()
        if k.startswith("grounding_count/") and "all" not in k.split("/")
    }
    assert counts == dict(expected)
    for source in {s for s, _ in expected}:
        want = sum(n for (s, _), n in expected.items() if s == source)
        assert result[f"grounding_count/{source}/all"] == want
    assert 0.0 <= result["grounding_acc_macro"] <= 1.0
    # The prompt and the reference answer are in the format; each prediction carries its group.
    for p in result["predictions"]:
        assert p["answer"].startswith('{"bbox_2d": [') and p["task"] == "grounding"
    assert Counter((p["data_source"], p["element_type"]) for p in result["predictions"]) == expected

    # The eval CLI's table (`print_eval_breakdown` of eval_report.json, written as the eval stage does).
    path = tmp_path / "eval_report.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print_eval_breakdown(path)
    table = capsys.readouterr().out
    assert table.startswith("grounding accuracy % (samples)\n")
    cells = _table_cells(table)
    for (source, etype), n in expected.items():
        assert re.fullmatch(rf"\d+\.\d \({n}\)", cells[(source, etype)]), (source, etype, table)
    assert {s for s, _ in cells} == {s for s, _ in expected} | {"all"}
    assert {t for _, t in cells} == {t for _, t in expected} | {"all"}
    assert cells[("all", "all")].endswith(f"({layout.count})")
    assert f"macro average over {len(expected)} groups" in table
    assert f"micro average over {layout.count} samples" in table
