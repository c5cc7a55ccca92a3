"""Text preservation: how much an adapter changes the logits of text-only prompts.

Image-LoRA adds nothing at text positions, so with it attached the logits of a prompt without images
must be bit-identical to the frozen model's (`text_max_abs_logit_diff` == 0.0); a standard LoRA on
`v_proj` changes them. The prompts are a small stand-in for a text benchmark such as GSM8K.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from imagelora_dist.data.collate import Sample, collate
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.eval.generate import eval_mode, model_device_dtype, to_model

if TYPE_CHECKING:
    from imagelora_dist.adapter.image_lora import ImageLoRAHandle

_DEFAULT_PROMPTS = (
    "Tom has 3 boxes with 12 apples in each box. He gives away 9 apples. How many apples does he have left?",
    "A train travels 60 kilometres per hour for 2.5 hours. How far does it go?",
    "Sara buys 4 notebooks at $3 each and a pen for $2. How much does she spend in total?",
    "There are 28 students in a class and 3/4 of them passed the test. How many students passed?",
    "What is the capital of France?",
    "Explain in one sentence why the sky looks blue on a clear day.",
    "Name three primary colors.",
    "Write a short greeting for a colleague's birthday.",
)


def default_text_prompts() -> list[str]:
    """A few short arithmetic word problems and general questions (text only, no images)."""
    return list(_DEFAULT_PROMPTS)


def _text_batches(
    processor: Any, prompts: Sequence[str], batch_size: int
) -> Iterator[dict[str, torch.Tensor]]:
    if batch_size < 1:
        raise ImageLoRAError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        raise ImageLoRAError("text preservation needs at least one prompt")
    for start in range(0, len(prompts), batch_size):
        batch = collate(processor, [Sample(p, None, []) for p in prompts[start : start + batch_size]])
        batch.pop("labels", None)
        yield batch


def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    device, dtype = model_device_dtype(model)
    inputs = to_model(batch, device, dtype)
    return model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")).logits


def text_logits(
    model: nn.Module, processor: Any, prompts: Sequence[str], *, batch_size: int = 8
) -> list[torch.Tensor]:
    """Per prompt, the logits [tokens, vocab] at its real (non-padding) positions, as computed (no cast).

    Prompts are the chat template with the generation prompt and no images, batched with padding.
    """
    out: list[torch.Tensor] = []
    with eval_mode(model), torch.no_grad():
        for batch in _text_batches(processor, prompts, batch_size):
            logits = _logits(model, batch)
            mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
            out.extend(logits[i][mask[i].to(logits.device)].cpu() for i in range(logits.shape[0]))
    return out


def text_max_abs_logit_diff(
    model: nn.Module,
    processor: Any,
    prompts: Sequence[str],
    disabled: Callable[[], contextlib.AbstractContextManager],
    *,
    batch_size: int = 8,
) -> float:
    """max |logits(model as is) - logits(inside `disabled()`)| over every real token of the text prompts.

    `disabled` returns a context manager in which the adapter is off: an Image-LoRA handle's
    `handle.disabled`, or `lambda: peft_disabled(peft_model)` for the LoRA baseline. 0.0 means the
    adapter leaves text-only logits bit-identical (up to the sign of zeros); NaN if either run has NaN.
    Batches are compared one at a time, so memory holds two batches of logits at most.
    """
    worst = 0.0
    with eval_mode(model), torch.no_grad():
        for batch in _text_batches(processor, prompts, batch_size):
            adapted = _logits(model, batch)
            with disabled():
                base = _logits(model, batch)
            mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
            mask = mask.to(adapted.device)
            diff = (adapted.float() - base.float()).abs()[mask]
            if torch.isnan(diff).any():
                return float("nan")
            if diff.numel():
                worst = max(worst, float(diff.max()))
    return worst


def image_lora_disabled(handle: ImageLoRAHandle) -> contextlib.AbstractContextManager:
    """Image-LoRA off for the block: the handle's own `disabled()` (the frozen base model, bit for bit)."""
    return handle.disabled()


@contextlib.contextmanager
def peft_disabled(peft_model: Any) -> Iterator[None]:
    """A peft model with its adapters off for the block (peft's own `disable_adapter()`)."""
    with peft_model.disable_adapter():
        yield
