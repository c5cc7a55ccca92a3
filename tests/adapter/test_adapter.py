"""Image-LoRA adapter on every family's tiny model: exactness, gradients, checkpointing, generate, dtypes."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from vlm_batches import image_batch, text_batch, visual_mask

from imagelora_dist import HeadSelection, ImageLoRAError, attach_image_lora, build_tiny_vlm, resolve_model
from imagelora_dist.adapter.hooks import ReplayWithRows, ValuePathHooks
from imagelora_dist.adapter.image_lora import ImageLoRALayer
from imagelora_dist.models.registry import decoder_layers


def _selection(spec, per_layer=1):
    """A non-trivial selection: layers 0, 1 and the last, rotating heads."""
    layers = sorted({0, 1, spec.num_layers - 1})
    return {i: [(i + j) % spec.num_kv_heads for j in range(per_layer)] for i in layers}


def _randomize(handle, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in handle.modules.values():
            m.B.copy_(torch.randn(m.B.shape, generator=gen) * 0.5)
            m.gamma.fill_(0.7)


def _train_steps(model, handle, batch, steps=3):
    opt = torch.optim.AdamW(list(handle.parameters()), lr=5e-2)
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return loss


def _capture_vproj(model):
    """Record (input, output) of every decoder v_proj, after any adapter hook has run."""
    records, handles = {}, []
    for i, layer in enumerate(decoder_layers(model)):

        def hook(mod, args, out, i=i):
            records[i] = (args[0].detach().clone(), out.detach().clone())

        handles.append(layer.self_attn.v_proj.register_forward_hook(hook))
    return records, handles


def test_text_only_logits_bit_identical_after_training(tiny):
    model, processor = tiny
    spec = resolve_model(model)
    with torch.no_grad():
        base = model(**text_batch(processor)).logits
    handle = attach_image_lora(model, _selection(spec, 2), rank=4, alpha=8)
    _train_steps(model, handle, image_batch(processor))
    assert all(m.B.abs().sum() > 0 for m in handle.modules.values()), "training must make B non-zero"
    with torch.no_grad():
        adapted = model(**text_batch(processor)).logits
        adapted_left = model(**text_batch(processor, "left")).logits
    assert torch.equal(adapted, base)
    handle.detach()
    with torch.no_grad():
        assert torch.equal(model(**text_batch(processor, "left")).logits, adapted_left)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_visual_rows_follow_formula_other_rows_unchanged(tiny, padding_side):
    model, processor = tiny
    spec = resolve_model(model)
    n_img = 2 if spec.family != "idefics3" else 1
    batch = image_batch(processor, n=2, images_per_sample=n_img, padding_side=padding_side)
    records, hooks = _capture_vproj(model)
    with torch.no_grad():
        model(**batch)
    base = {k: v for k, v in records.items()}
    sel = _selection(spec, per_layer=min(2, spec.num_kv_heads - 1))
    handle = attach_image_lora(model, sel, rank=4, alpha=8)
    _randomize(handle)
    # Re-register the capture so it runs after the adapter's hook.
    for h in hooks:
        h.remove()
    records, hooks = _capture_vproj(model)
    with torch.no_grad():
        model(**batch)
    mask = visual_mask(batch, spec)
    assert mask.sum(dim=1).min() > 0
    for layer in range(spec.num_layers):
        x, out = records[layer]
        if layer == 0:
            assert torch.equal(x, base[0][0])  # nothing below layer 0 is adapted
        b, t = x.shape[:2]
        out4 = out.view(b, t, spec.num_kv_heads, spec.head_dim)
        if layer not in handle.modules:
            continue
        m = handle.modules[layer]
        # Independent computation of the formula, on the full tensor with a dense mask.
        ref_base = x @ model.get_submodule(_vproj_path(model, layer)).weight.T
        bias = model.get_submodule(_vproj_path(model, layer)).bias
        if bias is not None:
            ref_base = ref_base + bias
        ref4 = ref_base.view(b, t, spec.num_kv_heads, spec.head_dim).clone()
        scale = (8 / 4) / math.sqrt(len(sel[layer])) * m.gamma
        delta = torch.einsum("btd,dr,hrk->bthk", x, m.A, m.B) * scale
        for i, h in enumerate(sorted(sel[layer])):
            ref4[:, :, h] += delta[:, :, i] * mask[..., None]
        torch.testing.assert_close(out4, ref4, rtol=1e-4, atol=1e-5)
        # Exactness: non-visual positions and unselected heads equal the plain projection bit for bit.
        plain = torch.nn.functional.linear(x, model.get_submodule(_vproj_path(model, layer)).weight, bias)
        plain4 = plain.view(b, t, spec.num_kv_heads, spec.head_dim)
        assert torch.equal(out4[~mask], plain4[~mask])
        unselected = [h for h in range(spec.num_kv_heads) if h not in sel[layer]]
        assert torch.equal(out4[:, :, unselected], plain4[:, :, unselected])
    for h in hooks:
        h.remove()
    handle.detach()


def _vproj_path(model, layer):
    for name, mod in model.named_modules():
        if mod is decoder_layers(model)[layer].self_attn.v_proj:
            return name
    raise AssertionError


def test_only_adapter_gets_gradients_and_base_unchanged(tiny):
    model, processor = tiny
    spec = resolve_model(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    handle = attach_image_lora(model, _selection(spec), rank=4, alpha=8)
    adapter_ids = {id(p) for p in handle.parameters()}
    model.train()
    loss = model(**image_batch(processor)).loss
    loss.backward()
    for name, p in model.named_parameters():
        if id(p) in adapter_ids:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None and not p.requires_grad, name
    assert any(p.grad.abs().sum() > 0 for p in handle.parameters())
    _train_steps(model, handle, image_batch(processor))
    handle.detach()
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_batch_without_visual_tokens_touches_every_parameter(tiny):
    model, processor = tiny
    spec = resolve_model(model)
    handle = attach_image_lora(model, _selection(spec), rank=4, alpha=8)
    loss = model(**text_batch(processor)).loss
    loss.backward()
    for name, p in handle.named_parameters():
        assert p.grad is not None, f"{name} not in the graph: DDP/ZeRO ranks would desync"
        assert torch.count_nonzero(p.grad) == 0, name
    handle.detach()


def _two_forward_grads(model, handle, b1, b2):
    """Gradients of loss(b1) + loss(b2) with both forwards run before one backward."""
    for p in handle.parameters():
        p.grad = None
    (model(**b1).loss + model(**b2).loss).backward()
    return {n: p.grad.clone() for n, p in handle.named_parameters()}


def test_gradient_checkpointing_non_reentrant_matches(tiny):
    model, processor = tiny
    spec = resolve_model(model)
    # Two batches with different image positions, both forwards before one backward: a replayed layer
    # must use its own forward's visual rows, not the latest ones.
    b1 = image_batch(processor, n=2, padding_side="left", seed=1)
    b2 = image_batch(processor, n=2, padding_side="right", seed=2)
    handle = attach_image_lora(model, _selection(spec), rank=4, alpha=8)
    _randomize(handle)
    model.train()
    ref = _two_forward_grads(model, handle, b1, b2)
    calls = []
    counter = decoder_layers(model)[0].self_attn.v_proj.register_forward_hook(lambda *a: calls.append(1))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        got = _two_forward_grads(model, handle, b1, b2)
    finally:
        model.gradient_checkpointing_disable()
        counter.remove()
    assert len(calls) == 4, "layer 0 must be replayed in backward (2 forwards + 2 recomputes)"
    for n, g in got.items():
        torch.testing.assert_close(g, ref[n], rtol=1e-4, atol=1e-6)
    handle.detach()


@pytest.mark.parametrize("family", ["qwen2_5_vl"])
def test_reentrant_checkpointing_is_refused_clearly(tiny):
    model, processor = tiny
    handle = attach_image_lora(model, None, rank=4, alpha=8)
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    try:
        with pytest.raises(ImageLoRAError, match="non-reentrant"):
            model(**image_batch(processor))
    finally:
        model.gradient_checkpointing_disable()
        handle.detach()


def test_direct_decoder_call_after_image_forward_is_text_only(tiny):
    model, processor = tiny
    spec = resolve_model(model)
    batch = image_batch(processor, n=1)
    ids = torch.randint(5, 50, batch["input_ids"].shape)  # same shape as the image batch, text only
    decoder = next(m for m in model.modules() if getattr(m, "layers", None) is decoder_layers(model))
    with torch.no_grad():
        base = decoder(input_ids=ids).last_hidden_state
    handle = attach_image_lora(model, _selection(spec), rank=4, alpha=8)
    _randomize(handle)
    with torch.no_grad():
        model(**batch)  # leaves nothing behind for the next call
        after = decoder(input_ids=ids).last_hidden_state
    assert torch.equal(after, base)
    handle.detach()


def test_generate_with_kv_cache_adapts_prefill_only(tiny):
    model, processor = tiny
    spec = resolve_model(model)
    from imagelora_dist.data.collate import Sample, collate
    from imagelora_dist.data.screens import make_screen

    processor.tokenizer.padding_side = "left"
    screens = [make_screen(3), make_screen(4)]
    samples = [Sample(s.instruction + " Be brief." * i, None, [s.image]) for i, s in enumerate(screens)]
    prompt = collate(processor, samples)
    prompt.pop("labels")
    assert (prompt["attention_mask"] == 0).any(), "left padding must be exercised"
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    with torch.no_grad():
        base = model.generate(**prompt, use_cache=True, **kw)
    handle = attach_image_lora(model, _selection(spec, 2), rank=4, alpha=8)
    _randomize(handle)
    with torch.no_grad():
        cached = model.generate(**prompt, use_cache=True, **kw)
        uncached = model.generate(**prompt, use_cache=False, **kw)
    handle.detach()
    # Without a cache every step recomputes the visual rows from the full ids: same tokens means the
    # cached decode steps saw the adapted prefill values and added nothing of their own.
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, base), "the adapter must change what is generated"


def test_fp32_adapter_on_bf16_model(tiny):
    model, processor = tiny
    spec = resolve_model(model)
    model.to(torch.bfloat16)
    batch = image_batch(processor)
    batch = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in batch.items()}
    handle = attach_image_lora(model, _selection(spec), rank=4, alpha=8, dtype=torch.float32)
    _randomize(handle)
    assert all(p.dtype == torch.float32 for p in handle.parameters())
    model.train()
    loss = model(**batch).loss
    assert loss.dtype == torch.bfloat16 or loss.dtype == torch.float32
    loss.backward()
    for n, p in handle.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), n
    handle.detach()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_fp32_delta_on_a_bf16_model_is_rounded_once(tiny):
    # bf16 output + fp32 delta, summed in fp32 and rounded to bf16 once: exactly
    # (plain.float() + delta).bfloat16() at visual rows of selected heads, the plain projection elsewhere.
    model, processor = tiny
    spec = resolve_model(model)
    model.to(torch.bfloat16)
    batch = image_batch(processor)
    batch = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in batch.items()}
    sel = _selection(spec, per_layer=min(2, spec.num_kv_heads - 1))
    handle = attach_image_lora(model, sel, rank=4, alpha=8, dtype=torch.float32)
    _randomize(handle)
    records, hooks = _capture_vproj(model)
    with torch.no_grad():
        model(**batch)
    mask = visual_mask(batch, spec)
    for layer, m in handle.modules.items():
        x, out = records[layer]
        vproj = model.get_submodule(_vproj_path(model, layer))
        plain = torch.nn.functional.linear(x, vproj.weight, vproj.bias)  # the bf16 projection
        b, t = x.shape[:2]
        expected = plain.view(b, t, spec.num_kv_heads, spec.head_dim).clone()
        scale = (8 / 4) / math.sqrt(len(sel[layer])) * m.gamma
        delta = torch.einsum("btd,dr,hrk->bthk", x.float(), m.A, m.B) * scale  # fp32, independent
        for i, h in enumerate(sorted(sel[layer])):
            once = (expected[:, :, h].float() + delta[:, :, i]).to(torch.bfloat16)
            expected[:, :, h] = torch.where(mask[..., None], once, expected[:, :, h])
        got = out.view(b, t, spec.num_kv_heads, spec.head_dim)
        assert got.dtype == torch.bfloat16
        # The einsum's summation order differs from the adapter's two matmuls: allow one bf16 step
        # at most where the fp32 sums straddle a rounding boundary, and require most to match exactly.
        diff = (got.float() - expected.float()).abs()
        ulp = expected.float().abs().clamp_min(1e-3) * 2**-7
        assert (diff <= ulp).all() and (diff == 0).float().mean() > 0.95
        assert torch.equal(got[~mask], plain.view(b, t, spec.num_kv_heads, spec.head_dim)[~mask])
    for h in hooks:
        h.remove()
    handle.detach()


@pytest.mark.parametrize("family", ["qwen2_5_vl"])
def test_inputs_embeds_without_ids_say_the_adapter_adds_nothing(tiny):
    model, processor = tiny
    spec = resolve_model(model)
    batch = text_batch(processor)
    handle = attach_image_lora(model, _selection(spec), rank=4, alpha=8)
    _randomize(handle)
    embeds = model.get_input_embeddings()(batch["input_ids"])
    with torch.no_grad(), pytest.warns(UserWarning, match="inputs_embeds and no input_ids"):
        model(inputs_embeds=embeds, attention_mask=batch["attention_mask"])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per attachment, not at every call
        model(inputs_embeds=embeds, attention_mask=batch["attention_mask"])
        model(**batch)  # with ids: no warning
    handle.detach()


def test_detach_restores_model_exactly(tiny):
    model, processor = tiny
    spec = resolve_model(model)
    batch = image_batch(processor)
    with torch.no_grad():
        base = model(**batch).logits  # first forward: transformers may add hooks of its own here
    keys = set(model.state_dict())
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    n_hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    handle = attach_image_lora(model, _selection(spec), rank=4, alpha=8)
    _randomize(handle)
    with torch.no_grad():
        assert not torch.equal(model(**batch).logits, base)
    handle.detach()
    handle.detach()  # idempotent
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, base)
    assert set(model.state_dict()) == keys
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == n_hooks


def _module_state(model):
    """Every module's own attributes: dicts (children, parameters, hooks) shallow-copied, the rest as is."""
    return {
        (name, key): (dict(value) if isinstance(value, dict) else value)
        for name, module in model.named_modules()
        for key, value in vars(module).items()
    }


