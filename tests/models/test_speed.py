"""The `speed:` flags: the vision-feature cache, no_grad below the lowest adapter, the attention kernel.

Each flag must leave the numbers unchanged: compared with the same model run without it.
"""

from __future__ import annotations

import pytest
import torch
from vlm_batches import image_batch

from imagelora_dist import attach_image_lora, build_tiny_vlm
from imagelora_dist.config import load_config
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models.build import build_model
from imagelora_dist.models.grad_scope import no_grad_below
from imagelora_dist.models.registry import decoder_layers
from imagelora_dist.models.vision_cache import VisionFeatureCache, attach_vision_cache


def _adapter_grads(model, handle, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {
        f"{i}.{n}": p.grad.clone() for i, m in handle.modules.items() for n, p in m.named_parameters()
    }


def _assert_identical(got, ref):
    """(loss, grads) of `_adapter_grads` equal to the reference, bit for bit."""
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=0)
    for k in ref[1]:
        torch.testing.assert_close(got[1][k], ref[1][k], rtol=0, atol=0, msg=k)


def _adapted_qwen(n):
    """The tiny Qwen2.5-VL with nonzero Image-LoRA adapters in layers 1 and 4, and a batch of n samples."""
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    handle = attach_image_lora(model, {1: [0], 4: [2, 3]}, rank=4)
    _randomize(handle)
    return model, processor, handle, image_batch(processor, n=n)


def _randomize(handle):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in handle.modules.values():
            m.B.copy_(torch.randn(m.B.shape, generator=gen) * 0.3)


def test_vision_cache_gives_identical_loss_and_grads_and_skips_the_tower(tmp_path):
    model, processor, handle, batch = _adapted_qwen(n=3)
    ref_loss, ref_grads = _adapter_grads(model, handle, batch)

    calls = []
    model.model.visual.register_forward_hook(lambda *a: calls.append(1))
    cache = VisionFeatureCache(directory=tmp_path / "vc")
    detach = attach_vision_cache(model, cache, "tiny-0|float32")
    for expected_calls, expected_hits in ((1, 0), (1, 3)):  # first pass fills, second pass only hits
        loss, grads = _adapter_grads(model, handle, batch)
        assert len(calls) == expected_calls and cache.hits == expected_hits
        _assert_identical((loss, grads), (ref_loss, ref_grads))
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
    from imagelora_dist.data.collate import BatchCollator
    from imagelora_dist.data.screens import make_screen
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
    keyed = BatchCollator(processor, spec.visual_token_ids, sample_digests=True)(decoded)
    assert keyed["image_digests"] is None and keyed["sample_digests"] == _keys(keyed["inputs"])
    assert len(set(keyed["sample_digests"])) == 3

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
    _assert_identical((loss, grads), (ref_loss, ref_grads))
    undo()
    _adapter_grads(model, handle, batch)
    assert records[0], "undo restores the original forwards"


def _requires_grad(out):
    tensor = out[0] if isinstance(out, tuple) else out
    return bool(tensor.requires_grad)


def test_attn_implementation_eager_matches_default_and_flash_is_a_clear_error(tmp_path):
    base = load_config(None, [f"output_dir={tmp_path}"])
    model, processor = build_model(base.model)
    eager, _ = build_model(
        load_config(None, [f"output_dir={tmp_path}", "model.attn_implementation=eager"]).model
    )
    assert eager.config._attn_implementation == "eager" and model.config._attn_implementation != "eager"
    batch = image_batch(processor, n=2)
    with torch.no_grad():
        torch.testing.assert_close(eager(**batch).logits, model(**batch).logits, rtol=1e-4, atol=1e-4)
    # No flash-attn package on CPU machines: one clear config error instead of a deep ImportError.
    with pytest.raises(
        ImageLoRAError, match="model.attn_implementation 'flash_attention_2' is not available"
    ):
        build_model(
            load_config(None, [f"output_dir={tmp_path}", "model.attn_implementation=flash_attention_2"]).model
        )


