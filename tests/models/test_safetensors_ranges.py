"""Range reads of a safetensors checkpoint by byte offset (models/safetensors_ranges.py), checked against
the safetensors library's own reading of the same files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models.safetensors_ranges import CheckpointTensors

TENSORS = {
    "a.weight": torch.arange(7 * 5, dtype=torch.float32).reshape(7, 5) / 3,
    "b.weight": (torch.arange(11 * 3, dtype=torch.float32).reshape(11, 3) / 7).to(torch.bfloat16),
    "c.ids": torch.arange(9, dtype=torch.int64) * -3,
    "d.scalar": torch.tensor(2.5, dtype=torch.float16),
}


@pytest.fixture
def sharded(tmp_path):
    """Two shards and the index naming them, as save_pretrained writes them."""
    save_file(
        {k: TENSORS[k] for k in ("a.weight", "d.scalar")}, str(tmp_path / "model-00001-of-00002.safetensors")
    )
    save_file(
        {k: TENSORS[k] for k in ("b.weight", "c.ids")}, str(tmp_path / "model-00002-of-00002.safetensors")
    )
    weight_map = {"a.weight": "model-00001-of-00002.safetensors", "d.scalar": "model-00001-of-00002.safetensors",
                  "b.weight": "model-00002-of-00002.safetensors", "c.ids": "model-00002-of-00002.safetensors"}  # fmt: skip
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return tmp_path


def test_every_flat_range_matches_the_library_reading(sharded):
    ckpt = CheckpointTensors(str(sharded))
    try:
        assert set(ckpt.entries) == set(TENSORS)
        for key, entry in ckpt.entries.items():
            with safe_open(str(sharded / entry.file), "pt") as f:
                whole = f.get_tensor(key)
            assert entry.shape == tuple(whole.shape) and entry.dtype == whole.dtype
            flat = whole.reshape(-1)
            for start in range(flat.numel() + 1):
                for stop in range(start, flat.numel() + 1, 4):
                    got = ckpt.read_flat(key, start, stop)
                    assert got.dtype == whole.dtype and torch.equal(got, flat[start:stop]), (key, start, stop)
            assert torch.equal(ckpt.read(key), whole)
        with pytest.raises(ValueError, match="outside"):
            ckpt.read_flat("a.weight", 30, 36)
    finally:
        ckpt.close()


def test_a_single_file_checkpoint(tmp_path):
    save_file(TENSORS, str(tmp_path / "model.safetensors"))
    ckpt = CheckpointTensors(str(tmp_path))
    assert torch.equal(ckpt.read_flat("b.weight", 10, 20), TENSORS["b.weight"].reshape(-1)[10:20])
    ckpt.close()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda p: (p / "model.safetensors").unlink(),
            "no model.safetensors or model.safetensors.index.json",
        ),
        (lambda p: (p / "model.safetensors").write_bytes(b"\x05\x00"), "not a safetensors file"),
        (
            lambda p: (p / "model.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}"),
            "header length",
        ),
        (lambda p: (p / "model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{x"), "unreadable"),
        (
            lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:-8]),
            "does not fit",
        ),
    ],
)
def test_a_damaged_checkpoint_fails_in_one_line_naming_the_file(tmp_path, damage, message):
    save_file(TENSORS, str(tmp_path / "model.safetensors"))
    damage(tmp_path)
    with pytest.raises(ImageLoRAError, match=message) as err:
        CheckpointTensors(str(tmp_path))
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_a_shard_named_by_the_index_but_missing(sharded):
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ImageLoRAError, match="model-00002-of-00002.safetensors: missing"):
        CheckpointTensors(str(sharded))