def _state_differences(before, after):
    """(module, attribute) pairs added, removed, or holding another object, entry or tensor value than before."""
    diffs = sorted(set(before) ^ set(after))
    for key in set(before) & set(after):
        old, new = before[key], after[key]
        if isinstance(old, dict) and isinstance(new, dict):
            same = old.keys() == new.keys() and all(old[k] is new[k] for k in old)
        elif isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor):
            # Per-forward caches of transformers (Qwen-VL's rope_deltas) are new tensors of the same batch.
            same = old.shape == new.shape and old.dtype == new.dtype and torch.equal(old, new)
        else:
            same = old is new or (isinstance(old, (bool, int, float, str)) and old == new)
        if not same:
            diffs.append(key)
    return diffs


def _checkpoint_funcs(model):
    return [layer.__dict__.get("_gradient_checkpointing_func") for layer in decoder_layers(model)]


def test_detach_after_checkpointed_training_restores_model_exactly(tiny):
    model, processor = tiny
    spec = resolve_model(model)
    reference, _ = build_tiny_vlm(spec.family, seed=0)  # never sees an adapter
    batch = image_batch(processor)
    for m in (model, reference):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.train()
    model(**batch).loss.backward()  # first forward: transformers may add hooks or attributes of its own
    model.zero_grad(set_to_none=True)
    funcs = _checkpoint_funcs(model)
    assert all(f is not None for f in funcs)
    before = _module_state(model)
    handle = attach_image_lora(model, _selection(spec), rank=4, alpha=8)
    _randomize(handle)
    opt = torch.optim.SGD(list(handle.parameters()), lr=1e-2)
    for _ in range(2):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    assert any(f is not g for f, g in zip(_checkpoint_funcs(model), funcs, strict=True)), (
        "the checkpointed layers must have been wrapped for the test to mean anything"
    )
    handle.detach()
    assert all(f is g for f, g in zip(_checkpoint_funcs(model), funcs, strict=True))
    assert _state_differences(before, _module_state(model)) == []
    loss = model(**batch).loss
    ref_loss = reference(**batch).loss
    assert torch.equal(loss, ref_loss)
    for m in (model, reference):
        m.gradient_checkpointing_disable()
        m.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference(**batch).logits)