CACHE_SCRIPT = r"""
import json, os, socket, sys
os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); os.environ["MASTER_PORT"] = str(s.getsockname()[1])
from pathlib import Path
from imagelora_dist.config import load_config
from imagelora_dist.selection import HeadSelection
from imagelora_dist.train.loop import WorkerContext, train_worker
out, shards, method, variants = Path(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
HeadSelection({3: [0, 1], 5: [2]}, hkv=4, num_layers=6).to_json(out / "head_selection.json")
states, rates = {}, {}
for name, flags in variants.items():
    cfg = load_config(None, [f"output_dir={out}", f"data.train={shards}", "data.shuffle_buffer=0", "train.steps=4",
         f"train.method={method}", "train.checkpoint_every=100", "train.lr=0.01", "tracking.enabled=false", *flags])
    seen = []
    adapted, _ = train_worker(cfg, WorkerContext(), shards, ckpt_dir=out / name, log=lambda m: None,
                              report=lambda m, tag: seen.append([m.get("vision_cache_hit_rate"),
                                                                 m.get("prefix_cache_hit_rate"),
                                                                 m.get("image_processor_skipped_batches")]))
    states[name], rates[name] = adapted.adapter_state(), seen
first = next(iter(states.values()))
maxdiff = {name: max(float((first[k] - s[k]).abs().max()) for k in first) for name, s in states.items()}
print("RESULT", json.dumps({"maxdiff": maxdiff, "rates": rates}))
"""


def _train_twice(tmp_path, method, variants):
    """Train 4 steps (2 epochs of 2 batches) per variant in one subprocess; adapter diff and hit rates."""
    import json
    import os
    import subprocess
    import sys

    from imagelora_dist.pipeline import ensure_train_shards

    cfg = load_config(None, [f"output_dir={tmp_path}", "data.synth.num_samples=4", "data.synth.samples_per_shard=2",
                             "data.synth.workers=1"])  # fmt: skip
    shards = ensure_train_shards(cfg, log=lambda m: None)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, "-c", CACHE_SCRIPT, str(tmp_path), shards, method, json.dumps(variants)],
                          capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULT", 1)[1])


@pytest.mark.integration
def test_training_with_the_vision_cache_matches_and_hits_from_the_second_epoch(tmp_path):
    # 4 samples, micro-batch 2: epoch 1 = steps 1-2 (4 misses), epoch 2 = steps 3-4 (4 hits).
    on = ["speed.vision_cache=true"]
    # Adapters are compared with the first variant's: the cache with the image processor always run.
    variants = {"processor": [*on, "speed.vision_cache_skip_processor=false"], "off": [], "on": on}
    result = _train_twice(tmp_path, "image_lora_all", variants)
    assert [r[0] for r in result["rates"]["off"]] == [None] * 4
    for name in ("processor", "on"):
        hit_rates = [r[0] for r in result["rates"][name]]
        assert hit_rates == pytest.approx([0.0, 0.0, 2 / 6, 4 / 8])  # hits / lookups
    # Epoch 2's batches are all cached: by default they skip the image processor and carry no pixels.
    assert [r[2] for r in result["rates"]["processor"]] == [0, 0, 0, 0]
    assert [r[2] for r in result["rates"]["on"]] == [0, 0, 1, 2]
    # Cached features are the very tensors the tower produced for those images: same adapter; and the
    # tokens of a batch sent without pixels are the processor's, to the bit.
    assert result["maxdiff"]["off"] <= 1e-6
    assert result["maxdiff"]["on"] == 0.0


@pytest.mark.integration
def test_training_with_the_prefix_cache_matches_and_skips_the_tower_in_the_second_epoch(tmp_path):
    flags = ["speed.prefix_cache=true", "speed.vision_cache=true"]
    result = _train_twice(tmp_path, "image_lora", {"off": [], "on": flags})  # adapters in layers 3 and 5
    assert result["rates"]["off"] == [[None, None, None]] * 4
    vision, prefix, skipped = zip(*result["rates"]["on"], strict=True)
    assert list(prefix) == pytest.approx([0.0, 0.0, 2 / 6, 4 / 8])
    # Epoch 2 is served at layer 3: the vision cache is not even asked (2 lookups per batch, all in epoch 1),
    # yet it holds epoch 1's features, so epoch 2's batches come without pixels.
    assert list(vision) == pytest.approx([0.0, 0.0, 0.0, 0.0])
    assert list(skipped) == [0, 0, 1, 2]
    assert result["maxdiff"]["on"] <= 1e-6


