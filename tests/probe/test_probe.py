"""Head probes against an independent computation from the value-projection gradients."""

from __future__ import annotations

import pytest
import torch
from vlm_batches import image_batch, visual_mask

from imagelora_dist import ImageLoRAError, probe_head_scores, resolve_model
from imagelora_dist.models.registry import decoder_layers
from imagelora_dist.probe.scores import unit_probe_vectors


def _value_grads(model, batch):
    """dL/dV for every decoder layer's v_proj output, and the v_proj inputs and outputs (no probe attached)."""
    saved, handles = {}, []
    for i, layer in enumerate(decoder_layers(model)):

        def hook(mod, args, out, i=i):
            if not out.requires_grad:  # lowest layer: nothing upstream needs gradients, make it a leaf
                out = out.detach().requires_grad_()
            out.retain_grad()
            saved[i] = (args[0].detach(), out)
            return out

        handles.append(layer.self_attn.v_proj.register_forward_hook(hook))
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        model(**batch, use_cache=False).loss.backward()
    finally:
        for h in handles:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(grads[n])
    return {i: (x, out.detach(), out.grad) for i, (x, out) in saved.items()}


@pytest.mark.parametrize("method", ["rank1", "gate"])
def test_probe_matches_value_gradient_computation(tiny, method):
    model, processor = tiny
    spec = resolve_model(model)
    batch = image_batch(processor, n=2)
    model.eval()
    scores = probe_head_scores(model, [batch], method=method, seed=7, num_vectors=2)
    assert scores.dtype == torch.float64 and scores.shape == (spec.num_layers, spec.num_kv_heads)
    vals = _value_grads(model, batch)
    mask = visual_mask(batch, spec).reshape(-1)
    a = unit_probe_vectors(spec.hidden_size, 2, seed=7).double()
    expected = torch.zeros_like(scores)
    for layer, (x, v, g) in vals.items():
        x = x.reshape(-1, spec.hidden_size)[mask].double()
        g = g.reshape(-1, spec.num_kv_heads, spec.head_dim)[mask].double()
        v = v.reshape(-1, spec.num_kv_heads, spec.head_dim)[mask].double()
        if method == "rank1":
            # dL/dB[k, h] = sum_t (x_t . a_k) dL/dV[t, h]; score = mean_k ||.||^2
            grad_b = torch.einsum("td,dk,thc->khc", x, a, g)
            expected[layer] = grad_b.pow(2).sum(-1).mean(0)
        else:
            # dL/dg_h = sum_t <dL/dV[t, h], V[t, h]>
            expected[layer] = torch.einsum("thc,thc->h", g, v).pow(2)
    assert expected.sum() > 0
    torch.testing.assert_close(scores, expected, rtol=2e-3, atol=1e-12)


def test_probe_is_deterministic_and_sums_batches_in_float64(tiny):
    model, processor = tiny
    b1, b2 = image_batch(processor, seed=1), image_batch(processor, seed=2)
    s12 = probe_head_scores(model, [b1, b2])
    again = probe_head_scores(model, [b1, b2])
    assert torch.equal(s12, again)
    s1, s2 = probe_head_scores(model, [b1]), probe_head_scores(model, [b2])
    assert torch.equal(s12, s1 + s2)
    assert (s12 > 0).any()


def test_probe_restores_model(tiny):
    model, processor = tiny
    model.train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    keys = set(model.state_dict())
    probe_head_scores(model, [image_batch(processor)], method="gate")
    assert model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert set(model.state_dict()) == keys
    assert all(p.grad is None for p in model.parameters())


def test_probe_vectors_unit_norm_and_seeded():
    a = unit_probe_vectors(64, 3, seed=5)
    torch.testing.assert_close(a.norm(dim=0), torch.ones(3))
    assert torch.equal(a, unit_probe_vectors(64, 3, seed=5))
    assert not torch.equal(a, unit_probe_vectors(64, 3, seed=6))


@pytest.mark.parametrize("family", ["qwen2_5_vl"])
def test_probe_rejects_bad_input(tiny):
    model, processor = tiny
    batch = image_batch(processor)
    with pytest.raises(ImageLoRAError, match="method"):
        probe_head_scores(model, [batch], method="fisher")
    no_labels = {k: v for k, v in batch.items() if k != "labels"}
    with pytest.raises(ImageLoRAError, match="labels"):
        probe_head_scores(model, [no_labels])
    masked = dict(batch, labels=torch.full_like(batch["labels"], -100))
    with pytest.raises(ImageLoRAError, match="answer tokens"):
        probe_head_scores(model, [masked])
    with pytest.raises(ImageLoRAError, match="no batches"):
        probe_head_scores(model, [])
