"""Architectures of released checkpoints, for capacity planning without their files (`imagelora-dist plan`).

The fields of each model's published config.json that decide its parameter count and activation sizes
(Qwen2.5-VL-3B/7B/32B/72B-Instruct). A plan builds the model from them on the meta device (no weights,
no download) and counts its parameters exactly.
"""

from __future__ import annotations

from typing import Any

_QWEN2_5_VL_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
}

# name -> (hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings)
_QWEN2_5_VL_TEXT = {
    "3b": (2048, 11008, 36, 16, 2, 151936, True),
    "7b": (3584, 18944, 28, 28, 4, 152064, False),
    "32b": (5120, 27648, 64, 40, 8, 152064, False),
    "72b": (8192, 29568, 80, 64, 8, 152064, False),
}


def qwen2_5_vl_config(size: str) -> dict[str, Any]:
    """The config.json fields of Qwen2.5-VL-<size>-Instruct (size: 3b, 7b, 32b, 72b)."""
    hidden, inter, layers, heads, kv, vocab, tied = _QWEN2_5_VL_TEXT[size]
    return {
        "model_type": "qwen2_5_vl",
        "tie_word_embeddings": tied,
        "text_config": {
            "hidden_size": hidden,
            "intermediate_size": inter,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "vocab_size": vocab,
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": tied,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [16, 24, 24],
            },
        },
        "vision_config": {**_QWEN2_5_VL_VISION, "out_hidden_size": hidden},
    }


KNOWN_SIZES: dict[str, tuple[str, ...]] = {"qwen2_5_vl": tuple(_QWEN2_5_VL_TEXT)}


def known_config(family: str, size: str) -> dict[str, Any]:
    """The config fields of a released checkpoint of `family` at `size` (KeyError if not listed)."""
    if family == "qwen2_5_vl" and size in _QWEN2_5_VL_TEXT:
        return qwen2_5_vl_config(size)
    raise KeyError(f"{family} {size}")
