"""Collator: answer-only labels, visual token counts, pixel budget, too-long samples skipped."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from vlm_batches import image_batch

from imagelora_dist import resolve_model
from imagelora_dist.data.collate import IGNORE_INDEX, BatchCollator, fit_pixels
from imagelora_dist.data.screens import make_screen


def _implied_visual_tokens(model, processor, batch) -> int:
    """What the image processor's output implies, per family (independent of input_ids)."""
    cfg = model.config
    mt = cfg.model_type
    if mt.startswith("qwen"):
        merge = cfg.vision_config.spatial_merge_size
        return int(batch["image_grid_thw"].prod(dim=-1).sum()) // merge**2
    n_images = (
        batch["pixel_values"].shape[0]
        if mt != "idefics3"
        else int(batch["pixel_values"].shape[1] * batch["pixel_values"].shape[0])
    )
    if mt == "llava":
        return n_images * cfg.image_seq_length
    if mt == "gemma3":
        return n_images * cfg.mm_tokens_per_image
    if mt == "idefics3":
        return n_images * processor.image_seq_len
    raise AssertionError(mt)


def test_labels_cover_only_answer_tokens(tiny):
    model, processor = tiny
    spec = resolve_model(model)
    for side in ("left", "right"):
        batch = image_batch(processor, n=2, padding_side=side)
        ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"].bool()
        assert int((ids == spec.image_token_id).sum()) == _implied_visual_tokens(model, processor, batch)
        for i in range(ids.shape[0]):
            supervised = (labels[i] != IGNORE_INDEX).nonzero().squeeze(1)
            assert supervised.numel() > 0
            assert torch.equal(labels[i, supervised], ids[i, supervised])
            assert mask[i, supervised].all()  # never padding
            last_visual = (ids[i] == spec.image_token_id).nonzero().max()
            assert supervised.min() > last_visual  # never image tokens nor the prompt before them
            # Contiguous tail of the real tokens.
            real = mask[i].nonzero().squeeze(1)
            assert supervised.tolist() == real[-supervised.numel() :].tolist()
            text = processor.tokenizer.decode(ids[i, supervised]).strip()
            assert text.startswith(make_screen(i * 10).answer), text
            prompt = processor.tokenizer.decode(ids[i, : supervised.min()])
            assert make_screen(i * 10).instruction in prompt


def test_fit_pixels_keeps_aspect_and_never_upscales():
    im = Image.new("RGB", (800, 400))
    out = fit_pixels(im, 200 * 100)
    assert out.width * out.height <= 200 * 100 and abs(out.width / out.height - 2) < 0.05
    assert fit_pixels(im, 10**7) is im


def _decoded(n, size=448):
    out = []
    for i in range(n):
        s = make_screen(i, size, size)
        out.append(
            {
                "image": s.image,
                "record": {"instruction": s.instruction + " word" * (40 * i), "answer": s.answer},
            }
        )
    return out


def test_pixel_budget_controls_qwen_visual_tokens():
    from imagelora_dist import build_tiny_vlm

    model, processor = build_tiny_vlm("qwen2_5_vl")
    spec = resolve_model(model)
    small = BatchCollator(processor, spec.visual_token_ids, max_pixels=224 * 224)(_decoded(1))
    large = BatchCollator(processor, spec.visual_token_ids, max_pixels=448 * 448)(_decoded(1))
    assert small["visual_tokens"] == 64 and large["visual_tokens"] == 256
    assert small["text_tokens"] == large["text_tokens"] > 0
    assert small["inputs"]["input_ids"].shape[1] == 64 + small["text_tokens"]


