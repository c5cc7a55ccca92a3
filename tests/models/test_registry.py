"""Family registry: geometry and token ids read from the config, clear errors otherwise."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from imagelora_dist import (
    HeadSelection,
    SelectionError,
    UnsupportedModelError,
    attach_image_lora,
    resolve_model,
)
from imagelora_dist.models.registry import decoder_layers, family_info, visual_token_mask


def test_spec_matches_model_and_tokenizer(tiny, family):
    model, processor = tiny
    spec = resolve_model(model)
    assert spec.family == family
    assert spec.num_layers == len(decoder_layers(model)) >= 4
    assert spec.num_kv_heads < spec.num_attention_heads
    v = decoder_layers(model)[0].self_attn.v_proj
    assert v.out_features == spec.num_kv_heads * spec.head_dim and v.in_features == spec.hidden_size
    tok = processor.tokenizer
    image_token = getattr(tok, "image_token", None) or getattr(processor, "image_token", None)
    assert tok.convert_tokens_to_ids(image_token) == spec.image_token_id
    if spec.video_token_id is not None:
        assert tok.convert_tokens_to_ids(processor.video_token) == spec.video_token_id
    # The decoder, never the vision tower: the vision tower's own v_proj must not be among the layers.
    vision = [m for n, m in model.named_modules() if "vision" in n]
    assert not any(layer.self_attn.v_proj is m for layer in decoder_layers(model) for m in vision)


def test_token_ids_are_read_from_config(tiny):
    model, _ = tiny
    old = model.config.image_token_id
    model.config.image_token_id = old + 3
    try:
        assert resolve_model(model).image_token_id == old + 3
    finally:
        model.config.image_token_id = old


def test_unsupported_model_lists_supported():
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    with pytest.raises(UnsupportedModelError, match=r"unsupported model type 'llama'.*qwen2_5_vl.*gemma3"):
        resolve_model(model)
    with pytest.raises(UnsupportedModelError, match="supported: qwen2_vl"):
        family_info("mllama")
    with pytest.raises(UnsupportedModelError):
        resolve_model(torch.nn.Linear(2, 2))


def test_visual_mask_video_and_padding(tiny):
    model, _ = tiny
    spec = resolve_model(model)
    img, vid = spec.image_token_id, spec.video_token_id
    other = vid if vid is not None else img
    ids = torch.tensor([[0, 0, 5, img, img, 6, other, 7], [5, img, 6, img, img, other, 0, 0]])
    mask = visual_token_mask(ids, spec)
    assert mask.tolist() == [
        [False, False, False, True, True, False, True, False],
        [False, True, False, True, True, True, False, False],
    ]


def test_selection_out_of_range_for_model(tiny):
    model, _ = tiny
    spec = resolve_model(model)
    with pytest.raises(SelectionError, match="out of range"):
        attach_image_lora(model, {spec.num_layers: [0]})
    with pytest.raises(SelectionError, match="head"):
        attach_image_lora(model, {0: [spec.num_kv_heads]})
    wrong = HeadSelection(kv_indices={0: [0]}, hkv=spec.num_kv_heads + 1, num_layers=spec.num_layers)
    with pytest.raises(SelectionError, match="KV heads"):
        attach_image_lora(model, wrong)
    assert all(p.requires_grad for p in model.parameters())
