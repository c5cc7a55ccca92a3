"""Evaluation: greedy generation on screenshot samples, grounding/referring scores, text preservation.

Pure torch + transformers (never imports Ray, DeepSpeed or MLflow).
"""

from imagelora_dist.eval.generate import generate_answers
from imagelora_dist.eval.metrics import (
    chance_baselines,
    click_distance,
    denormalize_point,
    grounding_hit,
    normalize_answer,
    referring_match,
    referring_parts,
)
from imagelora_dist.eval.run import evaluate
from imagelora_dist.eval.text_preservation import (
    default_text_prompts,
    image_lora_disabled,
    peft_disabled,
    text_logits,
    text_max_abs_logit_diff,
)

__all__ = [
    "chance_baselines",
    "click_distance",
    "default_text_prompts",
    "denormalize_point",
    "evaluate",
    "generate_answers",
    "grounding_hit",
    "image_lora_disabled",
    "normalize_answer",
    "peft_disabled",
    "referring_match",
    "referring_parts",
    "text_logits",
    "text_max_abs_logit_diff",
]
