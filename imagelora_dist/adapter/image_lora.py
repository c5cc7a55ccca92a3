"""Image-LoRA: a low-rank delta on `v_proj`, only at visual tokens, only for selected KV heads.

Per adapted layer l with selected heads S_l (H_sel = |S_l|), for visual token t and i-th head h = S_l[i]:

    V[t, h, :] += (alpha / r) * (1 / sqrt(H_sel)) * gamma_l * (x_t @ A_l) @ B_l[i]

A_l [hidden, r] ~ normal(std = 1/r), B_l [H_sel, r, head_dim] = 0, gamma_l = 0.01 (a scalar, stored
with shape [1]; all trainable).
The delta is computed on the gathered visual rows only, so its cost scales with the visual tokens.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from imagelora_dist.adapter.hooks import ValuePathHooks, ValuePathModule, add_at_rows, head_runs
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models.registry import ModelSpec, decoder_layers, resolve_model, value_projection
from imagelora_dist.selection import HeadSelection

CHILD_NAME = "image_lora"
GAMMA_INIT = 0.01


class ImageLoRALayer(ValuePathModule):
    """The adapter of one decoder layer: shared A, one B block per selected KV head, a scalar gate."""

    def __init__(
        self,
        layer_index: int,
        heads: Sequence[int],
        hidden_size: int,
        head_dim: int,
        num_kv_heads: int,
        rank: int,
        alpha: float,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not heads:
            raise ImageLoRAError(f"layer {layer_index}: an adapter needs at least one head")
        if rank < 1:
            raise ImageLoRAError(f"rank must be >= 1, got {rank}")
        self.layer_index = int(layer_index)
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.head_dim = int(head_dim)
        self.num_kv_heads = int(num_kv_heads)
        sorted_heads = sorted(int(h) for h in heads)
        self.register_buffer("heads", torch.tensor(sorted_heads, dtype=torch.long), persistent=False)
        self._runs = head_runs(sorted_heads)
        a = torch.randn(hidden_size, rank, generator=generator, dtype=torch.float32) / rank
        self.A = nn.Parameter(a.to(device=device, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(len(heads), rank, head_dim, device=device, dtype=dtype))
        # A one-element tensor rather than 0-d: DeepSpeed broadcasts and partitions parameters as byte
        # views, which a 0-d tensor cannot give.
        self.gamma = nn.Parameter(torch.full((1,), GAMMA_INIT, device=device, dtype=dtype))

    @property
    def num_heads(self) -> int:
        """H_sel: heads this layer adapts."""
        return int(self.heads.numel())

    @property
    def scaling(self) -> float:
        """The constant part of the scale: (alpha / r) / sqrt(H_sel)."""
        return self.alpha / self.rank / math.sqrt(self.num_heads)

    def delta(self, x_rows: torch.Tensor) -> torch.Tensor:
        """The per-head delta [N, H_sel, head_dim] for visual input rows [N, hidden], in adapter dtype."""
        z = x_rows.to(self.A.dtype) @ self.A
        # Scale the narrow [N, r] tensor rather than the wide [N, H_sel*head_dim] result.
        z = z * (self.gamma * self.scaling)
        b = self.B.transpose(0, 1).reshape(self.rank, -1)
        return (z @ b).view(-1, self.num_heads, self.head_dim)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Add the delta to `out` (the v_proj output) at the visual rows of `x`."""
        rows = self.tracker.rows_for(x)
        x_rows = x.reshape(-1, x.shape[-1]).index_select(0, rows)
        return add_at_rows(out, rows, self._runs, self.delta(x_rows))

    def extra_repr(self) -> str:
        """Shown by print(model)."""
        return f"layer={self.layer_index}, heads={self.heads.tolist()}, rank={self.rank}, alpha={self.alpha}"


