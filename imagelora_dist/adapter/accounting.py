"""Trainable parameters and adapter-only training FLOPs of Image-LoRA and of standard LoRA.

FLOPs count the adapter's matrix multiplies only (2 FLOPs per multiply-add), and training = 3x forward
(forward, then gradients for inputs and for weights), the usual convention. The frozen model's own
compute is the same for every method and is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models.registry import ModelSpec, decoder_layers, resolve_model
from imagelora_dist.selection import HeadSelection

TRAIN_FLOP_FACTOR = 3


def image_lora_num_parameters(selection: HeadSelection, spec: ModelSpec, rank: int) -> int:
    """sum over adapted layers of hidden*r (A) + H_sel*r*head_dim (B) + 1 (gamma)."""
    return sum(
        spec.hidden_size * rank + len(selection.kv_indices[layer]) * rank * spec.head_dim + 1
        for layer in selection.layers
    )


def image_lora_train_flops(selection: HeadSelection, spec: ModelSpec, rank: int, visual_tokens: int) -> int:
    """Adapter-only training FLOPs for `visual_tokens` visual positions (text positions cost nothing)."""
    per_token = sum(
        2 * spec.hidden_size * rank + 2 * rank * len(selection.kv_indices[layer]) * spec.head_dim
        for layer in selection.layers
    )
    return TRAIN_FLOP_FACTOR * per_token * int(visual_tokens)


ALL_LINEAR = "all-linear"


def lora_target_linears(model: nn.Module, target_modules: Sequence[str] | str) -> list[nn.Linear]:
    """Decoder Linear layers a LoRA on `target_modules` (leaf names, or 'all-linear') would wrap."""
    layers = decoder_layers(model)
    names = (
        None
        if target_modules == ALL_LINEAR
        else {target_modules}
        if isinstance(target_modules, str)
        else set(target_modules)
    )
    found = [
        m
        for layer in layers
        for name, m in layer.named_modules()
        if isinstance(m, nn.Linear) and (names is None or name.rsplit(".", 1)[-1] in names)
    ]
    if not found:
        raise ImageLoRAError(f"LoRA target_modules {target_modules!r} match no Linear in the decoder layers")
    return found


def lora_num_parameters(model: nn.Module, target_modules: Sequence[str] | str, rank: int) -> int:
    """r * (in + out) for every targeted decoder Linear."""
    return sum(rank * (m.in_features + m.out_features) for m in lora_target_linears(model, target_modules))


def lora_train_flops(model: nn.Module, target_modules: Sequence[str] | str, rank: int, tokens: int) -> int:
    """Adapter-only training FLOPs of standard LoRA: every token goes through every targeted module."""
    per_token = sum(
        2 * rank * (m.in_features + m.out_features) for m in lora_target_linears(model, target_modules)
    )
    return TRAIN_FLOP_FACTOR * per_token * int(tokens)


@dataclass(frozen=True)
class TokenCounts:
    """Token positions in one batch: visual (image/video), text (real, non-visual) and padded total."""

    visual: int
    text: int
    total: int

    @property
    def visual_fraction(self) -> float:
        """Visual share of the real (non-padding) tokens."""
        real = self.visual + self.text
        return self.visual / real if real else 0.0


def count_tokens(
    input_ids: torch.Tensor, spec: ModelSpec, attention_mask: torch.Tensor | None = None
) -> TokenCounts:
    """Count visual and text tokens in a batch, from its actual ids."""
    visual_ids = torch.tensor(spec.visual_token_ids, device=input_ids.device, dtype=input_ids.dtype)
    visual = torch.isin(input_ids, visual_ids)
    real = torch.ones_like(visual) if attention_mask is None else attention_mask.bool()
    n_visual = int((visual & real).sum())
    return TokenCounts(visual=n_visual, text=int(real.sum()) - n_visual, total=int(input_ids.numel()))


@dataclass(frozen=True)
class AdapterCost:
    """Parameters and per-batch adapter FLOPs of one method on one batch."""

    method: str
    trainable_params: int
    train_flops: int


def compare_costs(
    model: nn.Module,
    selection: HeadSelection,
    rank: int,
    input_ids: torch.Tensor,
    *,
    lora_targets: dict[str, Sequence[str] | str] | None = None,
    lora_rank: int | None = None,
) -> list[AdapterCost]:
    """Image-LoRA vs standard LoRA variants on one batch (padded positions are computed by LoRA too)."""
    spec = resolve_model(model)
    counts = count_tokens(input_ids, spec)
    lora_rank = rank if lora_rank is None else lora_rank
    targets = (
        lora_targets
        if lora_targets is not None
        else {"lora_v_proj": ["v_proj"], "lora_all_linear": ALL_LINEAR}
    )
    costs = [
        AdapterCost(
            "image_lora",
            image_lora_num_parameters(selection, spec, rank),
            image_lora_train_flops(selection, spec, rank, counts.visual),
        )
    ]
    for name, tm in targets.items():
        costs.append(
            AdapterCost(
                name,
                lora_num_parameters(model, tm, lora_rank),
                lora_train_flops(model, tm, lora_rank, counts.total),
            )
        )
    return costs
