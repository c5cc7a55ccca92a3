"""Route each decoder layer's `v_proj` output through a module that sees only visual-token rows.

Shared by the Image-LoRA adapter and the head probes. A forward pre-hook on the model (and on its inner
multimodal model, for callers that use it directly) turns `input_ids` into flat visual row indices once
per forward, and a post-hook forgets them when that forward returns: a later direct call of the text
decoder is text-only, never adapted at some earlier batch's image positions.

Gradient checkpointing recomputes a layer during `backward()`, possibly after other forwards have run
(two losses, one backward), and transformers checkpoints a layer's `forward`, so the layer's own hooks do
not run again. Each decoder layer's pre-hook therefore wraps the layer's `_gradient_checkpointing_func`
(once, and again whenever transformers replaces it) in a function that hands each call's rows to the
checkpoint through `context_fn` (torch's mechanism for exactly this): the recompute context re-activates
the rows of the forward being replayed. `remove()` takes the wrapper out again, so the attribute is the
very object transformers set (or absent, if it was).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
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


class VisualRows:
    """The visual rows of one forward: flat indices into [batch * seq], and the [batch, seq] shape."""

    def __init__(self, rows: torch.Tensor, shape: tuple[int, int]) -> None:
        self.rows = rows
        self.shape = shape
        self._on: dict[torch.device, torch.Tensor] = {rows.device: rows}

    def on(self, device: torch.device) -> torch.Tensor:
        """The indices on `device` (copied once per device, for models split across GPUs)."""
        rows = self._on.get(device)
        if rows is None:
            rows = self._on[device] = self.rows.to(device)
        return rows


class VisualTokenTracker:
    """Computes each forward's visual rows and hands the right ones to the layer being computed."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.current: VisualRows | None = None  # of the model forward in progress
        self.active: VisualRows | None = None  # of the decoder layer being computed (or recomputed)
        self._depth = 0
        self._warned_embeds = False  # said once that inputs_embeds alone adapt nothing

    def rows_from_ids(self, input_ids: torch.Tensor) -> VisualRows:
        """Visual row indices of a batch of token ids."""
        mask = visual_token_mask(input_ids, self.spec)
        return VisualRows(
            mask.reshape(-1).nonzero().squeeze(1), (int(input_ids.shape[0]), int(input_ids.shape[-1]))
        )

    def model_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Forward pre-hook of the model: read `input_ids` positionally or by keyword."""
        input_ids = kwargs.get("input_ids")
        if input_ids is None and args and isinstance(args[0], torch.Tensor):
            input_ids = args[0]
        self._depth += 1
        if input_ids is None:
            if any(kwargs.get(k) is not None for k in _VISUAL_INPUT_KEYS):
                self._depth -= 1
                raise ImageLoRAError(
                    "Image-LoRA needs input_ids to locate visual tokens; got pixel values without input_ids"
                )
            if self._depth == 1:
                self.current = None
                if kwargs.get("inputs_embeds") is not None and not self._warned_embeds:
                    # The visual positions are read from the ids: embeddings alone hide them.
                    self._warned_embeds = True
                    warnings.warn(
                        "Image-LoRA: called with inputs_embeds and no input_ids, so it cannot tell the visual "
                        "tokens and adds nothing; pass input_ids (with pixel values) to adapt",
                        UserWarning,
                        stacklevel=2,
                    )
            return
        self.current = self.rows_from_ids(input_ids)

    def model_post_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        """Forward hook (always called, also on error): forget the rows once the outermost call returns."""
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self.current = None
            self.active = None

    def layer_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Decoder-layer pre-hook: activate this forward's rows, and carry them into a checkpoint's replay."""
        self.active = self.current
        func = getattr(module, "_gradient_checkpointing_func", None)
        if (
            getattr(module, "gradient_checkpointing", False)
            and func is not None
            and self not in _owners(func)
        ):
            module._gradient_checkpointing_func = ReplayWithRows(func, self)

    @contextlib.contextmanager
    def activated(self, rows: VisualRows | None) -> Iterator[None]:
        """Make `rows` the active rows for the block (a checkpoint's replay of the forward they belong to)."""
        previous, self.active = self.active, rows
        try:
            yield
        finally:
            self.active = previous

    def rows_for(self, x: torch.Tensor) -> torch.Tensor:
        """Flat indices of visual rows of `x` ([batch, seq, hidden]), on `x`'s device."""
        rows = self.active
        if rows is None:
            return torch.empty(0, dtype=torch.long, device=x.device)
        if tuple(x.shape[:2]) != rows.shape:
            raise ImageLoRAError(
                f"v_proj input has shape {tuple(x.shape[:2])} but input_ids had {rows.shape}: "
                "the visual mask cannot be aligned (was the model called with inputs_embeds only?)"
            )
        return rows.on(x.device)