class ImageLoRAHandle:
    """What `attach_image_lora` returns: the adapter modules, their metadata, `disabled()` and `detach()`."""

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        selection: HeadSelection,
        rank: int,
        alpha: float,
        modules: Mapping[int, ImageLoRALayer],
        frozen: dict[str, bool] | None,
    ) -> None:
        self.model = model
        self.spec = spec
        self.selection = selection
        self.rank = rank
        self.alpha = alpha
        self.modules: dict[int, ImageLoRALayer] = dict(sorted(modules.items()))
        self._hooks = ValuePathHooks(model, spec, self.modules, CHILD_NAME)
        self._frozen = frozen

    @property
    def attached(self) -> bool:
        """True until `detach()` is called."""
        return self._hooks is not None

    def parameters(self) -> Iterator[nn.Parameter]:
        """Trainable parameters of every adapted layer, in layer order (A, B, gamma)."""
        for module in self.modules.values():
            yield from module.parameters()

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Parameters named by decoder layer index, independent of transformers' module paths."""
        for layer, module in self.modules.items():
            for name, p in module.named_parameters():
                yield f"layers.{layer}.{name}", p

    def num_parameters(self) -> int:
        """Trainable parameter count (uses ds_numel under ZeRO-3, where numel() is 0)."""
        return sum(int(getattr(p, "ds_numel", p.numel())) for p in self.parameters())

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the frozen base model inside the block (bit for bit); the adapter is active again after it."""
        # Only a flag flips: hooks, modules and parameters stay registered, so nothing is re-created and
        # optimizers, DDP/ZeRO and checkpoint wrappers keep seeing the same objects. Blocks may nest.
        hooks = self._hooks
        if hooks is None:
            raise ImageLoRAError("the Image-LoRA handle is detached: nothing to disable")
        previous, hooks.enabled = hooks.enabled, False
        try:
            yield
        finally:
            hooks.enabled = previous

    def detach(self) -> None:
        """Remove hooks, modules and checkpoint wrappers; restore requires_grad: the model as before."""
        if self._hooks is None:
            return
        self._hooks.remove()
        self._hooks = None
        if self._frozen is not None:
            for name, p in self.model.named_parameters():
                if name in self._frozen:
                    p.requires_grad_(self._frozen[name])
            self._frozen = None

    def __enter__(self) -> ImageLoRAHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


def attach_image_lora(
    model: nn.Module,
    selection: HeadSelection | Mapping[int, Sequence[int]] | None,
    rank: int = 8,
    alpha: float = 16.0,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    freeze_base: bool = True,
) -> ImageLoRAHandle:
    """Attach Image-LoRA to the decoder's `v_proj` layers named by `selection` (None = every KV head).

    Adapter parameters are kept in `dtype` (fp32 by default, also on a bf16 model): inputs are cast to
    it and the delta cast back. With `freeze_base` the model's own parameters stop requiring grad
    until `detach()`.
    """
    spec = resolve_model(model)
    if selection is None:
        selection = HeadSelection.all_heads(spec)
    elif not isinstance(selection, HeadSelection):
        selection = HeadSelection.from_layers(selection, spec)
    selection.validate_for(spec)
    if not selection.layers:
        raise ImageLoRAError("selection has no heads: nothing to adapt")
    frozen = None
    if freeze_base:
        frozen = {name: p.requires_grad for name, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
    layers = decoder_layers(model)
    modules: dict[int, ImageLoRALayer] = {}
    for layer in selection.layers:
        # One generator per layer: a layer's init does not depend on which other layers are selected.
        gen = torch.Generator().manual_seed(seed * 100_003 + layer)
        modules[layer] = ImageLoRALayer(
            layer,
            selection.kv_indices[layer],
            spec.hidden_size,
            spec.head_dim,
            spec.num_kv_heads,
            rank,
            alpha,
            dtype=dtype,
            device=value_projection(layers[layer]).weight.device,
            generator=gen,
        )
    try:
        return ImageLoRAHandle(model, spec, selection, rank, alpha, modules, frozen)
    except Exception:
        if frozen is not None:
            for name, p in model.named_parameters():
                p.requires_grad_(frozen[name])
        raise
