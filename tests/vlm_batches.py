"""Batches for tests: real processor-made image and text batches, and an independent visual mask.

Shared by the tests (`from vlm_batches import image_batch`; tests/ is on the path through its conftest).
"""

from __future__ import annotations

import torch

from imagelora_dist.data.collate import Sample, collate
from imagelora_dist.data.screens import make_screen


def image_batch(
    processor, n: int = 2, images_per_sample: int = 1, padding_side: str = "right", seed: int = 0
):
    """A batch of n grounding samples of different lengths, answer-only labels."""
    processor.tokenizer.padding_side = padding_side
    samples = []
    for i in range(n):
        screens = [make_screen(seed * 1000 + i * 10 + j) for j in range(images_per_sample)]
        instruction = screens[0].instruction + " Please answer quickly." * i
        samples.append(Sample(instruction, screens[0].answer, [s.image for s in screens]))
    return collate(processor, samples)


def text_batch(processor, padding_side: str = "right"):
    """A text-only batch (no images anywhere)."""
    processor.tokenizer.padding_side = padding_side
    samples = [Sample("What is 12 plus 30?", "42"), Sample("Name a color of the sky on a clear day.", "blue")]
    return collate(processor, samples)


def visual_mask(batch, spec) -> torch.Tensor:
    """Independent visual mask: positions whose id is the config's image or video token."""
    ids = batch["input_ids"]
    mask = ids == spec.image_token_id
    if spec.video_token_id is not None:
        mask |= ids == spec.video_token_id
    return mask
