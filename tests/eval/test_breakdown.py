"""Eval in the native answer formats, and the accuracy per data source x element type (ScreenSpot style)."""

from __future__ import annotations

import io
import json
import math

import pytest
from PIL import Image

from imagelora_dist.data.answer_formats import model_image_size
from imagelora_dist.data.reader import ShardReader, make_loader
from imagelora_dist.data.shards import ShardIndex, write_shard
from imagelora_dist.eval import evaluate, grounding_hit
from imagelora_dist.eval.breakdown import breakdown_table, cells, group_metrics, group_name, record_group
from imagelora_dist.eval.metrics import click_distance
from imagelora_dist.models import build_tiny_vlm

# (data_source, element_type, correct) of the six grounding records below; the last one has no
# data_source, so its group is its `source`.
OUTCOMES = [
    ("mobile", "text", True),
    ("mobile", "text", False),
    ("mobile", "icon", True),
    ("web", "icon", True),
    ("web", "icon", False),
    (None, "icon", True),
]


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (230, 230, 230)).save(buf, format="PNG")
    return buf.getvalue()


def _write_dataset(path) -> list[dict]:
    """One shard of ScreenSpot-like grounding records (and one referring record), as `shard` writes them."""
    records = []
    for i, (source, etype, _) in enumerate(OUTCOMES):
        record = {
            "id": f"g{i}", "task": "grounding", "instruction": f"Click target {i}.", "answer": "(0, 0)",
            "bbox": [40 + 10 * i, 30, 120 + 10 * i, 70], "point": [80 + 10 * i, 50], "element_type": etype,
            "element_text": "", "width": 400, "height": 300, "source": "screenspot_web.json",
            "application": "shop",
        }  # fmt: skip
        if source is not None:
            record["data_source"] = source
        records.append(record)
    records.append(
        {"id": "r0", "task": "referring", "instruction": "What is in the box (1, 2, 3, 4)?", "answer": "icon",
         "bbox": [4, 6, 12, 10], "point": [8, 8], "element_type": "icon", "element_text": "", "width": 400,
         "height": 300, "source": "synth"}
    )  # fmt: skip
    samples = [{"__key__": r["id"], "png": _png(400, 300), "json": r} for r in records]
    info = write_shard(path / "test-000000.tar", samples)
    ShardIndex([info]).write(path)
    return records


def test_group_names_are_valid_mlflow_metric_names():
    validation = pytest.importorskip("mlflow.utils.validation")
    assert group_name("Desktop App") == "Desktop_App"
    assert group_name("a/b") == "a_b"
    assert group_name("web") == "web"
    assert group_name("screenspot_v2.json") == "screenspot_v2.json"
    assert group_name(None) == group_name("") == group_name("..") == group_name("/") == "unknown"
    assert group_name("all") == "all_"  # `all` marks the totals
    assert group_name("écran: ☃") == "_cran_"
    assert record_group({"source": "synth", "element_type": "button"}) == ("synth", "button")
    assert record_group({"data_source": "mobile", "source": "x", "element_type": "icon"}) == (
        "mobile",
        "icon",
    )
    weird = [(("a/b", "..")), (("Desktop App", "x:y")), ((" ", "all"))]
    names = group_metrics(((group_name(s), group_name(t)), True) for s, t in weird)
    for name in names:
        validation._validate_metric_name(name)


def test_group_metrics_by_hand():
    outcomes = [((s or "screenspot_web.json", t), ok) for s, t, ok in OUTCOMES]
    m = group_metrics(outcomes)
    assert m["grounding_acc/mobile/text"] == 0.5 and m["grounding_count/mobile/text"] == 2
    assert m["grounding_acc/mobile/icon"] == 1.0 and m["grounding_count/mobile/icon"] == 1
    assert m["grounding_acc/web/icon"] == 0.5 and m["grounding_count/web/icon"] == 2
    assert m["grounding_acc/screenspot_web.json/icon"] == 1.0
    # Totals: a source's every type, a type's every source (micro).
    assert m["grounding_acc/mobile/all"] == pytest.approx(2 / 3) and m["grounding_count/mobile/all"] == 3
    assert m["grounding_acc/all/icon"] == pytest.approx(3 / 4) and m["grounding_count/all/icon"] == 4
    assert m["grounding_acc/all/text"] == 0.5
    # Macro: the mean of the four groups' accuracies.
    assert m["grounding_acc_macro"] == pytest.approx((0.5 + 1.0 + 0.5 + 1.0) / 4)
    assert group_metrics([]) == {}


