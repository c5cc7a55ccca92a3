"""`convert_jsonl`: GUI-grounding JSONL + image folder -> shards + index.json."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from imagelora_dist.data.convert import ConversionReport, ConvertOptions, convert_jsonl
from imagelora_dist.data.ingest_records import pixel_box
from imagelora_dist.data.shards import (
    GROUPING_FIELDS,
    INDEX_NAME,
    RECORD_FIELDS,
    ShardIndex,
    read_shard_raw,
    shard_name,
)
from imagelora_dist.data.tasks import parse_point
from imagelora_dist.errors import ImageLoRAError

# name -> (format, size)
IMAGES = {
    "a.png": ("PNG", (200, 100)),
    "sub/b.jpg": ("JPEG", (300, 200)),
    "c.webp": ("WEBP", (160, 120)),
    "disguised.png": ("JPEG", (120, 80)),  # JPEG bytes behind a .png name
}


def _image_bytes(fmt: str, size: tuple[int, int], seed: int = 0) -> bytes:
    img = Image.new("RGB", size, (40 + seed * 7 % 200, 120, 200))
    for x in range(0, size[0], 7):  # some structure so the encoders do real work
        img.putpixel((x, (x * 3 + seed) % size[1]), (255, 255, 0))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def image_dir(tmp_path) -> Path:
    root = tmp_path / "images"
    for name, (fmt, size) in IMAGES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_image_bytes(fmt, size))
    good_png = (root / "a.png").read_bytes()
    (root / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    good_jpg = (root / "sub/b.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(good_jpg[: len(good_jpg) // 2])
    (root / "garbage.png").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "secret.png").write_bytes(good_png)  # a real image just outside image_dir
    return root


def _write_jsonl(path: Path, lines: list) -> Path:
    """Dicts are dumped as JSON, strings written as they are (for blank and broken lines)."""
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return path


def _convert(tmp_path, jsonl, image_dir, out="out", messages=None, **opts) -> ConversionReport:
    sink = messages.append if messages is not None else None
    return convert_jsonl(jsonl, image_dir, tmp_path / out, ConvertOptions(**opts), progress=sink)


def _read_all(out_dir: Path) -> list[dict]:
    index = ShardIndex.read(out_dir)
    samples = []
    for info in index.shards:
        samples.extend(read_shard_raw(out_dir / info.url))
    return samples


def _records(out_dir: Path) -> dict[str, tuple[dict, dict]]:
    """id -> (json record, raw sample)."""
    out = {}
    for sample in _read_all(out_dir):
        rec = json.loads(sample["json"])
        out[rec["id"]] = (rec, sample)
    return out


def _assert_clean(out_dir: Path) -> None:
    """Only the index and the shards it lists: no temp files, no partial or stale shards."""
    index = ShardIndex.read(out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([INDEX_NAME] + [s.url for s in index.shards])
    for info in index.shards:
        path = out_dir / info.url
        assert info.bytes == path.stat().st_size
        assert info.samples == len(read_shard_raw(path))
    assert index.total_samples == len(_read_all(out_dir))


def _answer_in_box(rec: dict) -> bool:
    nx, ny = parse_point(rec["answer"])
    w, h = rec["width"], rec["height"]
    px, py = (nx + 0.5) * w / 1000, (ny + 0.5) * h / 1000
    x0, y0, x1, y1 = rec["bbox"]
    return x0 - w / 1000 <= px <= x1 + w / 1000 and y0 - h / 1000 <= py <= y1 + h / 1000


# --- the main mixed file ----------------------------------------------------------------------------


def _mixed_lines(image_dir: Path) -> tuple[list, dict[int, str]]:
    """Good and bad records (xyxy, auto-normalised) and the reason kind expected for each bad line."""
    base = {"instruction": "click it", "data_type": "button"}
    lines = [
        {**base, "img_filename": "a.png", "bbox": [20, 10, 60, 50], "id": "good-pixels"},  # 1
        "",  # 2 blank: ignored
        {**base, "img_filename": "sub/b.jpg", "bbox": [0.1, 0.25, 0.5, 0.75], "id": "good-norm"},  # 3
        {**base, "img_filename": "missing.png", "bbox": [1, 1, 5, 5]},  # 4
        {**base, "img_filename": "truncated.png", "bbox": [1, 1, 5, 5]},  # 5
        {**base, "img_filename": "garbage.png", "bbox": [1, 1, 5, 5]},  # 6
        {**base, "img_filename": "a.png", "bbox": [150, 20, 260, 60]},  # 7 outside (width 200)
        {**base, "img_filename": "a.png", "bbox": [60, 10, 20, 50]},  # 8 inverted
        {"img_filename": "a.png", "bbox": [20, 10, 60, 50]},  # 9 no instruction
        '{"img_filename": "a.png", "bbox": [1, 2, 3, 4]',  # 10 invalid JSON
        {**base, "img_filename": "../secret.png", "bbox": [1, 1, 5, 5]},  # 11 escape
        {**base, "img_filename": str(image_dir.parent / "secret.png"), "bbox": [1, 1, 5, 5]},  # 12 abs escape
        {  # 13 aliases, a JPEG named .png
            "image": "disguised.png",
            "query": "open the menu",
            "box": [10, 20, 50, 60],
            "element_type": "icon",
            "label": "Menu",
            "id": 7,
        },
        "[1, 2, 3]",  # 14 not an object
        {**base, "img_filename": "a.png", "bbox": [1, 2, 3]},  # 15 wrong arity
        {**base, "img_filename": "a.png", "bbox": [-0.5, 0, 200.6, 100], "id": "tolerance"},  # 16 clipped
        {**base, "img_filename": "a.png", "bbox": [20, 10, 60, 50], "id": "good-pixels"},  # 17 duplicate id
        {**base, "img_filename": str(image_dir / "c.webp"), "bbox": [8, 6, 80, 60], "id": "abs-inside"},  # 18
        {**base, "img_filename": "truncated.jpg", "bbox": [1, 1, 5, 5]},  # 19
        {**base, "img_filename": "a.png", "bbox": ["1", 2, 3, 4]},  # 20 non-number
        {**base, "img_filename": "a.png", "bbox": [30, 30, 30, 40]},  # 21 empty
        "   ",  # 22 blank
        {"text": "press ok", "img_path": "a.png", "bbox": [100, 40, 140, 60]},  # 23 aliases, default type
    ]
    expected = {
        4: "image not found",
        5: "unreadable image",
        6: "unreadable image",
        7: "box outside image",
        8: "empty or inverted box",
        9: "missing field",
        10: "invalid JSON",
        11: "image path escapes image_dir",
        12: "image path escapes image_dir",
        14: "not an object",
        15: "bad box",
        17: "duplicate id",
        19: "unreadable image",
        20: "bad box",
        21: "empty or inverted box",
    }
    return lines, expected


def test_mixed_file_reports_and_writes(tmp_path, image_dir):
    lines, expected = _mixed_lines(image_dir)
    jsonl = _write_jsonl(tmp_path / "screens.jsonl", lines)
    messages: list[str] = []
    report = _convert(tmp_path, jsonl, image_dir, messages=messages)

    assert [p.row for p in report.problems] == sorted(expected)
    for p in report.problems:
        assert p.reason.startswith(expected[p.row]), p
        assert (p.file, p.unit, p.element) == ("screens.jsonl", "line", None)
    assert report.skipped == len(expected)
    assert report.written == 6
    assert report.total_records == 21  # non-blank lines
    assert report.written + report.skipped == report.total_records
    assert report.exit_code == 0  # not strict

    out = tmp_path / "out"
    _assert_clean(out)
    records = _records(out)
    assert set(records) == {"good-pixels", "good-norm", "7", "tolerance", "abs-inside", "screens-23"}
    for rec, sample in records.values():
        assert list(rec) == list(RECORD_FIELDS + GROUPING_FIELDS)
        assert rec["data_source"] == "screens" and rec["application"] == ""
        assert rec["task"] == "grounding" and rec["source"] == "screens.jsonl"
        x0, y0, x1, y1 = rec["bbox"]
        assert 0 <= x0 < x1 <= rec["width"] and 0 <= y0 < y1 <= rec["height"]
        assert rec["point"] == [(x0 + x1) / 2, (y0 + y1) / 2]
        assert _answer_in_box(rec)
        assert set(sample) - {"__key__"} in ({"png", "json"}, {"jpg", "json"}, {"webp", "json"})

    def image_of(rec_id):
        _, sample = records[rec_id]
        ext = next(k for k in sample if k not in ("__key__", "json"))
        return ext, sample[ext]

    rec = records["good-pixels"][0]
    assert rec["bbox"] == [20, 10, 60, 50] and (rec["width"], rec["height"]) == (200, 100)
    assert rec["answer"] == "(200, 300)" and rec["element_type"] == "button" and rec["element_text"] == ""
    assert image_of("good-pixels") == ("png", (image_dir / "a.png").read_bytes())

    rec = records["good-norm"][0]
    assert rec["bbox"] == [30, 50, 150, 150] and (rec["width"], rec["height"]) == (300, 200)
    assert image_of("good-norm") == ("jpg", (image_dir / "sub/b.jpg").read_bytes())

    rec = records["7"][0]  # aliases; real format wins over the name
    assert rec["instruction"] == "open the menu" and rec["element_type"] == "icon"
    assert rec["element_text"] == "Menu" and rec["bbox"] == [10, 20, 50, 60]
    assert image_of("7") == ("jpg", (image_dir / "disguised.png").read_bytes())

    assert records["tolerance"][0]["bbox"] == [0, 0, 200, 100]
    assert image_of("abs-inside") == ("webp", (image_dir / "c.webp").read_bytes())
    rec = records["screens-23"][0]
    assert rec["instruction"] == "press ok" and rec["element_type"] == "element"

    index = ShardIndex.read(out)
    assert index.meta["created_by"] == "imagelora-dist shard"
    assert index.meta["source"] == "screens.jsonl" and index.meta["skipped"] == len(expected)
    assert index.meta["options"]["bbox_format"] == "xyxy"

    summary = report.summary()
    assert summary.startswith("21 records: 6 written in 1 shard, 15 skipped (")
    assert "3 unreadable image" in summary and "2 image path escapes image_dir" in summary
    assert messages[-1] == summary
    assert any(m.startswith("screens.jsonl:4: skipped: image not found") for m in messages)


def test_strict_exit_code(tmp_path, image_dir):
    lines, _ = _mixed_lines(image_dir)
    jsonl = _write_jsonl(tmp_path / "screens.jsonl", lines)
    assert _convert(tmp_path, jsonl, image_dir, out="o1", strict=True).exit_code == 1
    good = _write_jsonl(tmp_path / "good.jsonl", [lines[0]])
    report = _convert(tmp_path, good, image_dir, out="o2", strict=True)
    assert report.skipped == 0 and report.exit_code == 0


# --- box formats --------------------------------------------------------------------------------------

CASES = [  # image, pixel box
    ("a.png", (20, 10, 60, 50)),
    ("a.png", (0, 0, 200, 100)),
    ("sub/b.jpg", (30, 50, 150, 150)),
    ("c.webp", (16, 12, 48, 36)),
]


def _encode(box, size, fmt: str, norm: str) -> list[float]:
    x0, y0, x1, y1 = box
    w, h = size
    values = [x0, y0, x1 - x0, y1 - y0] if fmt == "xywh" else [x0, y0, x1, y1]
    if norm == "pixels":
        return values
    scale = 1.0 if norm == "1" else 1000.0
    return [v * scale / d for v, d in zip(values, (w, h, w, h), strict=True)]


@pytest.mark.parametrize(
    "fmt,norm,option",
    [
        ("xyxy", "pixels", "auto"),
        ("xyxy", "1", "auto"),
        ("xyxy", "1", "1"),
        ("xyxy", "1000", "1000"),
        ("xywh", "pixels", "auto"),
        ("xywh", "pixels", "pixels"),
        ("xywh", "1", "auto"),
        ("xywh", "1000", "1000"),
    ],
)
def test_box_formats_give_pixel_boxes(tmp_path, image_dir, fmt, norm, option):
    lines = [
        {"img_filename": name, "instruction": f"click {i}", "bbox": _encode(box, IMAGES[name][1], fmt, norm)}
        for i, (name, box) in enumerate(CASES)
    ]
    jsonl = _write_jsonl(tmp_path / "boxes.jsonl", lines)
    report = _convert(tmp_path, jsonl, image_dir, bbox_format=fmt, normalized=option)
    assert report.skipped == 0, report.problems
    records = _records(tmp_path / "out")
    for i, (name, box) in enumerate(CASES):
        rec = records[f"boxes-{i + 1}"][0]
        assert rec["bbox"] == pytest.approx(list(box), abs=0.01)
        assert (rec["width"], rec["height"]) == IMAGES[name][1]
        assert _answer_in_box(rec)
    assert ShardIndex.read(tmp_path / "out").meta["options"]["normalized"] == option


@settings(max_examples=60, deadline=None)
@given(
    w=st.integers(1, 4000),
    h=st.integers(1, 4000),
    fx=st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted),
    fy=st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted),
    fmt=st.sampled_from(["xyxy", "xywh"]),
    norm=st.sampled_from(["1", "1000"]),
)
def test_normalised_boxes_round_trip(w, h, fx, fy, fmt, norm):
    box = (fx[0] * w, fy[0] * h, fx[1] * w, fy[1] * h)
    if box[2] - box[0] < 0.05 or box[3] - box[1] < 0.05:
        return
    options = ConvertOptions(bbox_format=fmt, normalized=norm)
    got = pixel_box(tuple(_encode(box, (w, h), fmt, norm)), w, h, options.bbox_format, options.normalized)
    assert got == pytest.approx(box, abs=0.011)
    assert 0 <= got[0] < got[2] <= w and 0 <= got[1] < got[3] <= h


# --- sharding -----------------------------------------------------------------------------------------


def _many(tmp_path, image_dir, n: int) -> Path:
    names = list(IMAGES)
    lines = [
        {"img_filename": names[i % len(names)], "instruction": f"item {i}", "bbox": [2, 2, 40, 30]}
        for i in range(n)
    ]
    return _write_jsonl(tmp_path / "many.jsonl", lines)


def test_shards_by_max_count(tmp_path, image_dir):
    jsonl = _many(tmp_path, image_dir, 7)
    report = _convert(tmp_path, jsonl, image_dir, max_count=3, prefix="val")
    out = tmp_path / "out"
    assert [s.samples for s in report.index.shards] == [3, 3, 1]
    assert [s.url for s in report.index.shards] == [shard_name("val", i) for i in range(3)]
    _assert_clean(out)
    # Order and keys are preserved across shards.
    ids = [json.loads(s["json"])["id"] for s in _read_all(out)]
    assert ids == [f"many-{i + 1}" for i in range(7)]
    keys = [s["__key__"] for s in _read_all(out)]
    assert len(set(keys)) == 7


def test_shards_by_max_size(tmp_path, image_dir):
    jsonl = _many(tmp_path, image_dir, 9)
    one = _convert(tmp_path, jsonl, image_dir, out="one")
    assert len(one.index.shards) == 1
    max_size = 2 * 10240  # room for a few small samples each
    report = _convert(tmp_path, jsonl, image_dir, out="sized", max_size=max_size)
    assert len(report.index.shards) > 1
    for info in report.index.shards:
        assert info.bytes <= max_size or info.samples == 1
    _assert_clean(tmp_path / "sized")
    assert report.index.total_samples == 9

    # Every sample bigger than the limit still gets its own shard.
    tiny = _convert(tmp_path, jsonl, image_dir, out="tiny", max_size=1)
    assert [s.samples for s in tiny.index.shards] == [1] * 9
    _assert_clean(tmp_path / "tiny")


# --- refusals and errors ------------------------------------------------------------------------------


def test_bad_inputs_raise_one_line(tmp_path, image_dir):
    jsonl = _many(tmp_path, image_dir, 2)
    with pytest.raises(ImageLoRAError, match="nope.jsonl"):
        _convert(tmp_path, tmp_path / "nope.jsonl", image_dir)
    with pytest.raises(ImageLoRAError, match="no_images"):
        _convert(tmp_path, jsonl, tmp_path / "no_images")
    with pytest.raises(ImageLoRAError, match="bbox format"):
        ConvertOptions(bbox_format="cxcywh")
    with pytest.raises(ImageLoRAError, match="normalized"):
        ConvertOptions(normalized="100")
    array = tmp_path / "array.json"  # a JSON array is read (tests/data/test_ingest_layouts.py), but whole
    array.write_text('[{"img_filename": "a.png"},\n {"bbox": [1, 2}]')
    with pytest.raises(ImageLoRAError, match=r"array.json: invalid JSON: .*\(line 2 column"):
        _convert(tmp_path, array, image_dir)
    assert not (tmp_path / "out").exists()


def test_nothing_valid_writes_no_index(tmp_path, image_dir):
    jsonl = _write_jsonl(tmp_path / "bad.jsonl", ["not json", {"img_filename": "missing.png"}])
    with pytest.raises(ImageLoRAError, match="no valid records") as exc:
        _convert(tmp_path, jsonl, image_dir)
    assert "\n" not in str(exc.value)
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())


def test_existing_index_refused_unless_overwrite(tmp_path, image_dir):
    jsonl = _many(tmp_path, image_dir, 5)
    out = tmp_path / "out"
    _convert(tmp_path, jsonl, image_dir, max_count=1)
    assert len(ShardIndex.read(out).shards) == 5
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ImageLoRAError, match="index.json"):
        _convert(tmp_path, jsonl, image_dir, max_count=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched

    report = convert_jsonl(jsonl, image_dir, out, ConvertOptions(max_count=2), progress=None, overwrite=True)
    assert [s.samples for s in report.index.shards] == [2, 2, 1]
    _assert_clean(out)  # the old index's extra shards are gone


def test_same_input_same_bytes(tmp_path, image_dir):
    jsonl = _many(tmp_path, image_dir, 6)
    _convert(tmp_path, jsonl, image_dir, out="x", max_count=4)
    _convert(tmp_path, jsonl, image_dir, out="y", max_count=4)
    for name in [shard_name("train", 0), shard_name("train", 1), INDEX_NAME]:
        assert (tmp_path / "x" / name).read_bytes() == (tmp_path / "y" / name).read_bytes()


def test_progress_lines(tmp_path, image_dir):
    jsonl = _many(tmp_path, image_dir, 5)
    messages: list[str] = []
    convert_jsonl(
        jsonl, image_dir, tmp_path / "out", ConvertOptions(), progress=messages.append, progress_every=2
    )
    progress = [m for m in messages if "records/s" in m]
    assert len(progress) == 2 and progress[0].startswith("2 records: 2 written, 0 skipped (")
    assert messages[-1] == "5 records: 5 written in 1 shard, 0 skipped"


def test_size_estimate_matches_writer(tmp_path):
    """The converter's shard-size estimate is never below what `write_shard` produces (today: equal)."""
    from imagelora_dist.data.shards import tar_archive_size, tar_member_size, write_shard

    for n, payload in [(1, 10), (3, 5000), (5, 30000)]:
        samples = [
            {"__key__": f"{i:09d}", "png": b"x" * (payload + i), "json": {"id": str(i), "text": "é" * i}}
            for i in range(n)
        ]
        members = sum(
            tar_member_size(len(s["png"])) + tar_member_size(len(json.dumps(s["json"]).encode()))
            for s in samples
        )
        info = write_shard(tmp_path / f"s{n}.tar", samples)
        assert tar_archive_size(members) == info.bytes


