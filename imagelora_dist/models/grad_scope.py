"""Run the frozen parts below the lowest adapter under no_grad: the vision tower and decoder layers.

With a frozen base and no input grads, autograd already records nothing below the lowest adapted
layer. This makes it hold for every configuration: gradient checkpointing (which turns on input grads),
a peft wrapper, or a caller that leaves `requires_grad` on the embeddings. The backward then stops at
the lowest adapted layer, and the frozen forward below it keeps no activations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from imagelora_dist.models.registry import decoder_layers

VISION_TOWER_ATTRS = ("visual", "vision_tower", "vision_model")


def vision_tower(model: nn.Module) -> nn.Module | None:
    """The model's vision encoder module, if it has one under a known name."""
    for root in (getattr(model, "model", None), model):
        for attr in VISION_TOWER_ATTRS:
            tower = getattr(root, attr, None) if root is not None else None
            if isinstance(tower, nn.Module):
                return tower
    return None


def no_grad_below(model: nn.Module, lowest_layer: int) -> Callable[[], None]:
    """Wrap the vision tower and decoder layers [0, lowest_layer) in no_grad; returns an undo function."""
    modules = [m for m in (vision_tower(model),) if m is not None]
    modules += list(decoder_layers(model))[: max(0, lowest_layer)]
    wrapped = []
    for module in modules:
        if "forward" in module.__dict__:
            continue  # already wrapped (or patched by someone else): leave it alone
        module.forward = torch.no_grad()(module.forward)
        wrapped.append(module)

    def undo() -> None:
        for module in wrapped:
            module.__dict__.pop("forward", None)

    return undo
