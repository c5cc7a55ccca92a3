"""`shard` on GUI-grounding data as published: ScreenSpot (v1, v2, Pro), Hugging Face parquet, SeeClick
elements, point-only clicks (fixtures: tests/gui_layouts.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from gui_layouts import (
    ALL_LAYOUTS,
    Layout,
    hf_parquet,
    point_only,
    screenspot,
    screenspot_pro,
    screenspot_v2,
    seeclick,
)
from PIL import Image

from imagelora_dist.cli import main
from imagelora_dist.data.answer_formats import ANSWER_FORMATS, model_image_size, sample_text
from imagelora_dist.data.collate import BatchCollator
from imagelora_dist.data.convert import ConvertOptions, convert
from imagelora_dist.data.reader import decode_sample
from imagelora_dist.data.shards import (
    GROUPING_FIELDS,
    INDEX_NAME,
    RECORD_FIELDS,
    ShardIndex,
    read_shard_raw,
    record_application,
    record_data_source,
)
from imagelora_dist.data.tasks import parse_point
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.eval.metrics import grounding_hit
from imagelora_dist.models import build_tiny_vlm


def _samples(out: Path) -> dict[str, tuple[dict, bytes, str]]:
    """instruction -> (record, image bytes, image extension) of every sample in the dataset."""
    found = {}
    for info in ShardIndex.read(out).shards:
        for raw in read_shard_raw(out / info.url):
            ext = next(k for k in raw if k not in ("__key__", "json"))
            rec = json.loads(raw["json"])
            assert rec["instruction"] not in found
            found[rec["instruction"]] = (rec, raw[ext], ext)
    return found


def _assert_only_dataset(out: Path) -> None:
    """The index and the shards it lists, nothing else (no staging folder, no temp files)."""
    listed = [s.url for s in ShardIndex.read(out).shards]
    assert sorted(p.name for p in out.iterdir()) == sorted([INDEX_NAME, *listed])


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


# --- hand conversion of the files as written: independent of the fixtures' expectations -------------


def _by_hand(layout: Layout) -> dict[str, tuple[float, ...]]:
    """instruction -> pixel box, converted from the annotation files with each layout's documented rule."""
    out: dict[str, tuple[float, ...]] = {}
    if layout.name in ("screenspot", "screenspot_v2", "screenspot_pro"):
        for file in layout.files:
            for r in json.loads(file.read_text()):
                a, b, c, d = r["bbox"]
                out[r["instruction"]] = (a, b, a + c, b + d) if layout.bbox_format == "xywh" else (a, b, c, d)
                if layout.name == "screenspot_pro":
                    assert _size((layout.images / r["img_filename"]).read_bytes()) == tuple(r["img_size"])
    elif layout.name == "hf_parquet":
        import pyarrow.parquet as pq

        for file in layout.files:
            for r in pq.read_table(file).to_pylist():
                w, h = _size(r["image"]["bytes"])
                x0, y0, x1, y1 = r["bbox"]
                out[r["instruction"]] = (x0 * w, y0 * h, x1 * w, y1 * h)
    elif layout.name == "seeclick":
        for r in json.loads(layout.input.read_text()):
            w, h = _size((layout.images / r["img_filename"]).read_bytes())
            for e in r["elements"]:
                x0, y0, x1, y1 = e["bbox"]
                out[e["instruction"]] = (x0 * w, y0 * h, x1 * w, y1 * h)
    elif layout.name == "point_only":
        for line in layout.input.read_text().splitlines():
            r = json.loads(line)
            w, h = _size((layout.input.parent / r["image"]).read_bytes())
            x, y = r.get("point") or r.get("click")
            if x <= 1 and y <= 1:
                x, y = x * w, y * h
            dx, dy = 15 * w / 1000, 15 * h / 1000
            out[r["instruction"]] = (max(0, x - dx), max(0, y - dy), min(w, x + dx), min(h, y + dy))
    return out


