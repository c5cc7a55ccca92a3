"""Tiny random-weight VLMs of the real transformers classes, and loading checkpoints from a local directory.

The tiny models keep each family's real architecture (vision tower, projector, decoder with GQA) at a
few million parameters, with an offline tokenizer and the family's real processor, so the whole pipeline
runs on CPU in tests without any download.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3VisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SiglipVisionConfig,
)
from transformers.utils import is_torchvision_available

from imagelora_dist.errors import ImageLoRAError, UnsupportedModelError
from imagelora_dist.models import processors as P
from imagelora_dist.models.registry import family_for_model_type

TINY_FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "idefics3", "gemma3")

# A 2-layer vision tower of width 128 is enough to exercise every projector and merger path.
_VISION = {"hidden": 128, "intermediate": 256, "layers": 2, "heads": 4}

# Families whose tiny model can be scaled by `TinySize` (the study's families); the others keep one size.
SIZED_FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@dataclass(frozen=True)
class TinySize:
    """A tiny model's size: decoder layers, width and heads; vision-tower layers, width and heads.

    None keeps the family's default tiny size. MLP widths are 2x the width (decoder) and 2x (vision).
    """

    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    vision_layers: int | None = None
    vision_hidden: int | None = None
    vision_heads: int | None = None

    def check(self, family: str) -> None:
        """Raise ImageLoRAError when the sizes do not make a valid model of `family`."""
        if self == TinySize():
            return
        if family not in SIZED_FAMILIES:
            raise ImageLoRAError(f"model.size: only {', '.join(SIZED_FAMILIES)} can be resized, not {family}")
        for name, value in self.__dict__.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ImageLoRAError(f"model.size.{name}={value!r}: must be a positive integer")
        d = _default_size(family)
        hidden, heads, kv = self.hidden or d.hidden, self.heads or d.heads, self.kv_heads or d.kv_heads
        vh, vheads = self.vision_hidden or d.vision_hidden, self.vision_heads or d.vision_heads
        assert hidden and heads and kv and vh and vheads
        if heads % kv:
            raise ImageLoRAError(f"model.size: heads={heads} must be a multiple of kv_heads={kv}")
        # M-RoPE splits a head's rotary frequencies over (t, h, w); the vision rotary over (h, w).
        # Qwen3-VL's head_dim is fixed (32), independent of the width.
        if family != "qwen3_vl" and (hidden % heads or (hidden // heads) % 8):
            raise ImageLoRAError(
                f"model.size: hidden={hidden} over heads={heads} must give a head size that is a multiple of 8"
            )
        if vh % vheads or (vh // vheads) % 4:
            raise ImageLoRAError(
                f"model.size: vision_hidden={vh} over vision_heads={vheads} must give a head size that is a multiple of 4"
            )


def _default_size(family: str) -> TinySize:
    """The registry's tiny size of a resizable family."""
    layers, hidden, kv = {"qwen2_vl": (4, 256, 2), "qwen2_5_vl": (6, 256, 4), "qwen3_vl": (4, 192, 4)}[family]
    v = _VISION
    return TinySize(layers, hidden, 8, kv, v["layers"], v["hidden"], v["heads"])


# Model types whose processor has a video processor (needs torchvision): loaded image-only instead.
_IMAGE_ONLY_BY_MODEL_TYPE: dict[str, type[ProcessorMixin]] = {
    "qwen2_vl": P.Qwen2VLImageOnlyProcessor,
    "qwen2_5_vl": P.Qwen2_5_VLImageOnlyProcessor,
    "qwen3_vl": P.Qwen3VLImageOnlyProcessor,
    "qwen3_vl_moe": P.Qwen3VLImageOnlyProcessor,
}


def _ids(tok: Any, *tokens: str) -> list[int]:
    ids = tok.convert_tokens_to_ids(list(tokens))
    if any(i is None or i == tok.unk_token_id for i in ids):
        # a bug in processors.py, not bad user input: hence not an ImageLoRAError
        raise RuntimeError(f"offline tokenizer lacks one of {tokens}")
    return ids


