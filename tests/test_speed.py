"""The `speed:` flags: the vision-feature cache, no_grad below the lowest adapter, the attention kernel.

Each flag must leave the numbers unchanged: compared with the same model run without it.
"""

from __future__ import annotations

import pytest
import torch
from conftest import image_batch

from imagelora_dist import attach_image_lora, build_tiny_vlm
from imagelora_dist.config import load_config
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models.grad_scope import no_grad_below
from imagelora_dist.models.registry import decoder_layers
from imagelora_dist.models.vision_cache import VisionFeatureCache, attach_vision_cache
from imagelora_dist.pipeline import build_model


def _adapter_grads(model, handle, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {
        f"{i}.{n}": p.grad.clone() for i, m in handle.modules.items() for n, p in m.named_parameters()
    }


def _randomize(handle):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in handle.modules.values():
            m.B.copy_(torch.randn(m.B.shape, generator=gen) * 0.3)


def test_vision_cache_gives_identical_loss_and_grads_and_skips_the_tower(tmp_path):
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    handle = attach_image_lora(model, {1: [0], 4: [2, 3]}, rank=4)
    _randomize(handle)
    batch = image_batch(processor, n=3)
    ref_loss, ref_grads = _adapter_grads(model, handle, batch)

    calls = []
    model.model.visual.register_forward_hook(lambda *a: calls.append(1))
    cache = VisionFeatureCache(directory=tmp_path / "vc")
    detach = attach_vision_cache(model, cache, "tiny-0|float32")
    for expected_calls, expected_hits in ((1, 0), (1, 3)):  # first pass fills, second pass only hits
        loss, grads = _adapter_grads(model, handle, batch)
        assert len(calls) == expected_calls and cache.hits == expected_hits
        assert torch.equal(loss, ref_loss)
        for k in ref_grads:
            torch.testing.assert_close(grads[k], ref_grads[k], rtol=0, atol=0, msg=k)
    assert len(list((tmp_path / "vc").glob("*.safetensors"))) == 3

    # A fresh process-level cache on the same directory serves from disk; another model never does.
    detach()
    fresh = VisionFeatureCache(directory=tmp_path / "vc")
    attach_vision_cache(model, fresh, "tiny-0|float32")
    _adapter_grads(model, handle, batch)
    assert (fresh.hits, fresh.misses, len(calls)) == (3, 0, 1)
    other = VisionFeatureCache(directory=tmp_path / "vc")
    model.model.__dict__.pop("get_image_features")
    attach_vision_cache(model, other, "another-model|float32")
    _adapter_grads(model, handle, batch)
    assert (other.hits, other.misses, len(calls)) == (0, 3, 2)


def test_vision_cache_hits_per_image_across_reshuffled_batches():
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    cache = VisionFeatureCache()
    attach_vision_cache(model, cache, "fp")
    batch = image_batch(processor, n=3)
    with torch.no_grad():
        model(**batch)
        # The first two samples again, in another batch: both images hit.
        model(**image_batch(processor, n=2))
    assert (cache.hits, cache.misses) == (2, 3)


def test_loader_digests_give_the_keys_the_hook_computes_and_spare_it_the_hashing(monkeypatch):
    from conftest import make_screen

    from imagelora_dist.data.collate import BatchCollator
    from imagelora_dist.models import vision_cache
    from imagelora_dist.models.registry import resolve_model

    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    spec = resolve_model(model)
    screens = [make_screen(i) for i in range(3)]
    decoded = [
        {"record": {"instruction": s.instruction, "answer": s.answer}, "image": s.image} for s in screens
    ]
    batch = BatchCollator(processor, spec.visual_token_ids, image_digests=True)(decoded)
    assert len(batch["image_digests"]) == 3 and len(set(batch["image_digests"])) == 3
    assert BatchCollator(processor, spec.visual_token_ids)(decoded)["image_digests"] is None

    cache = VisionFeatureCache()
    attach_vision_cache(model, cache, "fp")
    real_digest = vision_cache.pixel_digest

    def must_not_hash(*args):
        raise AssertionError("hashed in the training process although the loader sent digests")

    with torch.no_grad():
        # Training step: digests from the loader, the hook must not hash (no device->host copy).
        monkeypatch.setattr(vision_cache, "pixel_digest", must_not_hash)
        cache.expect(batch["image_digests"])
        model(**batch["inputs"])
        assert (cache.hits, cache.misses) == (0, 3)
        # Probe/eval: nothing handed over, the hook hashes itself and finds the same keys.
        monkeypatch.setattr(vision_cache, "pixel_digest", real_digest)
        model(**batch["inputs"])
        assert (cache.hits, cache.misses) == (3, 3)
        # Digests for another number of images are not trusted (and are used once only): hashed again.
        cache.expect(batch["image_digests"][:2])
        model(**batch["inputs"])
        assert (cache.hits, cache.misses) == (6, 3) and cache.take_expected(3) is None


def test_vision_cache_refuses_families_it_cannot_split_exactly():
    model, _ = build_tiny_vlm("llava", seed=0)
    with pytest.raises(
        ImageLoRAError, match="vision_cache supports qwen2_vl, qwen2_5_vl, not model_type 'llava'"
    ):
        attach_vision_cache(model, VisionFeatureCache(), "fp")


def test_no_grad_below_stops_the_backward_at_the_lowest_adapter():
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    handle = attach_image_lora(model, {3: [1], 5: [0]}, rank=4)
    _randomize(handle)
    # Gradient checkpointing's input grads make every layer record a graph, right down to layer 0.
    model.enable_input_require_grads()
    batch = image_batch(processor, n=2)
    layers = decoder_layers(model)
    records: dict[int, bool] = {}
    for i, layer in enumerate(layers):
        layer.register_forward_hook(lambda m, a, out, i=i: records.__setitem__(i, _requires_grad(out)))
    ref_loss, ref_grads = _adapter_grads(model, handle, batch)
    assert records[0], "without the flag, input grads reach layer 0 (the case the flag exists for)"

    undo = no_grad_below(model, lowest_layer=3)
    loss, grads = _adapter_grads(model, handle, batch)
    assert [records[i] for i in range(len(layers))] == [False, False, False, True, True, True]
    assert torch.equal(loss, ref_loss)
    for k in ref_grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=0, atol=0, msg=k)
    undo()
    _adapter_grads(model, handle, batch)
    assert records[0], "undo restores the original forwards"


