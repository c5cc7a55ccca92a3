"""Trainable parameters and adapter-only training FLOPs of Image-LoRA and of standard LoRA.

FLOPs count the adapter's matrix multiplies only (2 FLOPs per multiply-add), and training = 3x forward
(forward, then gradients for inputs and for weights), the usual convention. The frozen model's own
compute is the same for every method and is left out.
"""

from __future__ import annotations

import re
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
TargetModules = Sequence[str] | str


def lora_target_linears(model: nn.Module, target_modules: TargetModules) -> dict[str, nn.Linear]:
    """The Linear layers peft's LoRA wraps for `target_modules`, by qualified name.

    Same matching as peft: a string is a full-match regex over module names, a list matches name suffixes,
    'all-linear' is every Linear but the output head. Note that a plain list such as ["v_proj"] also hits
    the vision towers of LLaVA, Idefics3 and Gemma3; `decoder_lora_targets` builds decoder-only targets.
    """
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR:
        found = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}
    else:
        config = LoraConfig(
            target_modules=target_modules if isinstance(target_modules, str) else list(target_modules)
        )
        found = {
            n: m
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and check_target_module_exists(config, n)
        }
    if not found:
        raise ImageLoRAError(f"LoRA target_modules {target_modules!r} match no Linear layer of the model")
    return found


def decoder_lora_targets(model: nn.Module, names: Sequence[str] | str = ALL_LINEAR) -> str:
    """A peft `target_modules` regex for Linear layers of the text decoder only (the paper's LoRA baseline).

    `names` are leaf names (e.g. ["q_proj", "v_proj"]) or 'all-linear' for every Linear in the decoder layers.
    """
    layers = decoder_layers(model)
    prefix = next(n for n, m in model.named_modules() if m is layers)
    wanted = None if names == ALL_LINEAR else {names} if isinstance(names, str) else set(names)
    leaves = sorted(
        {
            n
            for n, m in layers[0].named_modules()
            if isinstance(m, nn.Linear) and (wanted is None or n.rsplit(".", 1)[-1] in wanted)
        }
    )
    if not leaves:
        raise ImageLoRAError(f"no Linear named {sorted(wanted or [])} in the decoder layers")
    return rf"{re.escape(prefix)}\.\d+\.(?:{'|'.join(re.escape(leaf) for leaf in leaves)})"


def lora_num_parameters(model: nn.Module, target_modules: TargetModules, rank: int) -> int:
    """r * (in + out) for every Linear the LoRA wraps."""
    return sum(
        rank * (m.in_features + m.out_features) for m in lora_target_linears(model, target_modules).values()
    )


def lora_train_flops(
    model: nn.Module, target_modules: TargetModules, rank: int, tokens: int, vision_rows: int | None = None
) -> int:
    """Adapter-only training FLOPs of standard LoRA: every token goes through every targeted module.

    Decoder modules see the `tokens` text-model positions; modules outside the decoder (vision tower,
    projector) see `vision_rows` rows, which must then be given.
    """
    decoder_ids = {id(m) for m in decoder_layers(model).modules()}
    total = 0
    for name, m in lora_target_linears(model, target_modules).items():
        rows = tokens if id(m) in decoder_ids else vision_rows
        if rows is None:
            raise ImageLoRAError(
                f"LoRA targets {name} outside the text decoder: pass vision_rows to count its FLOPs"
            )
        total += 2 * rank * (m.in_features + m.out_features) * int(rows)
    return TRAIN_FLOP_FACTOR * total


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
    lora_targets: dict[str, TargetModules] | None = None,
    lora_rank: int | None = None,
) -> list[AdapterCost]:
    """Image-LoRA vs decoder-only standard LoRA variants on one batch (LoRA computes padded positions too)."""
    spec = resolve_model(model)
    counts = count_tokens(input_ids, spec)
    lora_rank = rank if lora_rank is None else lora_rank
    targets = (
        lora_targets
        if lora_targets is not None
        else {
            "lora_v_proj": decoder_lora_targets(model, ["v_proj"]),
            "lora_all_linear": decoder_lora_targets(model),
        }
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