def _qwen2_text(tok: Any, layers: int, heads: int, kv_heads: int, hidden: int = 256) -> dict[str, Any]:
    eot, im_end = _ids(tok, "<|endoftext|>", "<|im_end|>")
    head_dim = hidden // heads
    return {
        "vocab_size": len(tok),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": 2048,
        # M-RoPE splits head_dim/2 rotary frequencies over (t, h, w): sum must equal head_dim // 2
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope(head_dim)},
        "bos_token_id": eot,
        "eos_token_id": im_end,
        "pad_token_id": eot,
    }


def _mrope(head_dim: int) -> list[int]:
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


@dataclass(frozen=True)
class _Shape:
    """The resolved shape of a tiny model: text decoder and vision tower (`vision` as in _VISION)."""

    layers: int = 0
    hidden: int = 0
    heads: int = 0
    kv_heads: int = 0
    vision: dict[str, int] | None = None


def _shape(family: str, size: TinySize | None) -> _Shape:
    """The requested size's fields over the family's defaults (resizable Qwen families only)."""
    if family not in SIZED_FAMILIES:
        return _Shape(vision=_VISION)
    d, z = _default_size(family), size or TinySize()
    vh = z.vision_hidden or d.vision_hidden
    vision = {"hidden": vh, "intermediate": 2 * vh, "layers": z.vision_layers or d.vision_layers,
              "heads": z.vision_heads or d.vision_heads}  # fmt: skip
    return _Shape(
        z.layers or d.layers, z.hidden or d.hidden, z.heads or d.heads, z.kv_heads or d.kv_heads, vision
    )


def _qwen_token_ids(tok: Any) -> dict[str, int]:
    image, video, vstart, vend = _ids(
        tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
    )
    return {"image_token_id": image, "video_token_id": video, "vision_start_token_id": vstart,
            "vision_end_token_id": vend}  # fmt: skip


def _qwen2_vl_config(tok: Any, s: _Shape) -> PretrainedConfig:
    v = s.vision
    text = _qwen2_text(tok, layers=s.layers, heads=s.heads, kv_heads=s.kv_heads, hidden=s.hidden)
    vision = {
        "depth": v["layers"],
        "embed_dim": v["hidden"],
        "mlp_ratio": v["intermediate"] // v["hidden"],
        "num_heads": v["heads"],
        "hidden_size": text["hidden_size"],  # Qwen2-VL's vision "hidden_size" is the merger output
        "patch_size": P.QWEN2_PATCH,
        "spatial_merge_size": P.QWEN_MERGE,
        "temporal_patch_size": 2,
    }
    return Qwen2VLConfig(text_config=text, vision_config=vision, **_qwen_token_ids(tok))


def _qwen2_5_vl_config(tok: Any, s: _Shape) -> PretrainedConfig:
    v = s.vision
    text = _qwen2_text(tok, layers=s.layers, heads=s.heads, kv_heads=s.kv_heads, hidden=s.hidden)
    vision = {
        "depth": v["layers"],
        "hidden_size": v["hidden"],
        "intermediate_size": v["intermediate"],
        "num_heads": v["heads"],
        "out_hidden_size": text["hidden_size"],
        "patch_size": P.QWEN2_PATCH,
        "spatial_merge_size": P.QWEN_MERGE,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [v["layers"] - 1],  # must index an existing block
    }
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_qwen_token_ids(tok))