@pytest.mark.parametrize("make", ALL_LAYOUTS, ids=lambda f: f.__name__)
def test_layout_converts_to_the_annotated_samples(tmp_path, make):
    layout = make(tmp_path / "src")
    report = layout.shard(tmp_path / "out")
    assert report.skipped == 0, report.problems
    assert report.written == layout.count
    _assert_only_dataset(tmp_path / "out")

    samples = _samples(tmp_path / "out")
    assert set(samples) == set(layout.expected)
    hand = _by_hand(layout)
    assert set(hand) == set(layout.expected)
    for instruction, want in layout.expected.items():
        rec, image, ext = samples[instruction]
        # `point_only` is written for point-only records alone (every record of that layout).
        flag = ["point_only"] if layout.name == "point_only" else []
        assert list(rec) == list(RECORD_FIELDS + GROUPING_FIELDS) + flag
        assert rec["bbox"] == pytest.approx(list(hand[instruction]), abs=0.01), instruction
        assert rec["bbox"] == pytest.approx(list(want.box), abs=0.01), instruction
        assert rec["point"] == pytest.approx(list(want.point), abs=0.01), instruction
        assert (rec["width"], rec["height"]) == want.size
        assert (rec["data_source"], rec["application"], rec["element_type"]) == (
            want.data_source,
            want.application,
            want.element_type,
        ), instruction
        assert image == want.image  # the source bytes, unchanged (embedded or from a file)
        assert ext == ("jpg" if want.image[:2] == b"\xff\xd8" else "png")
        assert grounding_hit(rec["answer"], rec), instruction  # the reference answer scores a hit
    ids = [rec["id"] for rec, _, _ in samples.values()]
    assert len(set(ids)) == len(ids)


def test_screenspot_one_file_per_platform(tmp_path):
    """A single platform file converts alone; its records keep their own data_source."""
    layout = screenspot(tmp_path)
    mobile = layout.files[0]
    assert mobile.name == "screenspot_mobile.json"
    report = convert(
        mobile, tmp_path / "out", ConvertOptions(bbox_format="xywh"), image_dir=layout.images, progress=None
    )
    samples = _samples(tmp_path / "out")
    assert report.written == 3 and {r["data_source"] for r, _, _ in samples.values()} == {"ios", "android"}
    assert {r["source"] for r, _, _ in samples.values()} == {"screenspot_mobile.json"}
    assert report.index.meta["files"] == ["screenspot_mobile.json"]


def test_screenspot_v2_folder_reads_every_platform_file(tmp_path):
    layout = screenspot_v2(tmp_path)
    report = layout.shard(tmp_path / "out", max_count=2)
    assert report.index.meta["files"] == [
        "screenspot_desktop_v2.json",
        "screenspot_mobile_v2.json",
        "screenspot_web_v2.json",
    ]
    assert [s.samples for s in report.index.shards] == [2, 2, 2, 1]


def test_screenspot_pro_img_size_must_match(tmp_path):
    layout = screenspot_pro(tmp_path)
    file = layout.files[1]
    records = json.loads(file.read_text())
    records[2]["img_size"] = [840, 520]  # an annotation of a larger copy of the screenshot
    file.write_text(json.dumps(records))
    report = layout.shard(tmp_path / "out")
    assert report.written == layout.count - 1
    [problem] = report.problems
    assert problem.where == "photoshop_windows.json item 2"
    assert problem.reason == "image size mismatch: img_size [840, 520] but the image is 420x260"


def test_seeclick_one_sample_per_element(tmp_path):
    layout = seeclick(tmp_path)
    layout.shard(tmp_path / "out")
    samples = _samples(tmp_path / "out")
    records = json.loads(layout.input.read_text())
    for k, screen in enumerate(records):
        ids = sorted(rec["id"] for rec, _, _ in samples.values() if rec["width"] == _SIZE_OF[k])
        assert ids == [f"seeclick_web-{k}-{i}" for i in range(len(screen["elements"]))]
    rec = samples["sign in"][0]  # the element's own point is the answer, inside its box
    assert rec["point"] == [260, 20] and parse_point(rec["answer"]) == (866, 100)


_SIZE_OF = {0: 300, 1: 240}  # seeclick screenshots' widths, by record


def test_bad_elements_are_reported_by_row_and_element(tmp_path):
    layout = seeclick(tmp_path)
    records = json.loads(layout.input.read_text())
    records[1]["elements"][0]["bbox"] = [0.5, 0.5, 0.1]
    records[1]["elements"].append("not an element")
    records.append({"img_filename": records[0]["img_filename"], "elements": []})
    layout.input.write_text(json.dumps(records))
    messages: list[str] = []
    report = convert(layout.input, tmp_path / "out", image_dir=layout.images, progress=messages.append)
    assert [(p.where, p.reason.split(":")[0]) for p in report.problems] == [
        ("seeclick_web.json item 1 elements[0]", "bad box"),
        ("seeclick_web.json item 1 elements[2]", "not an object"),
        ("seeclick_web.json item 2", "bad field"),
    ]
    assert report.written == layout.count - 1 and report.total_records == 3
    line = "seeclick_web.json item 1 elements[0]: skipped: bad box: 'bbox' must be 4 numbers, got 3 values"
    assert line in messages


