"""`shard` by input blocks: block cuts, screen grouping, duplicate screenshots, the manifest, re-runs,
`--verify`, and Ray Data giving the same bytes as one process."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from imagelora_dist.cli import main
from imagelora_dist.data import convert_blocks as cb
from imagelora_dist.data.convert import ConvertOptions
from imagelora_dist.data.convert_blocks import MANIFEST_NAME, BlockOptions, convert_blocks, verify
from imagelora_dist.data.ingest_blocks import block_rows, plan_blocks
from imagelora_dist.data.ingest_sources import read_rows
from imagelora_dist.data.reader import ShardReader, ShardStream, make_loader
from imagelora_dist.data.shards import INDEX_NAME, ShardIndex, read_shard_raw
from imagelora_dist.errors import ImageLoRAError

SCREENS = 5  # distinct screenshots s0..s4; s0 also appears as copy.png (same pixels, another name)


def _png(seed: int, size=(64, 48)) -> bytes:
    img = Image.new("RGB", size, (30 * seed % 256, 90, 160))
    for x in range(0, size[0], 5):
        img.putpixel((x, (x + seed) % size[1]), (255, 255, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def screens(tmp_path) -> tuple[Path, Path, list[dict]]:
    """A JSONL with 3 targets per screenshot (runs of lines per image), a copy of s0 under another name
    (re-encoded: same pixels, other bytes), a missing image, a blank line; and its image folder."""
    images = tmp_path / "img"
    images.mkdir()
    for i in range(SCREENS):
        (images / f"s{i}.png").write_bytes(_png(i))
    Image.open(io.BytesIO(_png(0))).save(images / "copy.png", optimize=True, compress_level=1)
    assert (images / "copy.png").read_bytes() != (images / "s0.png").read_bytes()
    lines: list[dict | str] = []
    for i in range(SCREENS):
        for k in range(3):
            lines.append(
                {"img_filename": f"s{i}.png", "instruction": f"click {i}.{k}", "bbox": [k, 2, 20, 30]}
            )
    lines.insert(3, {"img_filename": "copy.png", "instruction": "click copy", "bbox": [1, 1, 9, 9]})
    lines.insert(5, "")  # a blank line keeps its line number
    lines.append({"img_filename": "missing.png", "instruction": "x", "bbox": [1, 1, 5, 5]})
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return jsonl, images, [x for x in lines if isinstance(x, dict)]


def _options(rows=4, group=False, **kw) -> BlockOptions:
    return BlockOptions(ConvertOptions(**kw), block_rows=rows, group_by_screen=group)


def _raw_set(out: Path) -> list[dict]:
    return [s for info in ShardIndex.read(out).shards for s in read_shard_raw(out / info.url)]


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_blocks_cover_every_row_once_in_order(tmp_path, screens):
    jsonl, _, _ = screens
    for text in (jsonl.read_text(), jsonl.read_text().rstrip("\n")):  # with and without a final newline
        jsonl.write_text(text)
        whole = [(r.number, r.record) for r in read_rows(jsonl)]
        for rows in (1, 4, 7, 1000):
            blocks = plan_blocks(str(jsonl), rows)
            got = [(r.number, r.record) for b in blocks for r in block_rows(b)]
            assert got == whole
            assert all(b.stop - b.start <= rows for b in blocks)
    from gui_layouts import hf_parquet  # two files, row groups of 2 rows

    layout = hf_parquet(tmp_path)
    whole = [(f.name, r.number, r.record["instruction"]) for f in layout.files for r in read_rows(f)]
    for rows in (1, 3, 100):
        blocks = plan_blocks(str(layout.input), rows)
        got = [(Path(b.file).name, r.number, r.record["instruction"]) for b in blocks for r in block_rows(b)]
        assert got == whole


def test_grouped_shards_store_each_screen_once(tmp_path, screens):
    jsonl, images, lines = screens
    flat = convert_blocks(jsonl, tmp_path / "flat", _options(rows=100), image_dir=images, progress=None)
    grouped = convert_blocks(
        jsonl, tmp_path / "grouped", _options(rows=100, group=True), image_dir=images, progress=None
    )
    assert flat.written == grouped.written == len(lines) - 1  # missing.png skipped
    assert flat.duplicates == grouped.duplicates == 1  # copy.png
    assert grouped.screens == SCREENS
    samples = _raw_set(tmp_path / "grouped")
    assert len(samples) == SCREENS
    by_screen = {}
    for s in samples:
        record = json.loads(s["json"])
        by_screen[hashlib.sha256(s["png"]).hexdigest()] = [t["instruction"] for t in record["targets"]]
    # s0's screen holds its own targets and copy.png's, in input order; its image is s0's bytes
    s0 = hashlib.sha256((images / "s0.png").read_bytes()).hexdigest()
    assert by_screen[s0] == ["click 0.0", "click 0.1", "click 0.2", "click copy"]
    flat_bytes = sum(i.bytes for i in flat.index.shards)
    grouped_bytes = sum(i.bytes for i in grouped.index.shards)
    assert grouped_bytes < flat_bytes
    # the reader yields every target once, a screen's targets one after another, sharing one image
    reader = ShardReader.from_path(tmp_path / "grouped", batch_size=1, shuffle_buffer=4)
    out = [s for batch in ShardStream(reader) for s in batch["samples"]]
    assert sorted(s["record"]["instruction"] for s in out) == sorted(x["instruction"] for x in lines[:-1])
    keys = [s["screen"] for s in out]
    for key in set(keys):
        at = [i for i, k in enumerate(keys) if k == key]
        assert at == list(range(at[0], at[-1] + 1))  # consecutive
    runs = [[s["record"]["instruction"] for s in out if s["screen"] == key] for key in set(keys)]
    assert sorted(runs) == sorted(by_screen.values())  # stored order within a screen
    for batch in ShardStream(reader):
        assert len({id(s["image"]) for s in batch["samples"]}) == 1
    # the probe set keeps each sample's stored members and decodes them again later: one target each
    from imagelora_dist.data.reader import decode_sample

    kept = [s for batch in ShardStream(reader, keep_raw=True) for s in batch["samples"]]
    assert [decode_sample(s["raw"])["record"] for s in kept] == [s["record"] for s in kept]
    # eval scores every target: its decoder expands a screen into its targets too
    from imagelora_dist.eval.distributed import decode_chunk

    decoded, dropped, _ = decode_chunk([(i, raw, "") for i, raw in enumerate(samples)])
    assert sorted(d["record"]["id"] for d in decoded) == sorted(s["record"]["id"] for s in out)
    assert dropped == {}


def test_grouped_resume_skips_exactly_the_consumed_screens(tmp_path, screens):
    jsonl, images, _ = screens
    convert_blocks(jsonl, tmp_path / "g", _options(rows=3, group=True), image_dir=images, progress=None)
    reader = ShardReader.from_path(tmp_path / "g", batch_size=2, shuffle_buffer=3, seed=7)
    full = [[s["__key__"] for s in b["samples"]] for b in make_loader(reader, rank=0, world_size=1)]
    assert sum(map(len, full)) > 2 * len(full)  # batches hold several targets per screen
    for skip in range(len(full)):
        rest = [
            [s["__key__"] for s in b["samples"]]
            for b in make_loader(reader, rank=0, world_size=1, skip_batches=skip)
        ]
        assert rest == full[skip:]


def test_manifest_rerun_and_verify(tmp_path, screens, capsys):
    jsonl, images, _ = screens
    out = tmp_path / "out"
    args = ["shard", "--input", str(jsonl), "--images", str(images), "--out", str(out), "--block-rows", "4"]
    assert main(args) == 0
    first = _files(out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    shard = manifest["blocks"][1]["shards"][0]
    assert shard["sha256"] == hashlib.sha256(first[shard["url"]]).hexdigest()
    assert shard["bytes"] == len(first[shard["url"]])
    assert sum(sum(b["skipped"].values()) for b in manifest["blocks"]) == 1
    assert main(["shard", "--verify", str(out)]) == 0
    capsys.readouterr()
    names = [s["url"] for b in manifest["blocks"] for s in b["shards"]]
    broken, gone = out / names[0], out / names[2]
    broken.write_bytes(broken.read_bytes()[:-1] + b"x")
    gone.unlink()
    kept_mtime = (out / names[1]).stat().st_mtime_ns
    assert main(["shard", "--verify", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"imagelora-dist: error: {names[0]}: sha256 differs from the manifest",
        f"imagelora-dist: error: {names[2]}: missing",
    ]
    assert main(args) == 0  # converts only the two bad shards
    assert (out / names[1]).stat().st_mtime_ns == kept_mtime
    assert _files(out) == first
    assert main([*args[:-2], "--block-rows", "5"]) == 2  # other options: not mixed into this set
    assert "made from another input or with other options" in capsys.readouterr().err


def test_a_failed_run_keeps_whole_shards_and_resumes(tmp_path, screens, monkeypatch):
    jsonl, images, _ = screens
    clean = tmp_path / "clean"
    convert_blocks(jsonl, clean, _options(rows=4, group=True), image_dir=images, progress=None)
    real = cb.block_rows

    def failing(block):
        if block.index == 2:
            raise ImageLoRAError(f"{block.file}: unreadable at row {block.start}")
        return real(block)

    monkeypatch.setattr(cb, "block_rows", failing)
    out = tmp_path / "out"
    with pytest.raises(ImageLoRAError, match="unreadable at row"):
        convert_blocks(jsonl, out, _options(rows=4, group=True), image_dir=images, progress=None)
    assert not (out / INDEX_NAME).exists()  # no reader sees a partial set
    done = json.loads((out / MANIFEST_NAME).read_text())["blocks"]
    assert [b["block"]["index"] for b in done] == [0, 1, 3, 4]
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temp files left
    monkeypatch.setattr(cb, "block_rows", real)
    messages: list[str] = []
    convert_blocks(jsonl, out, _options(rows=4, group=True), image_dir=images, progress=messages.append)
    assert "(4 kept from an earlier run" in messages[0]
    assert _files(out) == _files(clean)


@pytest.mark.integration
def test_ray_data_gives_the_same_bytes_as_one_process(tmp_path, screens, local_ray):
    jsonl, images, _ = screens
    from gui_layouts import hf_parquet

    layout = hf_parquet(tmp_path)
    for source, image_dir in ((jsonl, images), (layout.input, None)):
        here, there = tmp_path / f"here-{source.name}", tmp_path / f"ray-{source.name}"
        opts = _options(rows=3, group=source == jsonl)
        convert_blocks(source, here, opts, image_dir=image_dir, progress=None)
        convert_blocks(source, there, opts, image_dir=image_dir, workers=2, use_ray=True, progress=None)
        assert _files(here) == _files(there)
        assert len(ShardIndex.read(there).shards) > 1
        assert verify(there) == (len(ShardIndex.read(there).shards), [])


def test_s3_input_and_output_match_local(tmp_path, s3_server, monkeypatch):
    """Parquet read from s3://, shards, manifest and index written to s3://: the same shards as locally."""
    import pyarrow.fs as pafs
    from gui_layouts import hf_parquet

    from imagelora_dist.data.shards import forget_filesystem

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    layout = hf_parquet(tmp_path)
    base = f"s3://mnode/ingest/{tmp_path.name}"
    forget_filesystem(base)
    fs = pafs.S3FileSystem(endpoint_override=s3_server["AWS_ENDPOINT_URL"], region="us-east-1",
                           access_key="testing", secret_key="testing")  # fmt: skip
    for f in layout.files:
        with fs.open_output_stream(f"mnode/ingest/{tmp_path.name}/hf_screenspot/data/{f.name}") as out:
            out.write(f.read_bytes())
    here = tmp_path / "here"
    convert_blocks(layout.input, here, _options(rows=2), progress=None)
    report = convert_blocks(f"{base}/hf_screenspot", f"{base}/out", _options(rows=2), progress=None)
    assert [s.url for s in report.index.shards] == [s.url for s in ShardIndex.read(here).shards]
    for s in report.index.shards:
        with fs.open_input_stream(f"mnode/ingest/{tmp_path.name}/out/{s.url}") as f:
            assert f.read() == (here / s.url).read_bytes()
    assert [s.url for s in ShardIndex.read(f"{base}/out").shards] == [s.url for s in report.index.shards]
    assert verify(f"{base}/out") == (len(report.index.shards), [])
    fs.delete_file(f"mnode/ingest/{tmp_path.name}/out/{report.index.shards[1].url}")
    assert verify(f"{base}/out")[1] == [f"{report.index.shards[1].url}: missing"]
    messages: list[str] = []
    convert_blocks(f"{base}/hf_screenspot", f"{base}/out", _options(rows=2), progress=messages.append)
    assert f"({len(report.index.shards)} kept" in messages[0]
    assert verify(f"{base}/out") == (len(report.index.shards), [])
    forget_filesystem(base)