def _keys(batch, images_per_row=1):
    from imagelora_dist.models.prefix_cache import sample_digests
    from imagelora_dist.models.vision_cache import pixel_digests

    rows = batch["input_ids"].shape[0]
    digests = pixel_digests(batch["pixel_values"], batch["image_grid_thw"])
    return sample_digests(batch["input_ids"], batch["attention_mask"], [images_per_row] * rows, digests)


@pytest.mark.parametrize(
    "family,padding_side", [("qwen2_5_vl", "right"), ("qwen2_5_vl", "left"), ("qwen2_vl", "right")]
)
def test_prefix_cache_gives_the_same_loss_and_grads_and_skips_everything_below(family, padding_side):
    from imagelora_dist.models.prefix_cache import PrefixCache, attach_prefix_cache

    model, processor = build_tiny_vlm(family, seed=0)
    deep = len(decoder_layers(model)) > 4  # the tiny Qwen2-VL has 4 layers
    handle = attach_image_lora(model, {3: [0], 4: [2, 3]} if deep else {3: [0, 1]}, rank=4)
    _randomize(handle)
    batch = image_batch(processor, n=3, padding_side=padding_side)  # three lengths: padding in two rows
    ref_loss, ref_grads = _adapter_grads(model, handle, batch)

    layers = decoder_layers(model)
    ran = {"tower": 0, "below": 0, "lowest": 0}
    model.model.visual.register_forward_hook(lambda *a: ran.__setitem__("tower", ran["tower"] + 1))
    for layer in layers[:3]:  # the attention inside, not the layer: the layer's own hooks still fire
        layer.self_attn.register_forward_hook(lambda *a: ran.__setitem__("below", ran["below"] + 1))
    layers[3].self_attn.register_forward_hook(lambda *a: ran.__setitem__("lowest", ran["lowest"] + 1))

    cache = PrefixCache()
    attach_prefix_cache(model, cache, lowest_layer=3)
    keys = _keys(batch)
    for mode, tower, below in (("record", 1, 3), ("hit", 1, 3), (None, 2, 6)):
        if mode is not None:
            cache.expect(keys)
        assert cache.mode == mode
        loss, grads = _adapter_grads(model, handle, batch)
        assert cache.mode is None  # consumed: a forward without keys runs the model unchanged
        assert (ran["tower"], ran["below"]) == (tower, below), mode
        _assert_identical((loss, grads), (ref_loss, ref_grads))
    assert ran["lowest"] == 3 and (cache.hits, cache.misses) == (3, 3)


def test_prefix_cache_keys_survive_reshuffled_batches_and_a_new_sample_recomputes():
    from imagelora_dist.models.prefix_cache import PrefixCache, attach_prefix_cache

    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    handle = attach_image_lora(model, {2: [1]}, rank=4)
    _randomize(handle)
    three, two = image_batch(processor, n=3), image_batch(processor, n=2)
    assert two["input_ids"].shape[1] < three["input_ids"].shape[1]  # the same two samples, less padding
    assert _keys(two) == _keys(three)[:2]
    ref_loss, ref_grads = _adapter_grads(model, handle, two)

    cache = PrefixCache()
    attach_prefix_cache(model, cache, lowest_layer=2)
    cache.expect(_keys(three))
    _adapter_grads(model, handle, three)
    cache.expect(_keys(two))
    assert cache.mode == "hit"
    loss, grads = _adapter_grads(model, handle, two)
    # Recorded in a longer batch: the same values up to the float order of the longer reductions.
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for k in ref_grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6, msg=k)
    # One sample never seen: the batch is computed (and recorded), not half-served.
    cache.expect(_keys(image_batch(processor, n=2, seed=5))[:1] + _keys(two)[1:])
    assert cache.mode == "record"


