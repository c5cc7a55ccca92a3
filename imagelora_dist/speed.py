"""The `speed:` config flags applied to a model with its adapter attached (probe actors, training)."""

from __future__ import annotations

import json
from collections.abc import Callable

from torch import nn

from imagelora_dist.config import RunConfig
from imagelora_dist.models.grad_scope import no_grad_below
from imagelora_dist.models.vision_cache import VisionFeatureCache, attach_vision_cache


def model_fingerprint(cfg: RunConfig, dtype: str) -> str:
    """Names the weights the vision features come from (a cache must never serve another model)."""
    source = cfg.model.path or f"tiny:{cfg.model.family}:{cfg.model.seed}"
    if cfg.model.size is not None and not cfg.model.path:
        source += ":" + json.dumps(cfg.model.size.model_dump(), sort_keys=True)
    return f"{source}|{dtype}"


def apply_speed_flags(
    model: nn.Module, cfg: RunConfig, *, lowest_layer: int, dtype: str
) -> tuple[VisionFeatureCache | None, Callable[[], None]]:
    """Attach the vision cache and the no-grad scope as configured; returns (cache, undo)."""
    undo: list[Callable[[], None]] = []
    cache = None
    if cfg.speed.vision_cache:
        cache = VisionFeatureCache(cfg.speed.vision_cache_mb << 20, cfg.speed.vision_cache_dir)
        undo.append(attach_vision_cache(model, cache, model_fingerprint(cfg, dtype)))
    if cfg.speed.no_grad_below_adapters:
        undo.append(no_grad_below(model, lowest_layer))

    def undo_all() -> None:
        for fn in reversed(undo):
            fn()

    return cache, undo_all
