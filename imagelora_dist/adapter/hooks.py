"""Route each decoder layer's `v_proj` output through a module that sees only visual-token rows.

Shared by the Image-LoRA adapter and the head probes. A forward pre-hook on the model root turns
`input_ids` into flat visual row indices once per forward; every adapted layer then gathers those rows.
The indices live on the tracker, not on a context manager's stack, so they are still there when
non-reentrant gradient checkpointing recomputes a layer during `backward()`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models.registry import (
    ModelSpec,
    decoder_layers,
    value_projection,
    visual_token_mask,
)

_VISUAL_INPUT_KEYS = ("pixel_values", "pixel_values_videos")


class VisualTokenTracker:
    """Holds the visual row indices of the current forward, computed from its `input_ids`."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.shape: tuple[int, int] | None = None
        self._rows: torch.Tensor | None = None
        self._rows_on: dict[torch.device, torch.Tensor] = {}

    def update(self, input_ids: torch.Tensor | None, has_visual_inputs: bool = False) -> None:
        """Recompute the visual rows for a new forward (text-only when there are no input_ids)."""
        self._rows_on = {}
        if input_ids is None:
            if has_visual_inputs:
                raise ImageLoRAError(
                    "Image-LoRA needs input_ids to locate visual tokens; got pixel values without input_ids"
                )
            self.shape, self._rows = None, None
            return
        mask = visual_token_mask(input_ids, self.spec)
        self.shape = (int(input_ids.shape[0]), int(input_ids.shape[-1]))
        self._rows = mask.reshape(-1).nonzero().squeeze(1)

    def rows_for(self, x: torch.Tensor) -> torch.Tensor:
        """Flat indices of visual rows of `x` ([batch, seq, hidden]), on `x`'s device."""
        if self._rows is None:
            return torch.empty(0, dtype=torch.long, device=x.device)
        if tuple(x.shape[:2]) != self.shape:
            raise ImageLoRAError(
                f"v_proj input has shape {tuple(x.shape[:2])} but input_ids had {self.shape}: "
                "the visual mask cannot be aligned (was the model called with inputs_embeds only?)"
            )
        rows = self._rows_on.get(x.device)
        if rows is None:
            rows = self._rows_on[x.device] = self._rows.to(x.device)
        return rows

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Forward pre-hook for the model root: read `input_ids` positionally or by keyword."""
        input_ids = kwargs.get("input_ids")
        if input_ids is None and args and isinstance(args[0], torch.Tensor):
            input_ids = args[0]
        has_visual = any(kwargs.get(k) is not None for k in _VISUAL_INPUT_KEYS)
        self.update(input_ids, has_visual)


class ValuePathModule(nn.Module):
    """Base for modules that rewrite a `v_proj` output from its input: forward(x, out) -> out."""

    tracker: VisualTokenTracker

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Return `out` with the module's change applied at visual rows."""
        raise NotImplementedError


def head_runs(heads: list[int]) -> list[tuple[int, int, int]]:
    """Split sorted head indices into contiguous runs: (first head, end head, offset in the selection)."""
    runs: list[tuple[int, int, int]] = []
    for i, h in enumerate(heads):
        if runs and runs[-1][1] == h:
            first, _, offset = runs[-1]
            runs[-1] = (first, h + 1, offset)
        else:
            runs.append((h, h + 1, i))
    return runs


def add_at_rows(
    out: torch.Tensor, rows: torch.Tensor, runs: list[tuple[int, int, int]], delta: torch.Tensor
) -> torch.Tensor:
    """out[rows, heads, :] += delta, in place on the `v_proj` output viewed as [rows, kv_heads, head_dim].

    In place because the projection's output is a fresh tensor that autograd does not save; an
    out-of-place add would copy the whole [batch, seq, kv*head_dim] tensor in every adapted layer.
    One `index_add_` per contiguous run of heads (usually one): each touched element gets exactly one
    addition, so the result is deterministic on every device. With no visual rows this is a no-op, so
    text-only outputs keep every bit (even -0.0), while the adapter parameters stay in the graph with
    zero gradients (DDP/ZeRO ranks stay in step).
    """
    head_dim = delta.shape[-1]
    flat = out.view(-1, out.shape[-1] // head_dim, head_dim)
    delta = delta.to(out.dtype)
    for first, end, offset in runs:
        flat[:, first:end].index_add_(0, rows, delta[:, offset : offset + end - first])
    return out


class ValuePathHooks:
    """Attach one ValuePathModule per decoder layer; `remove()` puts the model back exactly."""

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        modules: Mapping[int, ValuePathModule],
        child_name: str,
    ) -> None:
        self.model = model
        self.spec = spec
        self.tracker = VisualTokenTracker(spec)
        self.child_name = child_name
        self.modules = dict(modules)
        layers = decoder_layers(model)
        self._handles: list[RemovableHandle] = []
        self._parents: list[nn.Module] = []
        for layer_index, module in sorted(self.modules.items()):
            attn = layers[layer_index].self_attn
            if hasattr(attn, child_name):
                self.remove()
                raise ImageLoRAError(
                    f"layer {layer_index} already has a {child_name!r} attached; detach it first"
                )
            module.tracker = self.tracker
            # A registered child that is *called* as a module: ZeRO-3 gathers its parameters in its hooks.
            attn.add_module(child_name, module)
            self._parents.append(attn)
            v_proj = value_projection(layers[layer_index])
            self._handles.append(v_proj.register_forward_hook(_call_module(module)))
        self._handles.append(model.register_forward_pre_hook(self.tracker.pre_hook, with_kwargs=True))

    def remove(self) -> None:
        """Remove every hook and child module added by this object (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for attn in self._parents:
            if self.child_name in attn._modules:
                del attn._modules[self.child_name]
        self._parents = []


def _call_module(module: ValuePathModule) -> Callable:
    def hook(_v_proj: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return module(args[0], out)

    return hook
