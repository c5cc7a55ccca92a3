"""Adapter save/load: round trip, strict keys, mismatched models and corrupt files fail clearly."""

from __future__ import annotations

import json

import pytest
import torch
from vlm_batches import image_batch

from imagelora_dist import (
    AdapterFormatError,
    attach_image_lora,
    build_tiny_vlm,
    load_adapter,
    resolve_model,
    save_adapter,
)
from imagelora_dist.adapter.io import CONFIG_NAME, WEIGHTS_NAME


def _trained_adapter(model, spec):
    sel = {0: [0], spec.num_layers - 1: list(range(spec.num_kv_heads))}
    handle = attach_image_lora(model, sel, rank=4, alpha=8)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in handle.modules.values():
            m.B.copy_(torch.randn(m.B.shape, generator=gen))
            m.gamma.fill_(0.3)
    return handle


def test_round_trip_gives_identical_outputs(tiny, tmp_path):
    model, processor = tiny
    spec = resolve_model(model)
    batch = image_batch(processor)
    handle = _trained_adapter(model, spec)
    with torch.no_grad():
        expected = model(**batch).logits
    save_adapter(tmp_path / "ad", handle)
    handle.detach()
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    fresh, _ = build_tiny_vlm(spec.family, seed=0)
    loaded = load_adapter(fresh, tmp_path / "ad")
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits, expected)
    cfg = json.loads((tmp_path / "ad" / CONFIG_NAME).read_text())
    assert (
        cfg["family"] == spec.family
        and cfg["rank"] == 4
        and cfg["visual_token_ids"] == list(spec.visual_token_ids)
    )
    loaded.detach()


@pytest.mark.parametrize("family", ["qwen2_5_vl"])
def test_mismatched_model_and_corrupt_files(tiny, tmp_path):
    model, _ = tiny
    spec = resolve_model(model)
    handle = _trained_adapter(model, spec)
    path = save_adapter(tmp_path / "ad", handle)
    handle.detach()

    other, _ = build_tiny_vlm("llava", seed=0)
    with pytest.raises(AdapterFormatError, match="family"):
        load_adapter(other, path)

    cfg = json.loads((path / CONFIG_NAME).read_text())
    for key, value in (
        ("head_dim", spec.head_dim * 2),
        ("image_token_id", spec.image_token_id + 1),
        ("video_token_id", None),
        ("num_kv_heads", spec.num_kv_heads + 1),
        ("num_layers", spec.num_layers + 2),
        ("hidden_size", spec.hidden_size * 2),
    ):
        (path / CONFIG_NAME).write_text(json.dumps(dict(cfg, **{key: value})))
        with pytest.raises(AdapterFormatError, match=key):
            load_adapter(model, path)
    (path / CONFIG_NAME).write_text(json.dumps(cfg))

    weights = (path / WEIGHTS_NAME).read_bytes()
    (path / WEIGHTS_NAME).write_bytes(weights[: len(weights) // 2])
    with pytest.raises(AdapterFormatError, match="corrupt"):
        load_adapter(model, path)
    (path / WEIGHTS_NAME).write_bytes(b"\x80\x04pickle-ish garbage")
    with pytest.raises(AdapterFormatError, match="corrupt"):
        load_adapter(model, path)
    (path / WEIGHTS_NAME).write_bytes(weights)

    # A selection naming a head the file has no tensor for: strict keys.
    sel = cfg["selection"]
    sel["kv_indices"]["0"] = [0, 1]
    (path / CONFIG_NAME).write_text(json.dumps(dict(cfg, selection=sel)))
    with pytest.raises(AdapterFormatError, match="missing keys"):
        load_adapter(model, path)
    (path / CONFIG_NAME).write_text("{")
    with pytest.raises(AdapterFormatError, match="corrupt JSON"):
        load_adapter(model, path)
    with pytest.raises(AdapterFormatError, match="not found"):
        load_adapter(model, tmp_path / "nowhere")
    # Failed loads leave the model untouched.
    assert not any("image_lora" in n for n, _ in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())
