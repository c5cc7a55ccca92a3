"""Evaluate a model on decoded screenshot samples: grounding accuracy and referring exact match."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable
from typing import Any

from torch import nn

from imagelora_dist.data.tasks import GROUNDING, REFERRING
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.eval.generate import generate_answers
from imagelora_dist.eval.metrics import (
    chance_baselines,
    click_distance,
    grounding_hit,
    referring_match,
    referring_parts,
)

_SCORERS = {GROUNDING: grounding_hit, REFERRING: referring_match}


def evaluate(
    model: nn.Module,
    processor: Any,
    samples: Iterable[dict[str, Any]],
    *,
    max_samples: int | None = None,
    max_pixels: int | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 24,
) -> dict[str, Any]:
    """Generate an answer for each decoded sample (`{"image", "record"}`) and score it by its task.

    `samples` is consumed lazily, `batch_size` at a time, up to `max_samples` (None: all). With a reader,
    pass `(s for batch in make_loader(reader) for s in batch["samples"])`. Returns
    `grounding_accuracy` and `referring_exact_match` (fractions; NaN when the task has no sample),
    `grounding_count`, `referring_count`, `eval_samples` (their sum), `grounding_median_dist` (median click
    distance to the target's centre, [0, 1000) coordinates; see `click_distance`), `referring_type_accuracy`
    and `referring_text_accuracy` (each half of the answer; see `referring_parts`), the image-blind
    `chance_baselines` of the same questions, and `predictions`: one
    `{"id", "task", "answer", "generated", "correct"}` per sample, in input order. A sample whose task is
    neither grounding nor referring is an error (checked before generating its batch).
    """
    if max_samples is not None and max_samples < 0:
        raise ImageLoRAError(f"max_samples must be >= 0 or None, got {max_samples}")
    stream = iter(samples) if max_samples is None else itertools.islice(samples, max_samples)
    hits = {GROUNDING: 0, REFERRING: 0}
    counts = {GROUNDING: 0, REFERRING: 0}
    predictions: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    distances: list[float] = []
    parts = [0, 0]  # referring answers with the right type, with the right text
    while chunk := list(itertools.islice(stream, batch_size)):
        for d in chunk:
            task = d["record"].get("task")
            if task not in _SCORERS:
                raise ImageLoRAError(
                    f"sample {d['record'].get('id')!r}: unknown task {task!r}; known: {sorted(_SCORERS)}"
                )
        generated = generate_answers(
            model,
            processor,
            chunk,
            max_new_tokens=max_new_tokens,
            max_pixels=max_pixels,
            batch_size=batch_size,
        )
        for d, text in zip(chunk, generated, strict=True):
            record = d["record"]
            task = record["task"]
            correct = bool(_SCORERS[task](text, record))
            counts[task] += 1
            hits[task] += int(correct)
            records.append(record)
            if task == GROUNDING:
                distances.append(click_distance(text, record))
            else:
                type_ok, text_ok = referring_parts(text, record)
                parts[0] += int(type_ok)
                parts[1] += int(text_ok)
            predictions.append(
                {
                    "id": record.get("id"),
                    "task": task,
                    "answer": record.get("answer"),
                    "generated": text,
                    "correct": correct,
                }
            )

    def fraction(task: str) -> float:
        return hits[task] / counts[task] if counts[task] else float("nan")

    return {
        "grounding_accuracy": fraction(GROUNDING),
        "referring_exact_match": fraction(REFERRING),
        "grounding_count": counts[GROUNDING],
        "referring_count": counts[REFERRING],
        "eval_samples": counts[GROUNDING] + counts[REFERRING],
        "grounding_median_dist": statistics.median(distances) if distances else float("nan"),
        "referring_type_accuracy": parts[0] / counts[REFERRING] if counts[REFERRING] else float("nan"),
        "referring_text_accuracy": parts[1] / counts[REFERRING] if counts[REFERRING] else float("nan"),
        **chance_baselines(records),
        "predictions": predictions,
    }