def _qwen3_vl_config(tok: Any, s: _Shape) -> PretrainedConfig:
    v = s.vision
    eot, im_end = _ids(tok, "<|endoftext|>", "<|im_end|>")
    # head_dim * heads (256) != hidden (192), as in real Qwen3-VL: code must not assume hidden // heads
    text = {
        "vocab_size": len(tok),
        "hidden_size": s.hidden,
        # 512 at the default width keeps the default tiny model's shapes (and weights) unchanged
        "intermediate_size": 512 if s.hidden == 192 else 2 * s.hidden,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "head_dim": 32,
        "max_position_embeddings": 2048,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [8, 4, 4],
            "mrope_interleaved": True,
        },
        "bos_token_id": eot,
        "eos_token_id": im_end,
        "pad_token_id": eot,
    }
    vision = {
        "depth": v["layers"],
        "hidden_size": v["hidden"],
        "intermediate_size": v["intermediate"],
        "num_heads": v["heads"],
        "out_hidden_size": text["hidden_size"],
        "patch_size": P.QWEN3_PATCH,
        "spatial_merge_size": P.QWEN_MERGE,
        "temporal_patch_size": 2,
        "num_position_embeddings": 256,  # a 16x16 learned grid, interpolated to each image (must be square)
        "deepstack_visual_indexes": [0],  # must index an existing block
    }
    return Qwen3VLConfig(text_config=text, vision_config=vision, **_qwen_token_ids(tok))


def _llama_text(tok: Any, bos: int, eos: int, pad: int, kv_heads: int, **extra: Any) -> LlamaConfig:
    """The tiny Llama decoder of LLaVA and Idefics3 (4 layers, width 256, 8 query heads)."""
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        **extra,
    )


def _llava_config(tok: Any, s: _Shape) -> PretrainedConfig:
    v = s.vision
    image, bos, eos, pad = _ids(tok, "<image>", "<s>", "</s>", "<pad>")
    text = _llama_text(tok, bos, eos, pad, kv_heads=4)
    vision = CLIPVisionConfig(
        hidden_size=v["hidden"],
        intermediate_size=v["intermediate"],
        num_hidden_layers=v["layers"],
        num_attention_heads=v["heads"],
        image_size=P.LLAVA_IMAGE_SIZE,
        patch_size=P.LLAVA_PATCH,
        projection_dim=v["hidden"],
    )
    return LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=image,
        image_seq_length=(P.LLAVA_IMAGE_SIZE // P.LLAVA_PATCH) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )


def _idefics3_config(tok: Any, s: _Shape) -> PretrainedConfig:
    v = s.vision
    image, bos, eos, pad = _ids(tok, "<image>", "<|begin_of_text|>", "<end_of_utterance>", "<pad>")
    text = _llama_text(tok, bos, eos, pad, kv_heads=2, rms_norm_eps=1e-5)
    vision = Idefics3VisionConfig(
        hidden_size=v["hidden"],
        intermediate_size=v["intermediate"],
        num_hidden_layers=v["layers"],
        num_attention_heads=v["heads"],
        image_size=P.IDEFICS3_IMAGE_SIZE,
        patch_size=P.IDEFICS3_PATCH,
    )
    return Idefics3Config(
        text_config=text,
        vision_config=vision,
        image_token_id=image,
        scale_factor=P.IDEFICS3_SCALE_FACTOR,
        pad_token_id=pad,
    )


def _gemma3_config(tok: Any, s: _Shape) -> PretrainedConfig:
    v = s.vision
    image, boi, eoi, bos, eos, pad = _ids(
        tok, "<image_soft_token>", "<start_of_image>", "<end_of_image>", "<bos>", "<eos>", "<pad>"
    )
    # head_dim * heads (256) != hidden (192), as in real Gemma3; 6 layers = 5 sliding + 1 global
    text = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=32,
        query_pre_attn_scalar=32,
        max_position_embeddings=2048,
        sliding_window=512,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    vision = SiglipVisionConfig(
        hidden_size=v["hidden"],
        intermediate_size=v["intermediate"],
        num_hidden_layers=v["layers"],
        num_attention_heads=v["heads"],
        image_size=P.GEMMA3_IMAGE_SIZE,
        patch_size=P.GEMMA3_PATCH,
        vision_use_head=False,
    )
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=P.GEMMA3_MM_TOKENS,
        image_token_index=image,
        boi_token_index=boi,
        eoi_token_index=eoi,
    )