@pytest.mark.parametrize("family", ["qwen2_5_vl"])
def test_detach_without_checkpointing_leaves_no_checkpoint_attribute(tiny):
    model, processor = tiny
    spec = resolve_model(model)
    batch = image_batch(processor)
    model.train()
    model(**batch).loss.backward()
    assert _checkpoint_funcs(model) == [None] * spec.num_layers
    before = _module_state(model)
    handle = attach_image_lora(model, _selection(spec), rank=4, alpha=8)
    model(**batch).loss.backward()
    handle.detach()
    assert _checkpoint_funcs(model) == [None] * spec.num_layers
    assert _state_differences(before, _module_state(model)) == []


@pytest.mark.parametrize("family", ["qwen2_5_vl"])
def test_two_attachments_share_checkpointing_and_detach_in_any_order(tiny):
    model, processor = tiny
    spec = resolve_model(model)
    b1 = image_batch(processor, n=2, padding_side="left", seed=1)
    b2 = image_batch(processor, n=2, padding_side="right", seed=2)
    handle = attach_image_lora(model, _selection(spec), rank=4, alpha=8)
    _randomize(handle)
    second = ImageLoRALayer(1, [0], spec.hidden_size, spec.head_dim, spec.num_kv_heads, 2, 4.0)
    with torch.no_grad():
        second.B.normal_()
        second.gamma.fill_(0.5)
    model.train()
    ref = _two_forward_grads(model, handle, b1, b2)  # the first adapter's grads, no checkpointing
    other = ValuePathHooks(model, spec, {1: second}, "second_adapter")
    ref_both = _two_forward_grads(model, handle, b1, b2)
    ref_second = second.B.grad.clone()
    second.B.grad = None
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    funcs = _checkpoint_funcs(model)
    got_both = _two_forward_grads(model, handle, b1, b2)
    torch.testing.assert_close(second.B.grad, ref_second, rtol=1e-4, atol=1e-6)
    for n, g in got_both.items():
        torch.testing.assert_close(g, ref_both[n], rtol=1e-4, atol=1e-6)
    handle.detach()  # the first attached goes first: the second's wrapper stays, on the original function
    for f, g in zip(_checkpoint_funcs(model), funcs, strict=True):
        assert isinstance(f, ReplayWithRows) and f.tracker is other.tracker and f.base is g
    other.remove()
    assert all(f is g for f, g in zip(_checkpoint_funcs(model), funcs, strict=True))
    assert not any(hasattr(layer.self_attn, "second_adapter") for layer in decoder_layers(model))
    handle2 = attach_image_lora(model, _selection(spec), rank=4, alpha=8)
    for m, state in zip(handle2.modules.values(), handle.modules.values(), strict=True):
        with torch.no_grad():
            for p, q in zip(m.parameters(), state.parameters(), strict=True):
                p.copy_(q)
    got = _two_forward_grads(model, handle2, b1, b2)
    model.gradient_checkpointing_disable()
    for n, g in got.items():
        torch.testing.assert_close(g, ref[n], rtol=1e-4, atol=1e-6)
    handle2.detach()


