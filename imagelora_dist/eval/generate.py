"""Greedy, batched, left-padded generation of the assistant's answer for decoded screenshot samples."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from imagelora_dist.data.collate import BatchCollator, Sample, collate, fit_pixels
from imagelora_dist.errors import ImageLoRAError

# Set by a ZeRO-3 group while it generates (eval/zero3.py): every rank keeps running forward passes until
# the slowest rank's sequences are done, since ZeRO-3 gathers each layer's weights collectively.
_SYNCED = {"on": False}


@contextlib.contextmanager
def synced_generation() -> Iterator[None]:
    """Generate with transformers' `synced_gpus` inside the block (ranks of a ZeRO-3 group)."""
    previous = _SYNCED["on"]
    _SYNCED["on"] = True
    try:
        yield
    finally:
        _SYNCED["on"] = previous


@contextlib.contextmanager
def padding_side(processor: Any, side: str) -> Iterator[None]:
    """Temporarily set the processor's tokenizer padding side."""
    tokenizer = processor.tokenizer
    previous = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = previous


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """`model.eval()` for the block (no dropout), then the previous training flag back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device of the first parameter (where inputs go) and the model's floating dtype."""
    first = next(model.parameters())
    dtype = getattr(model, "dtype", None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        dtype = first.dtype
    return first.device, dtype


def to_model(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Move tensors to `device`; floating ones (pixel values) also to the model's dtype."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
        out[k] = v
    return out


def _greedy_config(model: nn.Module, max_new_tokens: int, pad_token_id: int | None, use_cache: bool) -> Any:
    """The model's generation config with sampling and logit-shaping settings switched off."""
    config = copy.deepcopy(model.generation_config)
    config.do_sample = False
    for name in ("temperature", "top_p", "top_k", "min_p", "typical_p", "repetition_penalty"):
        if hasattr(config, name):
            setattr(config, name, None)
    config.num_beams = 1
    config.max_new_tokens = int(max_new_tokens)
    config.max_length = None
    config.use_cache = use_cache
    if pad_token_id is not None:
        config.pad_token_id = pad_token_id
    return config


def generate_answers(
    model: nn.Module,
    processor: Any,
    decoded_samples: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int = 24,
    max_pixels: int | None = None,
    batch_size: int = 4,
    use_cache: bool = True,
) -> list[str]:
    """The greedy answer to each sample's `record["instruction"]` about its `image`, in order.

    Samples are the reader's decoded form (`{"image": PIL, "record": {...}}`). Images are fitted to
    `max_pixels` exactly as the training collator does; prompts are the chat template with the
    generation prompt, left-padded in batches of `batch_size`. Decoding is pure greedy: the checkpoint's
    sampling settings and repetition penalty are ignored, so results compare across checkpoints. Only the
    new tokens are decoded, special tokens skipped, surrounding whitespace stripped.
    """
    samples = [
        Sample(d["record"]["instruction"], None, [fit_pixels(d["image"], max_pixels)])
        for d in decoded_samples
    ]
    return generate_for_samples(model, processor, samples, max_new_tokens=max_new_tokens, max_pixels=max_pixels,
                                batch_size=batch_size, use_cache=use_cache)  # fmt: skip


def generate_text_answers(
    model: nn.Module, processor: Any, prompts: Sequence[str], *, max_new_tokens: int = 16, batch_size: int = 8
) -> list[str]:
    """The greedy answer to each text-only prompt (no image), in order."""
    samples = [Sample(p, None, []) for p in prompts]
    return generate_for_samples(
        model, processor, samples, max_new_tokens=max_new_tokens, batch_size=batch_size
    )


def generate_for_samples(
    model: nn.Module,
    processor: Any,
    samples: Sequence[Sample],
    *,
    max_new_tokens: int = 24,
    max_pixels: int | None = None,
    batch_size: int = 4,
    use_cache: bool = True,
) -> list[str]:
    """Greedy, left-padded, batched answers to prompt-only `Sample`s (images already fitted)."""
    if batch_size < 1:
        raise ImageLoRAError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ImageLoRAError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not samples:
        return []
    # The collator's pixel-budget handling (Qwen processors get a matching `size`), without its labels.
    processor_kwargs = BatchCollator(processor, (), max_pixels=max_pixels).processor_kwargs
    tokenizer = processor.tokenizer
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = getattr(model.generation_config, "pad_token_id", None)
    config = _greedy_config(model, max_new_tokens, pad_id, use_cache)
    device, dtype = model_device_dtype(model)
    answers: list[str] = []
    with padding_side(processor, "left"), eval_mode(model), torch.no_grad():
        for start in range(0, len(samples), batch_size):
            batch = collate(processor, list(samples[start : start + batch_size]), **processor_kwargs)
            batch.pop("labels", None)
            batch = to_model(batch, device, dtype)
            out = model.generate(**batch, generation_config=config, synced_gpus=_SYNCED["on"])
            new = out[:, batch["input_ids"].shape[1] :]
            answers.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    return answers
