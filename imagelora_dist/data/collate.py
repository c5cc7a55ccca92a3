"""Turn (images, instruction, answer) samples into model inputs with loss on answer tokens only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from imagelora_dist.errors import ImageLoRAError

IGNORE_INDEX = -100


@dataclass
class Sample:
    """One chat turn: user images + instruction, assistant answer (None for a generation prompt)."""

    instruction: str
    answer: str | None = None
    images: list[Image.Image] = field(default_factory=list)


def _messages(sample: Sample) -> list[dict]:
    content = [{"type": "image"} for _ in sample.images] + [{"type": "text", "text": sample.instruction}]
    msgs = [{"role": "user", "content": content}]
    if sample.answer is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": sample.answer}]})
    return msgs


def collate(
    processor: object, samples: Sequence[Sample], **processor_kwargs: object
) -> dict[str, torch.Tensor]:
    """Chat template + processor; labels are the answer tokens (and the end-of-turn after them).

    `processor_kwargs` go to the processor call (e.g. an image-processor `size` pixel budget).
    """
    if not samples:
        raise ImageLoRAError("collate got no samples")
    prompts = [
        processor.apply_chat_template(
            _messages(Sample(s.instruction, None, s.images)), add_generation_prompt=True, tokenize=False
        )
        for s in samples
    ]
    texts = [
        processor.apply_chat_template(_messages(s), tokenize=False) if s.answer is not None else p
        for s, p in zip(samples, prompts, strict=True)
    ]
    images = [list(s.images) for s in samples]
    kwargs: dict = {"text": texts, "padding": True, "return_tensors": "pt", **processor_kwargs}
    if any(images):
        if not all(images):
            raise ImageLoRAError("a batch mixes samples with and without images; batch them separately")
        kwargs["images"] = images
    batch = dict(processor(**kwargs))
    ids = batch["input_ids"]
    mask = batch.get("attention_mask", torch.ones_like(ids))
    labels = torch.full_like(ids, IGNORE_INDEX)
    tokenizer = processor.tokenizer
    for i, (s, prompt, text) in enumerate(zip(samples, prompts, texts, strict=True)):
        if s.answer is None:
            continue
        if not text.startswith(prompt):
            raise ImageLoRAError(
                "chat template: the full conversation does not start with the generation prompt"
            )
        answer_ids = tokenizer(text[len(prompt) :], add_special_tokens=False)["input_ids"]
        real = mask[i].nonzero().squeeze(1)
        last = int(real[-1]) + 1
        n = len(answer_ids)
        # Check rather than assume: the answer tokens must be exactly the tail of the real tokens.
        if n == 0 or ids[i, last - n : last].tolist() != answer_ids:
            raise ImageLoRAError(
                f"sample {i}: answer tokens not found at the end of the sequence (tokenizer merge?)"
            )
        labels[i, last - n : last] = ids[i, last - n : last]
    batch["labels"] = labels
    return batch
