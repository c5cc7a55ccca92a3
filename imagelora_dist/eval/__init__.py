"""Evaluation: greedy generation on screenshot samples, grounding/referring scores, text preservation.

Pure torch + transformers (never imports Ray, DeepSpeed or MLflow). Names load on first use (PEP 562), so
the light `breakdown` (the per-group table `compare` prints) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagelora_dist.lazy_import import lazy_exports

_EXPORTS = {
    "breakdown_table": "imagelora_dist.eval.breakdown",
    "group_metrics": "imagelora_dist.eval.breakdown",
    "generate_answers": "imagelora_dist.eval.generate",
    "chance_baselines": "imagelora_dist.eval.metrics",
    "click_distance": "imagelora_dist.eval.metrics",
    "denormalize_point": "imagelora_dist.eval.metrics",
    "grounding_hit": "imagelora_dist.eval.metrics",
    "normalize_answer": "imagelora_dist.eval.metrics",
    "referring_match": "imagelora_dist.eval.metrics",
    "referring_parts": "imagelora_dist.eval.metrics",
    "evaluate": "imagelora_dist.eval.run",
    "shard_samples": "imagelora_dist.eval.run",
    "default_text_prompts": "imagelora_dist.eval.text_preservation",
    "image_lora_disabled": "imagelora_dist.eval.text_preservation",
    "peft_disabled": "imagelora_dist.eval.text_preservation",
    "text_logits": "imagelora_dist.eval.text_preservation",
    "text_max_abs_logit_diff": "imagelora_dist.eval.text_preservation",
}

__all__ = [
    "breakdown_table",
    "chance_baselines",
    "click_distance",
    "default_text_prompts",
    "denormalize_point",
    "evaluate",
    "generate_answers",
    "grounding_hit",
    "group_metrics",
    "image_lora_disabled",
    "normalize_answer",
    "peft_disabled",
    "referring_match",
    "referring_parts",
    "shard_samples",
    "text_logits",
    "text_max_abs_logit_diff",
]

if TYPE_CHECKING:
    from imagelora_dist.eval.breakdown import breakdown_table, group_metrics
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
    from imagelora_dist.eval.run import evaluate, shard_samples
    from imagelora_dist.eval.text_preservation import (
        default_text_prompts,
        image_lora_disabled,
        peft_disabled,
        text_logits,
        text_max_abs_logit_diff,
    )

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
