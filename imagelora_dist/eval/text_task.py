"""The pure-text task (short arithmetic word problems, the stand-in for GSM8K): accuracy with the adapter
and without it, and whether the answers are identical."""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Callable
from typing import Any

from torch import nn

from imagelora_dist.data.text_problems import arithmetic_problem
from imagelora_dist.eval.generate import generate_text_answers

_NUMBER = re.compile(r"-?\d+")


def first_number(text: str) -> str | None:
    """The first integer in a generated answer, as text (None if there is none)."""
    match = _NUMBER.search(text)
    return match.group(0) if match else None


def arithmetic_problems(count: int, seed: int) -> list[tuple[str, str]]:
    """`count` (question, answer) pairs from a seed stream of their own (not the pre-training one)."""
    rng = random.Random(f"text-task-eval-{seed}")
    return [arithmetic_problem(rng) for _ in range(count)]


def text_task_scores(
    model: nn.Module,
    processor: Any,
    disabled: Callable[[], contextlib.AbstractContextManager],
    *,
    count: int = 32,
    seed: int = 0,
    batch_size: int = 8,
    max_new_tokens: int = 8,
) -> dict[str, float]:
    """Exact-match accuracy (first integer of the answer) with the adapter and inside `disabled()`."""
    problems = arithmetic_problems(count, seed)
    questions = [q for q, _ in problems]
    kwargs = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    adapted = generate_text_answers(model, processor, questions, **kwargs)
    with disabled():
        base = generate_text_answers(model, processor, questions, **kwargs)

    def accuracy(answers: list[str]) -> float:
        return sum(first_number(a) == want for a, (_, want) in zip(answers, problems, strict=True)) / count

    return {
        "text_task_accuracy": accuracy(adapted),
        "text_task_accuracy_base": accuracy(base),
        "text_task_outputs_identical": float(adapted == base),
    }