def test_too_long_samples_are_skipped_not_truncated(tiny):
    model, processor = tiny
    spec = resolve_model(model)
    decoded = _decoded(3, size=224)
    full = BatchCollator(processor, spec.visual_token_ids)(decoded)
    lengths = full["inputs"]["attention_mask"].sum(dim=1).tolist()
    limit = sorted(lengths)[1]  # the longest sample no longer fits
    out = BatchCollator(processor, spec.visual_token_ids, max_length=limit)(decoded)
    assert out["too_long"] == 1 and out["num_samples"] == 2
    assert out["inputs"]["attention_mask"].sum(dim=1).max() <= limit
    assert len(out["records"]) == 2
    none = BatchCollator(processor, spec.visual_token_ids, max_length=5)(decoded)
    assert none["inputs"] is None and none["too_long"] == 3 and none["num_samples"] == 0
    empty = BatchCollator(processor, spec.visual_token_ids)([])
    assert empty["inputs"] is None and empty["num_samples"] == 0


def _digest_collator(processor, spec, **kw):
    return BatchCollator(processor, spec.visual_token_ids, image_digests=True, sample_digests=True, **kw)


@pytest.mark.parametrize(
    "family, padding_side, drop_longest",
    [("qwen2_5_vl", "right", False), ("qwen2_5_vl", "left", True), ("qwen2_vl", "right", True)],
)
def test_a_batch_of_cached_images_skips_the_processor_and_gives_its_tokens_bit_for_bit(
    monkeypatch, family, padding_side, drop_longest
):
    from imagelora_dist import build_tiny_vlm
    from imagelora_dist.data import collate as collate_module

    model, processor = build_tiny_vlm(family, seed=0)
    processor.tokenizer.padding_side = padding_side
    spec = resolve_model(model)
    decoded = _decoded(4, size=224)
    decoded[1]["record"]["text_only"] = True  # a row without image among image rows
    max_length = None
    if drop_longest:  # the last sample is too long: dropped, the rest re-collated
        lengths = _digest_collator(processor, spec)(decoded)["inputs"]["attention_mask"].sum(1).tolist()
        max_length = max(lengths) - 1
        assert sorted(lengths)[-2] <= max_length
    reference = _digest_collator(processor, spec, max_length=max_length)(decoded)
    assert reference["too_long"] == int(drop_longest)

    cached: set[str] = set()
    collator = _digest_collator(processor, spec, max_length=max_length)
    collator.features_cached = cached.__contains__
    first = collator(decoded)  # nothing cached yet: the processor runs, the collator learns the images
    assert collator.skipped_batches == 0 and first["inputs"]["pixel_values"].stride()[0] > 0
    cached.update(first["image_digests"])

    calls = []
    real = processor.image_processor

    def count_and_process(images, **k):
        # Only the first attempt, which still holds the too-long sample's never-cached image, may process.
        assert drop_longest and len(images) == 4, "the image processor ran for an all-cached batch"
        calls.append(1)
        return real(images, **k)

    monkeypatch.setattr(processor, "image_processor", _NoCall(real, count_and_process))
    out = collator(decoded)
    assert len(calls) == int(drop_longest)
    assert collator.skipped_batches == 1 and out["without_pixels"] and not reference["without_pixels"]
    ref, got = reference["inputs"], out["inputs"]
    assert set(got) == set(ref)
    for key in ref:
        if key != "pixel_values":
            assert torch.equal(got[key], ref[key]), key
    pixels = got["pixel_values"]
    assert pixels.shape == ref["pixel_values"].shape and pixels.dtype == ref["pixel_values"].dtype
    assert pixels.stride() == (0, 0) and not pixels.any()  # no memory behind it, and never read
    for key in ("image_digests", "sample_digests", "visual_tokens", "text_tokens", "records", "too_long"):
        assert out[key] == reference[key], key
    on_device = collate_module.move_to_device(got, "cpu")["pixel_values"]
    assert on_device.stride() == (0, 0) and on_device.shape == pixels.shape

    # One image's features gone from the cache: the whole batch goes through the processor again.
    monkeypatch.undo()
    cached.discard(first["image_digests"][0])
    again = collator(decoded)
    assert collator.skipped_batches == 1
    assert torch.equal(again["inputs"]["pixel_values"], ref["pixel_values"])


class _NoCall:
    """Wraps an image processor: attributes pass through, calling it fails the test."""

    def __init__(self, inner, on_call):
        self._inner, self._on_call = inner, on_call

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __call__(self, *a, **k):
        return self._on_call(*a, **k)
