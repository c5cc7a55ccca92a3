"""Head influence probes: score every (layer, KV head) by how much the loss wants its visual values changed.

- `rank1` (the paper): a rank-1 Image-LoRA on all KV heads with a fixed unit-norm A and B = 0;
  score(l, h) = ||dL/dB_l[h]||_F^2. At B = 0 only B has a gradient, so one backward scores all heads.
  With `num_vectors` > 1 the probe is rank-k with k unit-norm columns and the score is averaged over
  them: the same as averaging k seeds, for the price of one backward.
- `gate` (the authors' released selector): V[t, h] *= (1 + g_l[h]) at visual t with g = 0;
  score = (dL/dg_l[h])^2.

Loss = next-token cross-entropy on the answer tokens (the batch's `labels`, -100 elsewhere).
Per-batch scores are float64 and summed in list order, so the total depends only on the batch list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from imagelora_dist.adapter.hooks import ValuePathHooks, ValuePathModule, add_at_rows
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models.registry import ModelSpec, decoder_layers, resolve_model, value_projection

ProbeMethod = Literal["rank1", "gate"]
PROBE_METHODS: tuple[str, ...] = ("rank1", "gate")
CHILD_NAME = "image_lora_probe"


def unit_probe_vectors(hidden_size: int, num_vectors: int, seed: int) -> torch.Tensor:
    """[hidden, k] random directions with unit-norm columns, the same on every machine for a seed."""
    gen = torch.Generator().manual_seed(int(seed))
    a = torch.randn(hidden_size, num_vectors, generator=gen, dtype=torch.float64)
    return (a / a.norm(dim=0, keepdim=True)).to(torch.float32)


class RankKProbe(ValuePathModule):
    """Probe of the `rank1` method, of rank k = num_vectors: all KV heads, frozen unit-norm A, zero B."""

    def __init__(self, a: torch.Tensor, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.register_buffer("a", a, persistent=False)
        self.B = nn.Parameter(torch.zeros(a.shape[1], num_kv_heads, head_dim, device=a.device))
        self.register_buffer("heads", torch.arange(num_kv_heads, device=a.device), persistent=False)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Add (x_t @ a) B at visual rows (zero in value, non-zero in gradient)."""
        rows = self.tracker.rows_for(x)
        z = x.reshape(-1, x.shape[-1]).index_select(0, rows).float() @ self.a
        delta = torch.einsum("nk,khd->nhd", z, self.B)
        return add_at_rows(out, rows, [(0, self.heads.numel(), 0)], delta)

    def batch_scores(self) -> torch.Tensor:
        """Mean over probe vectors of ||dL/dB[h]||^2, float64 [kv_heads]."""
        grad = self.B.grad
        if grad is None:
            return torch.zeros(self.B.shape[1], dtype=torch.float64)
        return grad.double().pow(2).sum(dim=2).mean(dim=0).cpu()


class GateProbe(ValuePathModule):
    """A zero gate per KV head scaling its visual values by (1 + g)."""

    def __init__(self, num_kv_heads: int, head_dim: int, device: torch.device) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.g = nn.Parameter(torch.zeros(num_kv_heads, device=device))
        self.register_buffer("heads", torch.arange(num_kv_heads, device=device), persistent=False)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Add g_h * V[t, h] at visual rows."""
        rows = self.tracker.rows_for(x)
        values = out.reshape(-1, self.heads.numel(), self.head_dim).index_select(0, rows)
        delta = values.float() * self.g[None, :, None]
        return add_at_rows(out, rows, [(0, self.heads.numel(), 0)], delta)

    def batch_scores(self) -> torch.Tensor:
        """(dL/dg_h)^2, float64 [kv_heads]."""
        if self.g.grad is None:
            return torch.zeros(self.g.shape[0], dtype=torch.float64)
        return self.g.grad.double().pow(2).cpu()


class HeadProbe:
    """Attach a probe to every decoder layer, score batches one at a time, then `close()`.

    While open, the model's own parameters do not require grad and the model is in eval mode; both
    are restored on close.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "rank1",
        *,
        seed: int = 0,
        num_vectors: int = 1,
    ) -> None:
        if method not in PROBE_METHODS:
            raise ImageLoRAError(f"probe method {method!r} unknown; choose one of {', '.join(PROBE_METHODS)}")
        if num_vectors < 1:
            raise ImageLoRAError(f"probe num_vectors must be >= 1, got {num_vectors}")
        self.model = model
        self.method = method
        self.spec: ModelSpec = resolve_model(model)
        layers = decoder_layers(model)
        a = unit_probe_vectors(self.spec.hidden_size, num_vectors, seed)
        self.modules: dict[int, RankKProbe | GateProbe] = {}
        for index, layer in enumerate(layers):
            device = value_projection(layer).weight.device
            if method == "rank1":
                self.modules[index] = RankKProbe(a.to(device), self.spec.num_kv_heads, self.spec.head_dim)
            else:
                self.modules[index] = GateProbe(self.spec.num_kv_heads, self.spec.head_dim, device)
        # Hooks first: if attaching fails (say, a probe is already attached) nothing else has changed.
        self._hooks: ValuePathHooks | None = ValuePathHooks(model, self.spec, self.modules, CHILD_NAME)
        self._requires_grad = {
            name: p.requires_grad for name, p in model.named_parameters() if not name.count(f".{CHILD_NAME}.")
        }
        self._was_training = model.training
        for name, p in model.named_parameters():
            if name in self._requires_grad:
                p.requires_grad_(False)
        model.eval()

    def score_batch(self, batch: Mapping[str, Any], index: int = 0) -> torch.Tensor:
        """Forward + backward one labelled batch; float64 scores [layers, kv_heads]."""
        if self._hooks is None:
            raise ImageLoRAError("probe is closed")
        labels = batch.get("labels")
        if labels is None:
            raise ImageLoRAError(f"probe batch {index} has no 'labels' (answer tokens, -100 elsewhere)")
        if not bool((labels != -100).any()):
            raise ImageLoRAError(f"probe batch {index} has no answer tokens (all labels are -100)")
        for module in self.modules.values():
            for p in module.parameters():
                p.grad = None
        device = self.model.get_input_embeddings().weight.device
        inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        inputs.setdefault("use_cache", False)
        loss = self.model(**inputs).loss
        if loss is None or not torch.isfinite(loss):
            raise ImageLoRAError(f"probe batch {index}: loss is {loss} (check labels and inputs)")
        loss.backward()
        return torch.stack([self.modules[i].batch_scores() for i in range(len(self.modules))])

    def close(self) -> None:
        """Detach the probe and restore requires_grad flags and train/eval mode."""
        if self._hooks is None:
            return
        self._hooks.remove()
        self._hooks = None
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._requires_grad.get(name, p.requires_grad))
        self.model.train(self._was_training)

    def __enter__(self) -> HeadProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def probe_head_scores(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    method: str = "rank1",
    *,
    seed: int = 0,
    num_vectors: int = 1,
) -> torch.Tensor:
    """Sum per-batch head scores in float64 over `batches`, in order: scores[layer][kv_head]."""
    with HeadProbe(model, method, seed=seed, num_vectors=num_vectors) as probe:
        total = torch.zeros(probe.spec.num_layers, probe.spec.num_kv_heads, dtype=torch.float64)
        count = 0
        for index, batch in enumerate(batches):
            total += probe.score_batch(batch, index)
            count += 1
    if count == 0:
        raise ImageLoRAError("probe got no batches")
    return total