def test_oversized_image_skipped(tmp_path, image_dir, monkeypatch):
    import imagelora_dist.data.ingest_records as ingest_records

    monkeypatch.setattr(ingest_records, "MAX_IMAGE_PIXELS", 200 * 100 - 1)  # a.png is 200x100
    jsonl = _write_jsonl(
        tmp_path / "big.jsonl",
        [
            {"img_filename": "a.png", "instruction": "x", "bbox": [1, 1, 9, 9]},
            {"img_filename": "c.webp", "instruction": "y", "bbox": [1, 1, 9, 9]},
        ],
    )
    report = _convert(tmp_path, jsonl, image_dir)
    assert [(p.row, p.reason.split(":")[0]) for p in report.problems] == [(1, "image too large")]
    assert report.written == 1


def test_symlink_out_of_image_dir_refused(tmp_path, image_dir):
    """A link inside image_dir is lexically inside it; where it points decides (file or folder links)."""
    (image_dir / "leak.png").symlink_to(tmp_path / "secret.png")  # a real image outside image_dir
    (image_dir / "outside").symlink_to(tmp_path, target_is_directory=True)
    (image_dir / "alias.png").symlink_to(image_dir / "a.png")  # points inside: fine
    base = {"instruction": "click it", "bbox": [1, 1, 5, 5]}
    jsonl = _write_jsonl(
        tmp_path / "links.jsonl",
        [
            {**base, "img_filename": "leak.png"},
            {**base, "img_filename": "outside/secret.png"},
            {**base, "img_filename": str(image_dir / "leak.png")},
            {**base, "img_filename": "alias.png", "id": "inside-link"},
        ],
    )
    report = _convert(tmp_path, jsonl, image_dir)
    assert [(p.row, p.reason.split(":")[0]) for p in report.problems] == [
        (1, "image path escapes image_dir"),
        (2, "image path escapes image_dir"),
        (3, "image path escapes image_dir"),
    ]
    assert report.written == 1 and list(_records(tmp_path / "out")) == ["inside-link"]