class ReplayWithRows:
    """A layer's checkpoint function whose replay in `backward()` sees the visual rows of its own forward."""

    def __init__(self, base: Callable, tracker: VisualTokenTracker) -> None:
        root = base
        while isinstance(root, ReplayWithRows):
            root = root.base
        if (getattr(root, "keywords", None) or {}).get("use_reentrant", True) is not False:
            raise ImageLoRAError(
                "Image-LoRA needs non-reentrant gradient checkpointing: "
                "gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})"
            )
        self.base = base
        self.tracker = tracker

    def __call__(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        """Checkpoint `function` through the base, adding this forward's rows to the recompute context."""
        # A context_fn given by an outer wrapper overrides the one bound in transformers' partial at call
        # time: keep both, and the user's own.
        fns = [kwargs.pop("context_fn", None), (getattr(self.base, "keywords", None) or {}).get("context_fn")]
        fns = [fn for fn in fns if fn is not None]
        tracker, rows = self.tracker, self.tracker.current  # the model forward running this layer

        def context_fn() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
            pairs = [fn() for fn in fns]
            return _all([f for f, _ in pairs]), _all([r for _, r in pairs] + [tracker.activated(rows)])

        return self.base(function, *args, context_fn=context_fn, **kwargs)


@contextlib.contextmanager
def _all(contexts: list[contextlib.AbstractContextManager]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for ctx in contexts:
            stack.enter_context(ctx)
        yield


def _owners(func: Callable) -> list[VisualTokenTracker]:
    owners = []
    while isinstance(func, ReplayWithRows):
        owners.append(func.tracker)
        func = func.base
    return owners


def _without(func: Callable, tracker: VisualTokenTracker) -> Callable:
    """`func` with `tracker`'s wrapper taken out (others kept, in order); `func` itself if it has none."""
    owners = _owners(func)
    if tracker not in owners:
        return func
    while isinstance(func, ReplayWithRows):
        func = func.base
    for owner in reversed(owners):
        if owner is not tracker:
            func = ReplayWithRows(func, owner)
    return func


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
    for first, end, offset in runs:
        part = delta[:, offset : offset + end - first]
        if part.dtype == out.dtype:
            flat[:, first:end].index_add_(0, rows, part)
        else:
            # An fp32 delta on a bf16 output: add in the delta's precision and round once, instead of
            # rounding the delta to bf16 and then rounding the sum again. Rows are distinct: a plain copy.
            summed = flat[:, first:end].index_select(0, rows).to(part.dtype) + part
            flat[:, first:end].index_copy_(0, rows, summed.to(out.dtype))
    return out


class ValuePathHooks:
    """Attach one ValuePathModule per decoder layer; `remove()` puts the model back exactly.

    While `enabled` is False the `v_proj` hooks return the projection's output untouched (the modules are
    not called), so the model computes exactly the frozen base model.
    """

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
        self.enabled = True
        layers = decoder_layers(model)
        self._layers: list[nn.Module] = list(layers)
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
            self._handles.append(v_proj.register_forward_hook(_call_module(module, self)))
        for layer in layers:
            self._handles.append(
                layer.register_forward_pre_hook(self.tracker.layer_pre_hook, with_kwargs=True)
            )
        # The root and, where there is one, the inner multimodal model (callers may use either).
        inner = getattr(model, "model", None)
        for target in (model, inner) if isinstance(inner, nn.Module) else (model,):
            self._handles.append(
                target.register_forward_pre_hook(self.tracker.model_pre_hook, with_kwargs=True)
            )
            self._handles.append(
                target.register_forward_hook(self.tracker.model_post_hook, with_kwargs=True, always_call=True)
            )

    def remove(self) -> None:
        """Remove every hook, child module and checkpoint wrapper added by this object (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for attn in self._parents:
            if self.child_name in attn._modules:
                del attn._modules[self.child_name]
        self._parents = []
        for layer in self._layers:
            func = layer.__dict__.get("_gradient_checkpointing_func")
            if func is not None and self.tracker in _owners(func):
                layer._gradient_checkpointing_func = _without(func, self.tracker)
        self._layers = []


def _call_module(module: ValuePathModule, hooks: ValuePathHooks) -> Callable:
    def hook(_v_proj: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        if not hooks.enabled:
            return None  # keep the projection's own output
        return module(args[0], out)

    return hook