def _requires_grad(out):
    tensor = out[0] if isinstance(out, tuple) else out
    return bool(tensor.requires_grad)


def test_attn_implementation_eager_matches_default_and_flash_is_a_clear_error(tmp_path):
    base = load_config(None, [f"output_dir={tmp_path}"])
    model, processor = build_model(base)
    eager, _ = build_model(load_config(None, [f"output_dir={tmp_path}", "model.attn_implementation=eager"]))
    assert eager.config._attn_implementation == "eager" and model.config._attn_implementation != "eager"
    batch = image_batch(processor, n=2)
    with torch.no_grad():
        torch.testing.assert_close(eager(**batch).logits, model(**batch).logits, rtol=1e-4, atol=1e-4)
    # No flash-attn package on CPU machines: one clear config error instead of a deep ImportError.
    with pytest.raises(
        ImageLoRAError, match="model.attn_implementation 'flash_attention_2' is not available"
    ):
        build_model(
            load_config(None, [f"output_dir={tmp_path}", "model.attn_implementation=flash_attention_2"])
        )


CACHE_SCRIPT = r"""
import json, os, socket, sys
os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); os.environ["MASTER_PORT"] = str(s.getsockname()[1])
from pathlib import Path
from imagelora_dist.config import load_config
from imagelora_dist.train.loop import WorkerContext, train_worker
out, shards = Path(sys.argv[1]), sys.argv[2]
states, rates = {}, {}
for flag in ("false", "true"):
    cfg = load_config(None, [f"output_dir={out}", f"data.train={shards}", "data.shuffle_buffer=0", "train.steps=4",
         "train.method=image_lora_all", "train.checkpoint_every=100", "train.lr=0.01", "tracking.enabled=false",
         f"speed.vision_cache={flag}"])
    seen = []
    adapted, _ = train_worker(cfg, WorkerContext(), shards, ckpt_dir=out / flag, log=lambda m: None,
                              report=lambda m, tag: seen.append(m.get("vision_cache_hit_rate")))
    states[flag], rates[flag] = adapted.adapter_state(), seen
a, b = states["false"], states["true"]
print("RESULT", json.dumps({"maxdiff": max(float((a[k] - b[k]).abs().max()) for k in a), "rates": rates}))
"""


def test_training_with_the_vision_cache_matches_and_hits_from_the_second_epoch(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from imagelora_dist.pipeline import ensure_train_shards

    # 4 samples, micro-batch 2: epoch 1 = steps 1-2 (4 misses), epoch 2 = steps 3-4 (4 hits).
    cfg = load_config(None, [f"output_dir={tmp_path}", "data.synth.num_samples=4", "data.synth.samples_per_shard=2",
                             "data.synth.workers=1"])  # fmt: skip
    shards = ensure_train_shards(cfg, log=lambda m: None)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, "-c", CACHE_SCRIPT, str(tmp_path), shards], capture_output=True,
                          text=True, timeout=600, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result["rates"]["false"] == [None] * 4
    assert result["rates"]["true"] == pytest.approx([0.0, 0.0, 2 / 6, 4 / 8])  # hits / lookups so far
    # Cached features are the very tensors the tower produced for those images: same adapter.
    assert result["maxdiff"] <= 1e-6
