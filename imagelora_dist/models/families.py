"""The supported VLM families as plain data: config model types and where each keeps its decoder.

Kept free of torch so that validating a config (the family name) costs nothing; `registry` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FamilyInfo:
    """Static facts about one family: config model types and where the text decoder lives."""

    name: str
    model_types: tuple[str, ...]
    # Attribute paths from the ForConditionalGeneration root to the decoder layer list, tried in order
    # (transformers has moved these between releases).
    layer_paths: tuple[str, ...]
    image_token_attrs: tuple[str, ...]
    video_token_attrs: tuple[str, ...] = ()


FAMILIES: dict[str, FamilyInfo] = {
    f.name: f
    for f in (
        FamilyInfo(
            "qwen2_vl",
            ("qwen2_vl",),
            ("model.language_model.layers", "model.layers"),
            ("image_token_id",),
            ("video_token_id",),
        ),
        FamilyInfo(
            "qwen2_5_vl",
            ("qwen2_5_vl",),
            ("model.language_model.layers", "model.layers"),
            ("image_token_id",),
            ("video_token_id",),
        ),
        FamilyInfo(
            "qwen3_vl",
            ("qwen3_vl",),
            ("model.language_model.layers",),
            ("image_token_id",),
            ("video_token_id",),
        ),
        FamilyInfo(
            "llava",
            ("llava",),
            ("model.language_model.layers", "language_model.model.layers"),
            ("image_token_id", "image_token_index"),
        ),
        FamilyInfo(
            "idefics3",
            ("idefics3", "smolvlm"),
            ("model.text_model.layers",),
            ("image_token_id",),
        ),
        FamilyInfo(
            "gemma3",
            ("gemma3",),
            ("model.language_model.layers", "language_model.model.layers"),
            ("image_token_id", "image_token_index"),
        ),
    )
}
