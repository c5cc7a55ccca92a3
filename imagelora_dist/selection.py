"""Head selection: split a KV-head budget across layers by probe mass, then take top heads per layer.

The JSON it writes is readable by the authors' scripts (`kv_indices`, `layer_budgets_kv`, `scores`,
`hkv`, `tau`, `num_heads` with string layer keys) and carries our provenance fields beside them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imagelora_dist.errors import SelectionError
from imagelora_dist.models.registry import ModelSpec

FORMAT_VERSION = 1


@dataclass
class HeadSelection:
    """Selected KV heads per decoder layer (`kv_indices[layer]` sorted; empty = no adapter there)."""

    kv_indices: dict[int, list[int]]
    hkv: int
    num_layers: int
    scores: list[list[float]] | None = None
    tau: float | None = None
    family: str | None = None
    probe_method: str | None = None
    probe_examples: int | None = None
    config_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kv_indices = {int(k): sorted(int(h) for h in v) for k, v in self.kv_indices.items()}
        self._check_internal()

    def _check_internal(self) -> None:
        if self.hkv < 1 or self.num_layers < 1:
            raise SelectionError(
                f"selection needs hkv >= 1 and num_layers >= 1, got {self.hkv}, {self.num_layers}"
            )
        for layer, heads in self.kv_indices.items():
            if not 0 <= layer < self.num_layers:
                raise SelectionError(f"selection layer {layer} out of range [0, {self.num_layers})")
            if len(set(heads)) != len(heads):
                raise SelectionError(f"selection layer {layer} repeats a head: {heads}")
            for h in heads:
                if not 0 <= h < self.hkv:
                    raise SelectionError(f"selection layer {layer} head {h} out of range [0, {self.hkv})")

    @property
    def layers(self) -> list[int]:
        """Layers that carry an adapter (at least one head selected), ascending."""
        return sorted(layer for layer, heads in self.kv_indices.items() if heads)

    @property
    def total_heads(self) -> int:
        """Number of KV heads selected over all layers."""
        return sum(len(h) for h in self.kv_indices.values())

    def layer_budgets(self) -> list[int]:
        """Heads selected in each layer, index = layer."""
        return [len(self.kv_indices.get(layer, [])) for layer in range(self.num_layers)]

    def validate_for(self, spec: ModelSpec) -> None:
        """Fail with a clear message if this selection does not fit the model's decoder."""
        if self.num_layers != spec.num_layers or self.hkv != spec.num_kv_heads:
            raise SelectionError(
                f"selection is for {self.num_layers} layers x {self.hkv} KV heads, but the model "
                f"({spec.family}) has {spec.num_layers} x {spec.num_kv_heads}"
            )
        if self.family is not None and self.family != spec.family:
            raise SelectionError(f"selection was made for family {self.family!r}, model is {spec.family!r}")

    @classmethod
    def all_heads(cls, spec: ModelSpec) -> HeadSelection:
        """Every KV head of every layer (the `image_lora_all` variant)."""
        return cls(
            kv_indices={layer: list(range(spec.num_kv_heads)) for layer in range(spec.num_layers)},
            hkv=spec.num_kv_heads,
            num_layers=spec.num_layers,
            family=spec.family,
        )

    @classmethod
    def from_layers(cls, kv_indices: Mapping[int, Sequence[int]], spec: ModelSpec) -> HeadSelection:
        """A selection from a plain {layer: heads} mapping, checked against the model."""
        sel = cls(
            kv_indices={int(k): list(v) for k, v in kv_indices.items()},
            hkv=spec.num_kv_heads,
            num_layers=spec.num_layers,
            family=spec.family,
        )
        return sel

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the authors' keys (string layer ids) plus ours."""
        layers = range(self.num_layers)
        out: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "num_heads": self.total_heads,
            "tau": self.tau,
            "layer_budgets_kv": {str(layer): len(self.kv_indices.get(layer, [])) for layer in layers},
            "kv_indices": {str(layer): list(self.kv_indices.get(layer, [])) for layer in layers},
            "hkv": {str(layer): self.hkv for layer in layers},
            "num_layers": self.num_layers,
            "family": self.family,
            "probe_method": self.probe_method,
            "probe_examples": self.probe_examples,
            "config_hash": self.config_hash,
        }
        if self.scores is not None:
            out["scores"] = {str(layer): list(self.scores[layer]) for layer in layers}
        out.update(self.extra)
        return out

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file, then rename), so a crash never leaves half a selection."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "selection") -> HeadSelection:
        """Parse our JSON or the authors' (`kv_indices` or `selected_kv`)."""
        kv = data.get("kv_indices", data.get("selected_kv"))
        if not isinstance(kv, Mapping):
            raise SelectionError(f"{source}: no 'kv_indices' mapping of layer -> heads")
        try:
            kv_indices = {int(k): [int(h) for h in v] for k, v in kv.items()}
        except (TypeError, ValueError) as exc:
            raise SelectionError(
                f"{source}: 'kv_indices' must map integer layers to integer lists ({exc})"
            ) from None
        hkv_raw = data.get("hkv")
        if isinstance(hkv_raw, Mapping):
            try:
                values = {int(v) for v in hkv_raw.values()}
            except (TypeError, ValueError):
                raise SelectionError(f"{source}: 'hkv' values must be integers") from None
            if len(values) != 1:
                raise SelectionError(f"{source}: 'hkv' differs between layers {sorted(values)}")
            hkv = values.pop()
        elif isinstance(hkv_raw, int):
            hkv = hkv_raw
        else:
            raise SelectionError(f"{source}: missing 'hkv' (KV heads per layer)")
        num_layers = int(data.get("num_layers") or (len(hkv_raw) if isinstance(hkv_raw, Mapping) else 0))
        if num_layers <= 0:
            num_layers = max(kv_indices, default=-1) + 1
        scores_raw = data.get("scores")
        scores = None
        if isinstance(scores_raw, Mapping):
            scores = [
                [float(s) for s in scores_raw[str(layer)]]
                for layer in range(num_layers)
                if str(layer) in scores_raw
            ]
            if len(scores) != num_layers:
                scores = None
        known = {
            "format_version",
            "num_heads",
            "tau",
            "layer_budgets_kv",
            "kv_indices",
            "selected_kv",
            "hkv",
            "num_layers",
            "family",
            "probe_method",
            "probe_examples",
            "config_hash",
            "scores",
        }
        return cls(
            kv_indices=kv_indices,
            hkv=hkv,
            num_layers=num_layers,
            scores=scores,
            tau=data.get("tau"),
            family=data.get("family"),
            probe_method=data.get("probe_method"),
            probe_examples=data.get("probe_examples"),
            config_hash=data.get("config_hash"),
            extra={k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> HeadSelection:
        """Read a selection file (ours or the authors'), with a clear error naming the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SelectionError(f"{path}: head selection file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SelectionError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, Mapping):
            raise SelectionError(f"{path}: expected a JSON object")
        return cls.from_dict(data, source=str(path))


def resolve_budget(budget: int | float, total_heads: int) -> int:
    """A budget given as a count (int >= 1) or a fraction of all KV heads (0 < float <= 1) -> a count."""
    if isinstance(budget, bool):
        raise SelectionError(f"budget must be a count or a fraction, got {budget!r}")
    if isinstance(budget, float):
        if not 0.0 < budget <= 1.0:
            raise SelectionError(f"budget fraction must be in (0, 1], got {budget}")
        return max(1, math.floor(budget * total_heads + 0.5))
    if isinstance(budget, int):
        if not 1 <= budget <= total_heads:
            raise SelectionError(
                f"budget {budget} heads is outside [1, {total_heads}] (all KV heads of the model)"
            )
        return budget
    raise SelectionError(f"budget must be an int count or a float fraction, got {type(budget).__name__}")


def allocate_layer_budgets(masses: Sequence[float], caps: Sequence[int], total: int, tau: float) -> list[int]:
    """k_l proportional to mass_l**tau, rounded, capped, then repaired to sum to `total`.

    Repair is deterministic: add to the highest-mass layers first, remove from the lowest-mass first,
    ties broken by layer index; passes repeat until the total is met (it always is when total <= sum(caps)).
    """
    n = len(masses)
    if tau < 0 or not math.isfinite(tau):
        raise SelectionError(f"tau must be a finite number >= 0, got {tau}")
    if total > sum(caps):
        raise SelectionError(f"budget {total} exceeds the {sum(caps)} KV heads available")
    if tau == 0 or sum(masses) <= 0:
        weights = [1.0] * n
    else:
        # Floor the mass so a zero-score layer gets weight 0 rather than 0**tau trouble; no layer ever
        # gets a share from nothing when others have mass.
        weights = [max(m, 0.0) ** tau for m in masses]
    wsum = sum(weights)
    if not 0 < wsum < math.inf:  # every weight underflowed (tiny masses, large tau) or overflowed
        weights, wsum = [1.0] * n, float(n)
    k = [min(math.floor(total * w / wsum + 0.5), cap) for w, cap in zip(weights, caps, strict=True)]
    up = sorted(range(n), key=lambda i: (-masses[i], i))
    down = sorted(range(n), key=lambda i: (masses[i], i))
    while sum(k) < total:
        for i in up:
            if sum(k) == total:
                break
            if k[i] < caps[i]:
                k[i] += 1
    while sum(k) > total:
        for i in down:
            if sum(k) == total:
                break
            if k[i] > 0:
                k[i] -= 1
    return k


def select_heads(
    scores: torch.Tensor | Sequence[Sequence[float]],
    budget: int | float,
    tau: float = 1.0,
    *,
    family: str | None = None,
    probe_method: str | None = None,
    probe_examples: int | None = None,
    config_hash: str | None = None,
) -> HeadSelection:
    """Pick `budget` KV heads (count, or fraction of all) from scores[layer][kv_head] (higher = better)."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    if s.ndim != 2 or s.numel() == 0:
        raise SelectionError(f"scores must be a [layers, kv_heads] table, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise SelectionError("scores must be finite and non-negative (squared gradients)")
    num_layers, hkv = s.shape
    total = resolve_budget(budget, num_layers * hkv)
    masses = s.sum(dim=1).tolist()
    budgets = allocate_layer_budgets(masses, [hkv] * num_layers, total, float(tau))
    kv_indices: dict[int, list[int]] = {}
    for layer, k in enumerate(budgets):
        # Stable descending order: equal scores resolve to the lower head index, on every machine.
        order = sorted(range(hkv), key=lambda h: (-float(s[layer, h]), h))
        kv_indices[layer] = sorted(order[:k])
    return HeadSelection(
        kv_indices=kv_indices,
        hkv=int(hkv),
        num_layers=int(num_layers),
        scores=s.tolist(),
        tau=float(tau),
        family=family,
        probe_method=probe_method,
        probe_examples=probe_examples,
        config_hash=config_hash,
    )


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-serialisable config (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
