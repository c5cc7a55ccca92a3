"""Building the probe set counts what it skips, logs it, and stops in one line past
`data.max_dropped_fraction` (the same bound as training)."""

from __future__ import annotations

import pytest
from test_reader import _png, _record

from imagelora_dist.config import load_config
from imagelora_dist.data.drops import DataLossError
from imagelora_dist.data.probe_set import ProbeSet
from imagelora_dist.data.shards import ShardIndex, shard_name, write_shard
from imagelora_dist.models.build import build_model
from imagelora_dist.models.registry import resolve_model


def test_the_probe_set_counts_logs_and_bounds_what_it_skips(tmp_path):
    infos = []
    for s in range(2):
        samples = [
            {"__key__": f"{i:09d}", "png": _png(i, 32), "json": _record(i)} for i in range(4 * s, 4 * s + 4)
        ]
        if s == 1:
            samples[0]["png"] = b"\x89PNG\r\n\x1a\n not an image"
        infos.append(write_shard(tmp_path / shard_name("train", s), samples))
    ShardIndex(infos).write(tmp_path)
    overrides = [
        f"output_dir={tmp_path}",
        "probe.num_examples=6",
        "probe.batch_size=2",
        "data.shuffle_buffer=0",
    ]
    cfg = load_config(None, overrides)
    model, processor = build_model(cfg.model)
    spec = resolve_model(model)
    with pytest.raises(
        DataLossError, match=r"^probe set: 1 of the \d+ samples read so far were dropped \(undecodable 1\)"
    ):
        ProbeSet(cfg, processor, spec, str(tmp_path))  # the default allows no drop
    # 20% of the 6 examples it reads: the drop is within that budget, though it comes in the first batch.
    lines = []
    allowed = load_config(None, [*overrides, "data.max_dropped_fraction=0.2"])
    probe_set = ProbeSet(allowed, processor, spec, str(tmp_path), progress=lines.append)
    assert probe_set.examples == 6 and probe_set.dropped.undecodable == 1 and probe_set.dropped.total == 1
    assert probe_set.read >= 7
    assert any(line.endswith("examples, dropped undecodable 1") for line in lines), lines