_CONFIG_BUILDERS: dict[str, Callable[[Any, _Shape], PretrainedConfig]] = {
    "qwen2_vl": _qwen2_vl_config,
    "qwen2_5_vl": _qwen2_5_vl_config,
    "qwen3_vl": _qwen3_vl_config,
    "llava": _llava_config,
    "idefics3": _idefics3_config,
    "gemma3": _gemma3_config,
}


def _config(family: str, tok: Any, size: TinySize | None = None) -> PretrainedConfig:
    """The tiny model config of `family` for tokenizer `tok` (its special-token ids), at `size`."""
    builder = _CONFIG_BUILDERS.get(family)
    if builder is None:
        raise UnsupportedModelError(
            f"unknown tiny VLM family {family!r}; supported: {', '.join(TINY_FAMILIES)}"
        )
    return builder(tok, _shape(family, size))


_MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "qwen3_vl": Qwen3VLForConditionalGeneration,
    "llava": LlavaForConditionalGeneration,
    "idefics3": Idefics3ForConditionalGeneration,
    "gemma3": Gemma3ForConditionalGeneration,
}


def build_tiny_vlm(
    family: str, seed: int = 0, size: TinySize | None = None, split_digits: bool = False
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build a tiny random-weight model of `family`'s real class (at `size`, default the tiny one) plus its
    offline processor (`split_digits`: its tokenizer spells numbers digit by digit, as Qwen's do)."""
    if family not in TINY_FAMILIES:
        raise UnsupportedModelError(
            f"unknown tiny VLM family {family!r}; supported: {', '.join(TINY_FAMILIES)}"
        )
    if size is not None:
        size.check(family)
    processor = P.build_family_processor(family, split_digits)
    config = _config(family, processor.tokenizer, size)
    # fork_rng: seeding must not disturb the caller's global RNG stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _MODEL_CLASSES[family](config)
        if family == "gemma3":
            # random init zeroes this projection, which would make every image embedding exactly 0
            with torch.no_grad():
                model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.02)
            # as in real Gemma3: the config keeps the tokenizer's <eos>, generation also stops at <end_of_turn>
            model.generation_config.eos_token_id = _ids(processor.tokenizer, "<eos>", "<end_of_turn>")
    model.to(torch.float32)
    model.eval()
    return model, processor


def _has_video_processor_files(path: Path) -> bool:
    if (path / "video_preprocessor_config.json").is_file():
        return True
    proc = path / "processor_config.json"
    if proc.is_file():
        try:
            return "video_processor" in json.loads(proc.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return False
    return False


def load_processor(path: str | os.PathLike, model_type: str) -> ProcessorMixin:
    """Load the processor saved in local directory `path` for a model of `model_type`."""
    path = Path(path)
    image_only = _IMAGE_ONLY_BY_MODEL_TYPE.get(model_type)
    torchvision_present = is_torchvision_available()
    # Without torchvision (or without saved video settings) AutoProcessor cannot build the Qwen video processor.
    if image_only is not None and not (torchvision_present and _has_video_processor_files(path)):
        return image_only.from_pretrained(path, local_files_only=True)
    return AutoProcessor.from_pretrained(path, local_files_only=True)


def load_vlm(
    path: str | os.PathLike, dtype: torch.dtype | None = None, device_map: str | dict | None = None
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load a VLM and its processor from a local directory only; dtype None keeps transformers' default;
    `device_map` (accelerate's: "auto", {"": "cuda:0"} ...) spreads the weights over devices as they load."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ImageLoRAError(f"model directory not found: {path}")
    if not (path / "config.json").is_file():
        raise ImageLoRAError(f"not a model directory (no config.json): {path}")
    try:
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type", "")
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise ImageLoRAError(f"unreadable config.json in {path}: {e}") from e
    # Refuse a model we cannot adapt before loading gigabytes of weights.
    family_for_model_type(str(model_type))
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    model.eval()
    processor = load_processor(path, model_type)
    return model, processor