def test_parquet_rows_are_numbered_per_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    layout = hf_parquet(tmp_path)
    second = layout.files[1]
    table = pq.read_table(second).to_pylist()
    table[1]["bbox"] = [0.9, 0.1, 0.2, 0.3]  # inverted
    table.append({**table[0], "image": {"bytes": b"not an image", "path": "x.png"}, "instruction": "broken"})
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(second)), second, row_group_size=2)
    report = layout.shard(tmp_path / "out")
    assert [(p.where, p.reason.split(":")[0]) for p in report.problems] == [
        ("data/test-00001-of-00002.parquet row 1", "empty or inverted box"),
        ("data/test-00001-of-00002.parquet row 2", "unreadable image"),
    ]
    assert report.written == layout.count - 1


def test_parquet_is_streamed_not_read_whole(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    def refuse(*_args, **_kwargs):
        raise AssertionError("the whole table was read")

    monkeypatch.setattr(pq, "read_table", refuse)
    monkeypatch.setattr(pq.ParquetFile, "read", refuse)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", refuse)
    layout = hf_parquet(tmp_path)
    assert layout.shard(tmp_path / "out").written == layout.count


def test_point_only_scoring(tmp_path):
    """A point-only target is the point +- 1.5% of the screen: a click there hits, one 3% away misses."""
    layout = point_only(tmp_path)
    layout.shard(tmp_path / "out")
    rec = _samples(tmp_path / "out")["press the red button"][0]  # (50, 40) in a 200x100 image
    assert rec["bbox"] == [47, 38.5, 53, 41.5] and rec["point"] == [50, 40]
    assert parse_point(rec["answer"]) == (250, 400)
    assert grounding_hit("(260, 410)", rec) and grounding_hit("(235, 385)", rec)
    assert not grounding_hit("(280, 400)", rec) and not grounding_hit("(250, 430)", rec)
    assert record_data_source(rec) == "clicks" and record_application(rec) == ""


# The point-only layout's clicks in [0, 1000) by hand: int(x * 1000 / width), int(y * 1000 / height).
_CLICKS_PER_MILLE = {
    "press the red button": (250, 400),  # (50, 40) in 200x100
    "tap the middle of the bar": (500, 250),  # (100, 25) in 200x100
    "close the dialog": (987, 8),  # (158, 2) in 160x240: 987.5 -> 987, 8.33 -> 8
}


def test_point_only_records_answer_with_their_point(tmp_path):
    """A point-only sample is flagged; every answer format trains it on the point, not on its made-up hit
    box, and scoring stays click-inside-box."""
    layout = point_only(tmp_path)
    layout.shard(tmp_path / "out")
    samples = _samples(tmp_path / "out")
    processor = build_tiny_vlm("qwen2_5_vl", seed=0)[1]
    assert set(_CLICKS_PER_MILLE) == set(layout.expected)
    for instruction, want in layout.expected.items():
        rec = samples[instruction][0]
        assert rec["point_only"] is True
        x, y = _CLICKS_PER_MILLE[instruction]
        (w, h), (px, py) = want.size, want.point
        rw, rh = model_image_size(processor, w, h, None)
        # qwen25_abs: the point on the image the model sees, rounded half up.
        ax, ay = int(px * rw / w + 0.5), int(py * rh / h + 0.5)
        expected = {
            "point": f"({x}, {y})",
            "qwen2_box": f"({x}, {y})",
            "qwen3_rel": f'{{"point_2d": [{x}, {y}]}}',
            "qwen25_abs": f'{{"point_2d": [{ax}, {ay}]}}',
        }
        for fmt in ANSWER_FORMATS:
            prompt, answer = sample_text(rec, fmt, processor)
            assert answer == expected[fmt], (instruction, fmt)
            size = (rw, rh) if fmt == "qwen25_abs" else None
            assert grounding_hit(answer, rec, fmt, size), (instruction, fmt)  # the target scores a hit
            if fmt in ("qwen25_abs", "qwen3_rel"):
                assert prompt == f"{instruction} Output its point coordinates in JSON format."
        # A click 3% of the screen left of the point misses: the hit box is only +- 1.5%.
        far = f'{{"point_2d": [{x - 30}, {y}]}}'
        assert not grounding_hit(far, rec, "qwen3_rel") and grounding_hit(
            expected["qwen3_rel"], rec, "qwen3_rel"
        )

    # The collator's label is the point too.
    shard = next((tmp_path / "out").glob("*.tar"))
    decoded = [decode_sample(raw) for raw in read_shard_raw(shard)]
    out = BatchCollator(processor, (), answer_format="qwen3_rel")(decoded)
    ids, labels = out["inputs"]["input_ids"], out["inputs"]["labels"]
    texts = [processor.tokenizer.decode(i[m != -100]) for i, m in zip(ids, labels, strict=True)]
    for d, text in zip(decoded, texts, strict=True):
        x, y = _CLICKS_PER_MILLE[d["record"]["instruction"]]
        assert text.startswith(f'{{"point_2d": [{x}, {y}]}}'), text
    assert out["malformed"] == 0 and out["num_samples"] == len(decoded)


def test_missing_grouping_fields_read_as_source():
    synthetic = {"id": "0", "source": "synth", "bbox": [0, 0, 1, 1]}
    assert record_data_source(synthetic) == "synth" and record_application(synthetic) == ""
    assert record_data_source({**synthetic, "data_source": "ios", "application": "mail"}) == "ios"


def test_failure_leaves_the_output_as_it_was(tmp_path):
    layout = screenspot(tmp_path)
    (layout.input / "screenspot_zz_broken.json").write_text('[{"img_filename": "x.png",')
    out = tmp_path / "out"
    with pytest.raises(ImageLoRAError, match=r"screenspot_zz_broken.json: invalid JSON"):
        layout.shard(out, max_count=1)  # shards of the earlier files were already cut
    assert not out.exists()

    (layout.input / "screenspot_zz_broken.json").unlink()
    layout.shard(out, max_count=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (layout.input / "screenspot_zz_broken.json").write_text("[1, 2")
    with pytest.raises(ImageLoRAError, match="invalid JSON"):
        convert(
            layout.input,
            out,
            ConvertOptions(bbox_format="xywh", max_count=2),
            image_dir=layout.images,
            progress=None,
            overwrite=True,
        )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old dataset intact, no temp files


# --- the command line -------------------------------------------------------------------------------


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("imagelora-dist: error: ")
    return err


def test_cli_converts_parquet_without_images_and_jsonl_alias(tmp_path, capsys):
    layout = hf_parquet(tmp_path)
    assert main(["shard", "--input", str(layout.input), "--out", str(tmp_path / "a")]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    # the CLI converts by input blocks, and a block never spans two files: one shard per parquet file
    assert summary == f"5 records: {layout.count} written in {len(layout.files)} shards, 0 skipped"
    clicks = point_only(tmp_path)
    assert main(["shard", "--jsonl", str(clicks.input), "--out", str(tmp_path / "b"), "--normalized"]) == 0
    assert ShardIndex.read(tmp_path / "b").meta["options"]["normalized"] == "1"


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing", "nope.parquet: input not found"),
        ("garbage", "broken.parquet: unreadable parquet"),
        ("normalized", "normalized must be one of auto, pixels, 1, 1000, got '100'"),
        ("bbox", "bbox format must be one of xyxy, xywh, got 'cxcywh'"),
        ("images", "no_such_dir: image folder not found"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, case, match):
    layout = point_only(tmp_path)
    src = str(layout.input)
    garbage = tmp_path / "broken.parquet"
    garbage.write_bytes(b"PAR1" + bytes(range(200)) + b"PAR1")
    args = {
        "missing": ["--input", str(tmp_path / "nope.parquet")],
        "garbage": ["--input", str(garbage)],
        "normalized": ["--input", src, "--normalized", "100"],
        "bbox": ["--input", src, "--bbox-format", "cxcywh"],
        "images": ["--input", src, "--images", str(tmp_path / "no_such_dir")],
    }[case]
    out = tmp_path / "out"
    assert main(["shard", *args, "--out", str(out)]) == 2
    assert match in _one_error_line(capsys)
    assert not out.exists()


def test_content_decides_the_format_whatever_the_name(tmp_path):
    """JSON Lines under another name, a JSON array named .jsonl, parquet named .bin: read by their content."""
    clicks = point_only(tmp_path)
    renamed = clicks.input.with_suffix(".ndjson")
    renamed.write_bytes(clicks.input.read_bytes())
    assert convert(renamed, tmp_path / "a", progress=None).written == clicks.count
    array = clicks.input.parent / "array.jsonl"
    array.write_text(json.dumps([json.loads(line) for line in clicks.input.read_text().splitlines()]))
    report = convert(array, tmp_path / "b", progress=None)
    assert report.written == clicks.count and {r["id"] for r, _, _ in _samples(tmp_path / "b").values()} == {
        "array-0",
        "array-1",
        "array-2",
    }
    layout = hf_parquet(tmp_path)
    shard = layout.files[0].rename(tmp_path / "export.bin")
    report = convert(shard, tmp_path / "c", progress=None)
    assert report.written == 3 and report.problems == []
    assert {r["data_source"] for r, _, _ in _samples(tmp_path / "c").values()} == {"ios", "macos"}
