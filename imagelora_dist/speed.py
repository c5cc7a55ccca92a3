"""The `speed:` config flags applied to a model with its adapter attached (probe actors, training)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from imagelora_dist.config import RunConfig
from imagelora_dist.models.grad_scope import no_grad_below
from imagelora_dist.models.prefix_cache import PrefixCache, attach_prefix_cache
from imagelora_dist.models.vision_cache import VisionFeatureCache, attach_vision_cache, image_key


def model_fingerprint(cfg: RunConfig, dtype: str) -> str:
    """Names the weights the vision features come from (a cache must never serve another model)."""
    if cfg.model.path:  # the weights there, not just the path (a checkpoint rewritten in place is new)
        from imagelora_dist.models.build import checkpoint_identity

        source = f"{cfg.model.path}@{checkpoint_identity(cfg.model.path)}"
    else:
        source = f"tiny:{cfg.model.family}:{cfg.model.seed}"
    if cfg.model.size is not None and not cfg.model.path:
        source += ":" + json.dumps(cfg.model.size.model_dump(), sort_keys=True)
    return f"{source}|{dtype}"


@dataclass
class SpeedHandles:
    """What `apply_speed_flags` attached: the caches the training loop feeds keys to, and the undo."""

    vision: VisionFeatureCache | None = None
    prefix: PrefixCache | None = None
    # pixel digest -> whether the vision cache holds that image's features under this model
    features_cached: Callable[[str], bool] | None = None
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def undo(self) -> None:
        """Detach everything, last attached first."""
        for fn in reversed(self._undo):
            fn()
        self._undo.clear()
        self.features_cached = None


def apply_speed_flags(model: nn.Module, cfg: RunConfig, *, lowest_layer: int, dtype: str) -> SpeedHandles:
    """Attach the vision cache, the prefix cache and the no-grad scope as configured."""
    handles = SpeedHandles()
    if cfg.speed.vision_cache:
        handles.vision = VisionFeatureCache(cfg.speed.vision_cache_mb << 20, cfg.speed.vision_cache_dir)
        fingerprint = model_fingerprint(cfg, dtype)
        handles._undo.append(attach_vision_cache(model, handles.vision, fingerprint))
        vision = handles.vision
        handles.features_cached = lambda digest: vision.contains(image_key(fingerprint, digest))
    if cfg.speed.no_grad_below_adapters:
        handles._undo.append(no_grad_below(model, lowest_layer))
    # With the lowest adapter in layer 0 (LoRA, or a selection reaching it) nothing lies below to skip.
    if cfg.speed.prefix_cache and lowest_layer > 0:
        namespace = f"{model_fingerprint(cfg, dtype)}|layer {lowest_layer}"
        handles.prefix = PrefixCache(cfg.speed.prefix_cache_mb << 20, cfg.speed.prefix_cache_dir, namespace)
        handles._undo.append(attach_prefix_cache(model, handles.prefix, lowest_layer))
    return handles
