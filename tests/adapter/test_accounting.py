"""Parameter and FLOPs accounting against the formula and against peft's own count."""

from __future__ import annotations

import peft
import pytest
from vlm_batches import image_batch

from imagelora_dist import (
    HeadSelection,
    ImageLoRAError,
    count_tokens,
    image_lora_num_parameters,
    image_lora_train_flops,
    lora_num_parameters,
    lora_train_flops,
    resolve_model,
)
from imagelora_dist.adapter.accounting import compare_costs, decoder_lora_targets, lora_target_linears


def test_lora_parameter_count_equals_peft(tiny):
    model, _ = tiny
    # Plain lists and 'all-linear' reach the vision tower in some families: counted as peft wraps them.
    for targets in (["v_proj"], ["q_proj", "v_proj"], "all-linear", decoder_lora_targets(model, ["v_proj"]),
                    decoder_lora_targets(model)):  # fmt: skip
        ours = lora_num_parameters(model, targets, rank=4)
        pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
        trainable, _ = pm.get_nb_trainable_parameters()
        model = pm.unload()
        assert ours == trainable, targets


def test_decoder_targets_stay_in_the_decoder(tiny):
    model, _ = tiny
    spec = resolve_model(model)
    v_only = decoder_lora_targets(model, ["v_proj"])
    assert lora_num_parameters(model, v_only, 4) == spec.num_layers * 4 * (
        spec.hidden_size + spec.num_kv_heads * spec.head_dim
    )
    flops = lora_train_flops(model, decoder_lora_targets(model), 4, tokens=10)
    assert flops == 3 * 2 * 10 * lora_num_parameters(model, decoder_lora_targets(model), 4)
    outside = [
        n
        for n in lora_target_linears(model, "all-linear")
        if n not in lora_target_linears(model, decoder_lora_targets(model))
    ]
    assert outside, "the vision tower/projector has Linear layers"
    with pytest.raises(ImageLoRAError, match="vision_rows"):
        lora_train_flops(model, "all-linear", 4, tokens=10)
    assert lora_train_flops(model, "all-linear", 4, tokens=10, vision_rows=7) > flops


def test_image_lora_counts_follow_formula(tiny):
    model, processor = tiny
    spec = resolve_model(model)
    sel = HeadSelection.from_layers({0: [0], 2: list(range(spec.num_kv_heads))}, spec)
    params = image_lora_num_parameters(sel, spec, rank=8)
    assert params == 2 * (spec.hidden_size * 8 + 1) + (1 + spec.num_kv_heads) * 8 * spec.head_dim
    batch = image_batch(processor)
    counts = count_tokens(batch["input_ids"], spec, batch["attention_mask"])
    mask = (batch["input_ids"] == spec.image_token_id) & batch["attention_mask"].bool()
    assert counts.visual == int(mask.sum()) > 0
    assert counts.visual + counts.text == int(batch["attention_mask"].sum())
    flops = image_lora_train_flops(sel, spec, 8, counts.visual)
    per_token = 2 * (2 * spec.hidden_size * 8) + 2 * 8 * spec.head_dim * (1 + spec.num_kv_heads)
    assert flops == 3 * per_token * counts.visual
    assert image_lora_train_flops(sel, spec, 8, 2 * counts.visual) == 2 * flops
    assert image_lora_train_flops(sel, spec, 8, 0) == 0


@pytest.mark.parametrize("family", ["qwen2_5_vl"])
def test_one_head_per_layer_is_far_cheaper_than_lora(tiny):
    model, processor = tiny
    spec = resolve_model(model)
    sel = HeadSelection.from_layers({layer: [0] for layer in range(spec.num_layers)}, spec)
    batch = image_batch(processor)
    costs = {c.method: c for c in compare_costs(model, sel, 8, batch["input_ids"])}
    n_tok = batch["input_ids"].numel()
    assert costs["lora_v_proj"].train_flops == lora_train_flops(
        model, decoder_lora_targets(model, ["v_proj"]), 8, n_tok
    )
    assert costs["image_lora"].trainable_params < costs["lora_v_proj"].trainable_params
    assert costs["image_lora"].train_flops < 0.1 * costs["lora_all_linear"].train_flops
    with pytest.raises(ImageLoRAError, match="match no Linear"):
        lora_num_parameters(model, ["nonexistent_proj"], 4)
