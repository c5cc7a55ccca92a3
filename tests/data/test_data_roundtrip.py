"""synth -> shards -> reader round trip, object-store URLs through fsspec, and the data CLI commands."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from imagelora_dist.cli import main
from imagelora_dist.data.reader import Counters, ShardReader, make_loader
from imagelora_dist.data.shards import ShardIndex
from imagelora_dist.data.synth import SynthSpec, make_sample, synthesize


def _read_all(path, batch=3, workers=0):
    reader = ShardReader.from_path(path, batch, shuffle_buffer=4)
    out, counters = {}, Counters()
    for b in make_loader(reader, num_workers=workers):
        counters.add(b["stats"])
        for s in b["samples"]:
            out[s["record"]["id"]] = s
    return out, counters


def test_synth_shards_reader_round_trip(tmp_path):
    spec = SynthSpec(num_samples=12, samples_per_shard=5, width=320, height=240, seed=3)
    index = synthesize(spec, tmp_path, workers=1, progress=None)
    assert index.total_samples == 12 and len(index.shards) == 3
    got, counters = _read_all(str(tmp_path), batch=3, workers=2)
    assert counters.total == 0 and len(got) == 12
    for i in range(12):
        expected = make_sample(spec, i)
        record = expected["json"]
        sample = got[record["id"]]
        assert sample["record"] == json.loads(json.dumps(record))
        pixels = np.array(Image.open(io.BytesIO(expected["png"])).convert("RGB"))
        assert np.array_equal(np.array(sample["image"]), pixels)


def test_cli_synth_and_shard(tmp_path, capsys):
    out = tmp_path / "synth"
    args = [
        "synth",
        "--out",
        str(out),
        "--workers",
        "1",
        "data.synth.num_samples=4",
        "data.synth.samples_per_shard=2",
    ]
    assert main(args) == 0
    assert ShardIndex.read(out).total_samples == 4
    assert main(args) == 2  # refuses to overwrite without --overwrite
    assert "index.json" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert main(["synth", "data.synth.width=10"]) == 2
    assert "width" in capsys.readouterr().err

    images = tmp_path / "img"
    images.mkdir()
    Image.new("RGB", (100, 80), "white").save(images / "a.png")
    lines = [
        {"img_filename": "a.png", "instruction": "click OK", "bbox": [10, 10, 30, 20], "data_type": "button"},
        {"img_filename": "missing.png", "instruction": "click OK", "bbox": [10, 10, 30, 20]},
        {"img_filename": "a.png", "instruction": "click", "bbox": [10, 10, 300, 20]},
    ]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    base = ["shard", "--jsonl", str(jsonl), "--images", str(images)]
    assert main([*base, "--out", str(tmp_path / "s1")]) == 0
    printed = capsys.readouterr().out
    assert "data.jsonl:2" in printed and "data.jsonl:3" in printed and "1 written" in printed
    assert main([*base, "--out", str(tmp_path / "s2"), "--strict"]) == 1
    assert (
        main(
            [
                "shard",
                "--jsonl",
                str(tmp_path / "nope.jsonl"),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "s3"),
            ]
        )
        == 2
    )
    assert main([*base, "--out", str(tmp_path / "s4"), "--max-size", "lots"]) == 2