def test_evaluate_native_format_and_breakdown(tmp_path, monkeypatch):
    """qwen25_abs prompts and gold answers on the image the model sees; each group scored as planned."""
    import imagelora_dist.eval.run as run_mod

    records = _write_dataset(tmp_path)
    processor = build_tiny_vlm("qwen2_5_vl", seed=0)[1]
    budget = 200 * 200
    # 400 x 300 fits to 230 x 173 (scale sqrt(40000 / 120000)); smart_resize: 224 x 168.
    size = model_image_size(processor, 400, 300, budget)
    assert size == (224, 168)
    planned = {r["id"]: ok for r, (_, _, ok) in zip(records, OUTCOMES, strict=False)}
    prompts = []

    def fake_generate(model, proc, chunk, **kw):
        assert kw["max_new_tokens"] == 64  # raised for a native answer (eval.max_new_tokens: 24)
        out = []
        for d in chunk:
            r = d["record"]
            prompts.append(r["instruction"])
            if r["task"] == "referring":
                out.append("icon")
                continue
            x0, y0, x1, y1 = (
                v * size[0] / 400 if i % 2 == 0 else v * size[1] / 300 for i, v in enumerate(r["bbox"])
            )
            box = [round(x0), round(y0), round(x1), round(y1)] if planned[r["id"]] else [0, 0, 4, 4]
            out.append(f'The element is at ```json\n{{"bbox_2d": {box}}}\n```')
        return out

    monkeypatch.setattr(run_mod, "generate_answers", fake_generate)
    reader = ShardReader.from_path(tmp_path, batch_size=7, shuffle_shards=False, shuffle_buffer=0)
    samples = (s for batch in make_loader(reader) for s in batch["samples"])
    result = evaluate(
        None,
        processor,
        samples,
        max_pixels=budget,
        batch_size=3,
        max_new_tokens=24,
        answer_format="qwen25_abs",
    )

    grounding_prompts = [p for p in prompts if p.startswith("Click")]
    assert len(grounding_prompts) == 6
    assert all(p.endswith("Output its bbox coordinates in JSON format.") for p in grounding_prompts)
    assert "What is in the box (1, 2, 3, 4)?" in prompts  # referring prompts stay as stored
    assert result["grounding_count"] == 6 and result["grounding_accuracy"] == pytest.approx(4 / 6)
    assert result["referring_exact_match"] == 1.0
    assert result["grounding_acc/mobile/text"] == 0.5
    assert result["grounding_acc/web/icon"] == 0.5
    assert result["grounding_acc/screenspot_web.json/icon"] == 1.0  # no data_source: its source
    assert result["grounding_acc_macro"] == pytest.approx(0.75)
    preds = {p["id"]: p for p in result["predictions"]}
    assert preds["g0"]["data_source"] == "mobile" and preds["g0"]["element_type"] == "text"
    assert preds["g0"]["answer"].startswith('{"bbox_2d": [')
    assert "data_source" not in preds["r0"]
    # Everything numeric is a float or an int: the pipeline logs exactly these to MLflow.
    json.dumps(result)


def test_grounding_hit_and_distance_in_absolute_pixels():
    record = {"bbox": [100, 200, 300, 260], "width": 1920, "height": 1080}
    size = (1316, 728)  # see tests/data/test_answer_formats.py
    # x = 300 px is 205.6 px on the resized image: 205 lands inside, 207 outside.
    assert grounding_hit('{"point_2d": [205, 150]}', record, "qwen25_abs", size)
    assert not grounding_hit('{"point_2d": [207, 150]}', record, "qwen25_abs", size)
    assert not grounding_hit("(150, 200)", record, "qwen25_abs", size)  # (150, 200) resized px: left of it
    # Distances stay in [0, 1000) coordinates of the image: the box centre (200, 230) px is (104.17, 212.96).
    centre = '{"point_2d": [137.083, 155.037]}'
    assert click_distance(centre, record, "qwen25_abs", size) == pytest.approx(0.0, abs=0.01)
    assert click_distance("(104, 212)", record, "qwen2_box") == pytest.approx(
        math.hypot(0.1667, 0.963), abs=1e-3
    )
    assert click_distance("nothing", record, "qwen3_rel") == pytest.approx(1000 * math.sqrt(2))


def test_breakdown_table_screenspot_style(tmp_path, capsys):
    metrics = group_metrics([((s or "unknown", t), ok) for s, t, ok in OUTCOMES])
    metrics.update({"grounding_accuracy": 4 / 6, "grounding_count": 6})
    table = breakdown_table(metrics)
    lines = table.splitlines()
    assert lines[0] == "grounding accuracy % (samples)"
    assert lines[1].split() == ["data", "source", "icon", "text", "all"]
    rows = {line.split()[0]: line for line in lines[3:7]}
    assert list(rows) == ["mobile", "unknown", "web", "all"]
    assert rows["mobile"].split() == ["mobile", "100.0", "(1)", "50.0", "(2)", "66.7", "(3)"]
    assert rows["web"].split() == ["web", "50.0", "(2)", "-", "50.0", "(2)"]
    assert rows["all"].split() == ["all", "75.0", "(4)", "50.0", "(2)", "66.7", "(6)"]
    assert "macro average over 4 groups: 75.0%" in table
    assert "micro average over 6 samples: 66.7%" in table
    assert cells(metrics)[("mobile", "text")] == (0.5, 2)
    assert breakdown_table({"grounding_accuracy": 0.5}) == ""

    from imagelora_dist.cli import print_eval_breakdown

    report = tmp_path / "eval_report.json"
    report.write_text(json.dumps({**metrics, "predictions": [], "grounding_median_dist": float("nan")}))
    print_eval_breakdown(report)
    assert capsys.readouterr().out == table


def test_evaluate_generates_in_a_native_format_with_a_real_model(monkeypatch):
    """No stand-in: the tiny random model generates (nonsense), and every metric is still well defined."""
    import imagelora_dist.eval.run as run_mod
    from imagelora_dist.data.reader import decode_sample
    from imagelora_dist.data.synth import SynthSpec, make_sample

    monkeypatch.setattr(run_mod, "NATIVE_MIN_NEW_TOKENS", 6)  # a random model's answer: any length will do
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    spec = SynthSpec(num_samples=2, width=224, height=168, seed=3, tasks=("grounding",))
    decoded = []
    for i in range(2):
        raw = make_sample(spec, i)
        raw["json"] = json.dumps(raw["json"]).encode()
        decoded.append(decode_sample(raw))
    result = evaluate(
        model,
        processor,
        decoded,
        max_pixels=112 * 112,
        batch_size=2,
        max_new_tokens=2,
        answer_format="qwen25_abs",
    )
    assert result["grounding_count"] == 2 and 0.0 <= result["grounding_accuracy"] <= 1.0
    assert result["grounding_count/synth/all"] == 2
    assert 0.0 <= result["grounding_acc_macro"] <= 1.0
    assert all(p["answer"].startswith('{"bbox_2d": [') for p in result["predictions"])
