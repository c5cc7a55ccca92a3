"""Model families: registry, tiny offline VLMs, loading real checkpoints from a local path, and the
configured model every stage builds (`build_model`).

Names load on first use (PEP 562), so importing a light submodule (`families`) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagelora_dist.lazy_import import lazy_exports

_EXPORTS = {
    "FAMILIES": "imagelora_dist.models.families",
    "build_model": "imagelora_dist.models.build",
    "resolved_dtype": "imagelora_dist.models.build",
    "skeleton_model": "imagelora_dist.models.build",
    "ModelSpec": "imagelora_dist.models.registry",
    "family_info": "imagelora_dist.models.registry",
    "resolve_model": "imagelora_dist.models.registry",
    "TINY_FAMILIES": "imagelora_dist.models.tiny",
    "build_tiny_vlm": "imagelora_dist.models.tiny",
    "load_vlm": "imagelora_dist.models.tiny",
}

__all__ = [
    "FAMILIES",
    "ModelSpec",
    "TINY_FAMILIES",
    "build_model",
    "build_tiny_vlm",
    "family_info",
    "load_vlm",
    "resolve_model",
    "resolved_dtype",
    "skeleton_model",
]

if TYPE_CHECKING:
    from imagelora_dist.models.build import build_model, resolved_dtype, skeleton_model
    from imagelora_dist.models.families import FAMILIES
    from imagelora_dist.models.registry import ModelSpec, family_info, resolve_model
    from imagelora_dist.models.tiny import TINY_FAMILIES, build_tiny_vlm, load_vlm


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
