"""Model families: registry, tiny offline VLMs, and loading real checkpoints from a local path."""

from imagelora_dist.models.registry import FAMILIES, ModelSpec, family_info, resolve_model
from imagelora_dist.models.tiny import TINY_FAMILIES, build_tiny_vlm, load_vlm

__all__ = [
    "FAMILIES",
    "ModelSpec",
    "TINY_FAMILIES",
    "build_tiny_vlm",
    "family_info",
    "load_vlm",
    "resolve_model",
]
