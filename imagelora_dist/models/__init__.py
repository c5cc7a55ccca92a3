"""Model families: registry, tiny offline VLMs, and loading real checkpoints from a local path.

Names load on first use (PEP 562), so importing a light submodule (`families`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "FAMILIES": "imagelora_dist.models.families",
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
    "build_tiny_vlm",
    "family_info",
    "load_vlm",
    "resolve_model",
]

if TYPE_CHECKING:
    from imagelora_dist.models.families import FAMILIES
    from imagelora_dist.models.registry import ModelSpec, family_info, resolve_model
    from imagelora_dist.models.tiny import TINY_FAMILIES, build_tiny_vlm, load_vlm


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'imagelora_dist.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Module attributes plus the public names not loaded yet."""
    return sorted(set(globals()) | set(_EXPORTS))