def test_disabled_computes_the_base_model_and_reenables(tiny):
    model, processor = tiny
    spec = resolve_model(model)
    reference, _ = build_tiny_vlm(spec.family, seed=0)  # built apart, never had an adapter
    batch = image_batch(processor)
    handle = attach_image_lora(model, _selection(spec, 2), rank=4, alpha=8)
    _randomize(handle)
    with torch.no_grad():
        base = reference(**batch).logits
        adapted = model(**batch).logits
        with handle.disabled():
            off = model(**batch).logits
            with handle.disabled():
                nested = model(**batch).logits
            still_off = model(**batch).logits
        again = model(**batch).logits
        with pytest.raises(RuntimeError, match="boom"), handle.disabled():
            raise RuntimeError("boom")
        after_error = model(**batch).logits
    assert not torch.equal(adapted, base), "a non-zero B must change image logits"
    for logits in (off, nested, still_off):
        assert torch.equal(logits, base)
    assert torch.equal(again, adapted) and torch.equal(after_error, adapted)
    # Gradients reach the adapter again after the block.
    model.train()
    model(**batch).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in handle.parameters())
    handle.detach()
    with pytest.raises(ImageLoRAError, match="detached"), handle.disabled():
        pass


def test_module_attributes_and_parameter_count(tiny):
    model, _ = tiny
    spec = resolve_model(model)
    sel = _selection(spec, 2)
    handle = attach_image_lora(model, sel, rank=3, alpha=6)
    for layer, m in handle.modules.items():
        assert m.layer_index == layer
        assert m.heads.tolist() == sorted(sel[layer])
        assert m.A.shape == (spec.hidden_size, 3)
        assert m.B.shape == (len(sel[layer]), 3, spec.head_dim)
        assert m.gamma.shape == (1,) and float(m.gamma) == pytest.approx(0.01)
        assert torch.count_nonzero(m.B) == 0
        assert abs(float(m.A.std()) - 1 / 3) < 0.05
    expected = sum(spec.hidden_size * 3 + len(h) * 3 * spec.head_dim + 1 for h in sel.values())
    assert handle.num_parameters() == expected
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    handle.detach()


