"""Where each supported VLM family keeps its decoder layers, KV heads and visual token ids.

Everything is read from the model and its config; nothing about a checkpoint is hard-coded, so a real
Qwen2.5-VL-7B and a tiny random one resolve through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from imagelora_dist.errors import UnsupportedModelError
from imagelora_dist.models.families import FAMILIES, FamilyInfo

SUPPORTED = ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES.values())


@dataclass(frozen=True)
class ModelSpec:
    """Resolved geometry of one model's text decoder, as Image-LoRA needs it."""

    family: str
    model_type: str
    name_or_path: str
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    image_token_id: int
    video_token_id: int | None

    @property
    def visual_token_ids(self) -> tuple[int, ...]:
        """Token ids whose positions carry visual features (image, then video if the family has one)."""
        return (self.image_token_id,) + (() if self.video_token_id is None else (self.video_token_id,))

    @property
    def total_kv_heads(self) -> int:
        """KV heads over all decoder layers: the unit a head budget counts in."""
        return self.num_layers * self.num_kv_heads


def family_for_model_type(model_type: str) -> FamilyInfo:
    """The family a config `model_type` belongs to, or an error listing what is supported."""
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    raise UnsupportedModelError(f"unsupported model type {model_type!r}; supported: {SUPPORTED}")


def family_info(name: str) -> FamilyInfo:
    """Look a family up by its registry name, or fail with one line listing the supported ones."""
    if name not in FAMILIES:
        raise UnsupportedModelError(f"unknown model family {name!r}; supported: {SUPPORTED}")
    return FAMILIES[name]


def _get_path(root: nn.Module, path: str) -> object | None:
    obj: object = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _first_int_attr(cfg: object, attrs: tuple[str, ...]) -> int | None:
    for attr in attrs:
        value = getattr(cfg, attr, None)
        if isinstance(value, int):
            return value
    return None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The text decoder's layer list (never the vision tower's, which also has `v_proj` in some families)."""
    fam = family_for_model_type(_model_type(model))
    for path in fam.layer_paths:
        layers = _get_path(model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise UnsupportedModelError(
        f"{type(model).__name__}: no decoder layers at {' or '.join(fam.layer_paths)} "
        f"(family {fam.name}); this transformers version moved them"
    )


def value_projection(layer: nn.Module) -> nn.Linear:
    """A decoder layer's `self_attn.v_proj`, checked to be a plain Linear."""
    v_proj = _get_path(layer, "self_attn.v_proj")
    if not isinstance(v_proj, nn.Linear):
        raise UnsupportedModelError(f"decoder layer {type(layer).__name__} has no self_attn.v_proj Linear")
    return v_proj


def _model_type(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    if cfg is None or not getattr(cfg, "model_type", None):
        raise UnsupportedModelError(
            f"{type(model).__name__} has no transformers config; supported: {SUPPORTED}"
        )
    return cfg.model_type


def resolve_model(model: nn.Module) -> ModelSpec:
    """Read the decoder geometry and visual token ids of a supported VLM from the model and its config."""
    model_type = _model_type(model)
    fam = family_for_model_type(model_type)
    cfg = model.config
    text_cfg = cfg.get_text_config()
    layers = decoder_layers(model)
    v_proj = value_projection(layers[0])
    num_heads = int(text_cfg.num_attention_heads)
    num_kv = int(getattr(text_cfg, "num_key_value_heads", None) or num_heads)
    if v_proj.out_features % num_kv != 0:
        raise UnsupportedModelError(
            f"v_proj out_features {v_proj.out_features} is not a multiple of num_key_value_heads {num_kv}"
        )
    head_dim = v_proj.out_features // num_kv
    cfg_head_dim = getattr(text_cfg, "head_dim", None)
    if cfg_head_dim is not None and int(cfg_head_dim) != head_dim:
        raise UnsupportedModelError(
            f"config head_dim {cfg_head_dim} disagrees with v_proj width {v_proj.out_features}/{num_kv}"
        )
    image_id = _first_int_attr(cfg, fam.image_token_attrs)
    if image_id is None:
        raise UnsupportedModelError(
            f"{model_type} config has none of {', '.join(fam.image_token_attrs)}: cannot locate image tokens"
        )
    video_id = _first_int_attr(cfg, fam.video_token_attrs) if fam.video_token_attrs else None
    return ModelSpec(
        family=fam.name,
        model_type=model_type,
        name_or_path=str(getattr(cfg, "_name_or_path", "") or ""),
        num_layers=len(layers),
        num_attention_heads=num_heads,
        num_kv_heads=num_kv,
        head_dim=head_dim,
        hidden_size=v_proj.in_features,
        image_token_id=image_id,
        video_token_id=video_id,
    )


def visual_token_mask(input_ids: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Boolean mask of positions holding image or video tokens (any batch layout, any padding side)."""
    ids = torch.tensor(spec.visual_token_ids, device=input_ids.device, dtype=input_ids.dtype)
    return torch.isin(input_ids, ids)