def test_prefix_cache_refusals():
    from imagelora_dist.models.prefix_cache import PrefixCache, attach_prefix_cache

    model, _ = build_tiny_vlm("qwen2_5_vl", seed=0)
    with pytest.raises(ImageLoRAError, match="nothing below the lowest adapted layer"):
        attach_prefix_cache(model, PrefixCache(), lowest_layer=0)
    llava, _ = build_tiny_vlm("llava", seed=0)
    with pytest.raises(
        ImageLoRAError, match="prefix_cache supports qwen2_vl, qwen2_5_vl, not model_type 'llava'"
    ):
        attach_prefix_cache(llava, PrefixCache(), lowest_layer=2)
    model.config.text_config.attention_dropout = 0.1
    with pytest.raises(ImageLoRAError, match="dropout-free"):
        attach_prefix_cache(model, PrefixCache(), lowest_layer=2)


def test_prefix_cache_directory_serves_another_process_of_the_same_model_and_layer_only(tmp_path):
    from imagelora_dist.models.prefix_cache import PrefixCache, attach_prefix_cache

    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    handle = attach_image_lora(model, {2: [1]}, rank=4)
    _randomize(handle)
    batch = image_batch(processor, n=2)
    ref_loss, _ = _adapter_grads(model, handle, batch)
    first = PrefixCache(directory=tmp_path / "pc", namespace="tiny-0|float32|layer 2")
    detach = attach_prefix_cache(model, first, lowest_layer=2)
    first.expect(_keys(batch))
    _adapter_grads(model, handle, batch)  # records, to memory and disk
    detach()
    assert len(list((tmp_path / "pc").glob("*.safetensors"))) == 2
    # A new process (empty memory) on the same directory: served from disk, same loss.
    second = PrefixCache(directory=tmp_path / "pc", namespace="tiny-0|float32|layer 2")
    detach = attach_prefix_cache(model, second, lowest_layer=2)
    second.expect(_keys(batch))
    assert second.mode == "hit"
    loss, _ = _adapter_grads(model, handle, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    detach()
    for other in ("tiny-0|float32|layer 3", "another-model|float32|layer 2"):
        third = PrefixCache(directory=tmp_path / "pc", namespace=other)
        third.expect(_keys(batch))
        assert third.mode == "record", other


def test_prefix_cache_with_gradient_checkpointing_recomputes_from_the_cached_states():
    # The recompute in the backward must start from what the layer got in the forward (the cached states),
    # not from what reached the hook (the skipped layers' identity output).
    from imagelora_dist.models.prefix_cache import PrefixCache, attach_prefix_cache

    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    handle = attach_image_lora(model, {3: [0], 4: [1]}, rank=4)
    _randomize(handle)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    batch = image_batch(processor, n=2)
    ref_loss, ref_grads = _adapter_grads(model, handle, batch)
    cache = PrefixCache()
    attach_prefix_cache(model, cache, lowest_layer=3)
    for mode in ("record", "hit"):
        cache.expect(_keys(batch))
        assert cache.mode == mode
        loss, grads = _adapter_grads(model, handle, batch)
        _assert_identical((loss, grads), (ref_loss, ref_grads))


def test_a_batch_without_pixels_whose_features_are_gone_is_a_clear_error():
    from imagelora_dist.models.vision_cache import pixel_digests, pixel_stand_in

    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    cache = VisionFeatureCache()
    attach_vision_cache(model, cache, "fp")
    batch = image_batch(processor, n=2)
    digests = pixel_digests(batch["pixel_values"], batch["image_grid_thw"])
    zeros = torch.zeros_like(batch["pixel_values"])
    batch["pixel_values"] = pixel_stand_in(*zeros.shape, torch.float32)
    cache.expect(digests)
    with torch.no_grad(), pytest.raises(ImageLoRAError, match="2 of its images are no longer cached"):
        model(**batch)
    # Told by the loop, not only seen in the strides: a stand-in made dense on the way is refused too.
    batch["pixel_values"] = zeros
    cache.expect(digests, without_pixels=True)
    with torch.no_grad(), pytest.raises(ImageLoRAError, match="2 of its images are no longer cached"):
        model(**batch)
    assert not cache._items  # nothing computed from zeros was stored


def test_caches_follow_the_other_ranks_where_ranks_must_run_the_same_modules():
    # Under ZeRO-3 (tests/integration/test_train.py.py runs it) each cache asks `agree` whether every rank found its
    # data; a rank that found everything but is outvoted runs the same modules as the others.
    from imagelora_dist.models.prefix_cache import PrefixCache
    from imagelora_dist.models.vision_cache import pixel_digests, pixel_stand_in

    model, processor, handle, batch = _adapted_qwen(n=2)
    ref_loss, ref_grads = _adapter_grads(model, handle, batch)
    tower = []
    model.model.visual.register_forward_hook(lambda m, args, out: tower.append(args[0].shape[0]))
    cache = VisionFeatureCache()
    attach_vision_cache(model, cache, "fp")
    asked, others_found = [], [True]
    cache.agree = lambda found: asked.append(found) or (found and others_found[0])

    _adapter_grads(model, handle, batch)  # a miss here: the tower runs on both images, as everywhere
    assert asked == [False] and len(tower) == 1 and cache.forced_runs == 0
    digests = pixel_digests(batch["pixel_values"], batch["image_grid_thw"])
    one_image = int(batch["image_grid_thw"][0].prod())
    for others, pixels, runs in ((True, "real", 0), (False, "real", 1), (False, "stand-in", 1)):
        others_found[0], before = others, len(tower)
        if pixels == "stand-in":
            batch["pixel_values"] = pixel_stand_in(*batch["pixel_values"].shape, torch.float32)
        cache.expect(digests, without_pixels=pixels == "stand-in")
        loss, grads = _adapter_grads(model, handle, batch)
        # All hits here: the tower runs only when another rank runs it, on this rank's first image
        # (zeros for a stand-in), and its output is not used.
        assert asked[-1] is True and tower[before:] == [one_image] * runs
        _assert_identical((loss, grads), (ref_loss, ref_grads))
    assert len(tower) == 3 and cache.forced_runs == 2 and cache.misses == 2 and cache.hits == 6

    prefix = PrefixCache()
    prefix.agree = cache.agree
    keys = _keys(image_batch(processor, n=2))
    others_found[0] = True
    prefix.expect(keys)
    assert prefix.mode == "record" and asked[-1] is False
    prefix.store.put(prefix._store_key(keys[0]), torch.zeros(1))
    prefix.store.put(prefix._store_key(keys[1]), torch.zeros(1))
    others_found[0] = False
    prefix.expect(keys)  # everything here, but another rank computes: so does this one (and re-records)
    assert prefix.mode == "record" and asked[-1] is True
    others_found[0] = True
    prefix.expect(keys)
    assert prefix.mode == "hit"
    prefix.expect(None)  # no keys: this forward runs unchanged, but the ranks still vote (in step)
    assert prefix.mode is None and asked[-1] is False and len(asked) == 8


def test_deepspeed_template_errors_name_the_file(tmp_path):
    from imagelora_dist.train.loop import load_deepspeed_template

    def load(path):
        return load_deepspeed_template(load_config(None, [f"train.deepspeed={path}"]))

    assert load("zero3")["zero_optimization"]["stage"] == 3
    with pytest.raises(ImageLoRAError, match=r"train.deepspeed: .*zero4 not found .*zero1, zero2, zero3"):
        load("zero4")
    bad = tmp_path / "ds.json"
    bad.write_text("{not json")
    with pytest.raises(ImageLoRAError, match=r"train.deepspeed: .*ds.json is not valid JSON"):
        load(bad)
    bad.write_text('{"zero_optimization": {}}')
    with pytest.raises(ImageLoRAError, match=r"train.deepspeed: .*ds.json has no zero_optimization.stage"):
        load(bad)
    with pytest.raises(ImageLoRAError, match=r"train.deepspeed: .*nowhere.json not found"):
        load(tmp_path / "nowhere.json")