def test_every_token_visual_all_heads_equals_peft_lora(tiny):
    peft = pytest.importorskip("peft")
    model, processor = tiny
    spec = resolve_model(model)
    ids = torch.full((2, 12), spec.image_token_id)
    rank, alpha = 4, 8.0
    with torch.no_grad():
        base = model(input_ids=ids).logits
    handle = attach_image_lora(model, HeadSelection.all_heads(spec), rank=rank, alpha=alpha)
    _randomize(handle, seed=1)
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    state = {
        i: (m.A.detach().clone(), m.B.detach().clone(), float(m.gamma)) for i, m in handle.modules.items()
    }
    handle.detach()
    cfg = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=r".*(language_model|text_model)\.(model\.)?layers\.\d+\.self_attn\.v_proj",
    )
    pmodel = peft.get_peft_model(model, cfg)
    n_wrapped = 0
    with torch.no_grad():
        for i, layer in enumerate(decoder_layers(pmodel.base_model.model)):
            v = layer.self_attn.v_proj
            a, b, g = state[i]
            v.lora_A["default"].weight.copy_(a.T)
            b_full = b.permute(0, 2, 1).reshape(spec.num_kv_heads * spec.head_dim, rank)
            v.lora_B["default"].weight.copy_(b_full * g / math.sqrt(spec.num_kv_heads))
            n_wrapped += 1
        theirs = pmodel(input_ids=ids).logits
    assert n_wrapped == spec.num_layers
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours, base, atol=1e-3), "the adapter must change every-visual logits"
    pmodel.unload()


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_video_tokens_are_adapted(tiny):
    """Video inputs built by hand (the video processor needs torchvision): video rows get the delta."""
    model, processor = tiny
    spec = resolve_model(model)
    vcfg = model.config.vision_config
    merge, patch, tpatch = vcfg.spatial_merge_size, vcfg.patch_size, vcfg.temporal_patch_size
    # One temporal patch (Qwen3-VL splits longer clips into per-frame segments with timestamps).
    grid = torch.tensor([[1, 8, 8]])
    n_video = int(grid.prod()) // merge**2
    tok = processor.tokenizer
    start, end = tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
    text = tok("Describe the clip.", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[start] + [spec.video_token_id] * n_video + [end] + text])
    pixels = torch.randn(
        int(grid.prod()), 3 * tpatch * patch * patch, generator=torch.Generator().manual_seed(0)
    )
    batch = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values_videos=pixels,
        video_grid_thw=grid,
        mm_token_type_ids=(ids == spec.video_token_id).long() * 2,
    )
    handle = attach_image_lora(model, {0: [1]}, rank=4, alpha=8)
    _randomize(handle)
    records, hooks = _capture_vproj(model)  # after attach: sees the adapted output
    with torch.no_grad():
        model(**batch)
    x, out = records[0]
    v = decoder_layers(model)[0].self_attn.v_proj
    plain = torch.nn.functional.linear(x, v.weight, v.bias).view(
        1, ids.shape[1], spec.num_kv_heads, spec.head_dim
    )
    out4 = out.view_as(plain)
    video = ids == spec.video_token_id
    assert torch.equal(out4[~video], plain[~video])
    m = handle.modules[0]
    delta = torch.einsum("td,dr,rk->tk", x[video], m.A, m.B[0]) * (8 / 4) * m.gamma
    torch.testing.assert_close(out4[video][:, 1], plain[video][:, 1] + delta, rtol=1e-4, atol=1e-5)
    for h in hooks:
        h.remove()
    handle.detach()
