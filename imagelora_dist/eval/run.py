"""Evaluate a model on decoded screenshot samples: grounding accuracy and referring exact match."""

from __future__ import annotations

import itertools
import os
import statistics
from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn

from imagelora_dist.data.answer_formats import (
    POINT,
    QWEN25_ABS,
    check_answer_format,
    model_image_size,
    sample_text,
)
from imagelora_dist.data.reader import ShardReader, ShardStream
from imagelora_dist.data.tasks import GROUNDING, REFERRING
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.eval.breakdown import group_metrics, record_group
from imagelora_dist.eval.generate import generate_answers
from imagelora_dist.eval.metrics import (
    chance_baselines,
    click_distance,
    grounding_hit,
    referring_match,
    referring_parts,
)

_SCORERS = {GROUNDING: grounding_hit, REFERRING: referring_match}  # the tasks evaluated
# A native answer (`{"bbox_2d": [1316, 728, 1320, 740]}`, a fenced JSON list with a label) takes ~20-50
# tokens; eval.max_new_tokens defaults to 24, sized for "(x, y)": a cut answer would read as a miss.
NATIVE_MIN_NEW_TOKENS = 64


def shard_samples(path: str | os.PathLike, *, trust_index_urls: bool = False) -> Iterator[dict[str, Any]]:
    """Every decoded sample of a shard set, in index order, for `evaluate`.

    Read with batches of one: a reader yields whole batches only (every rank the same count), so a reader
    of `eval.batch_size` would leave a benchmark's last samples out (and refuse a set smaller than a batch).
    """
    reader = ShardReader.from_path(
        path, 1, shuffle_buffer=0, shuffle_shards=False, trust_index_urls=trust_index_urls
    )
    for batch in ShardStream(reader):
        yield from batch["samples"]


def evaluate(
    model: nn.Module,
    processor: Any,
    samples: Iterable[dict[str, Any]],
    *,
    max_samples: int | None = None,
    max_pixels: int | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 24,
    answer_format: str = POINT,
) -> dict[str, Any]:
    """Generate an answer for each decoded sample (`{"image", "record"}`) and score it by its task.

    `samples` is consumed lazily, `batch_size` at a time, up to `max_samples` (None: all). For a shard set,
    pass `shard_samples(path)` (every sample; a reader of a larger batch size drops the tail). Returns
    `grounding_accuracy` and `referring_exact_match` (fractions; NaN when the task has no sample),
    `grounding_count`, `referring_count`, `eval_samples` (their sum), `grounding_median_dist` (median click
    distance to the target's centre, [0, 1000) coordinates; see `click_distance`), `referring_type_accuracy`
    and `referring_text_accuracy` (each half of the answer; see `referring_parts`), the image-blind
    `chance_baselines` of the same questions, and `predictions`: one
    `{"id", "task", "answer", "generated", "correct"}` per sample (grounding ones also `data_source` and
    `element_type`), in input order. A sample whose task is neither grounding nor referring is an error
    (checked before generating its batch).

    Grounding prompts and answers are in `answer_format` (a resolved name, see
    `data.answer_formats.resolve_answer_format`; qwen25_abs needs the processor's resize), and the
    accuracy per group (data source x element type) comes as the flat metrics of `eval.breakdown`. A
    native format generates at least NATIVE_MIN_NEW_TOKENS tokens.
    """
    if max_samples is not None and max_samples < 0:
        raise ImageLoRAError(f"max_samples must be >= 0 or None, got {max_samples}")
    if answer_format != POINT:
        max_new_tokens = max(max_new_tokens, NATIVE_MIN_NEW_TOKENS)
    check_answer_format(answer_format, processor)  # before generating anything
    stream = iter(samples) if max_samples is None else itertools.islice(samples, max_samples)
    hits = {GROUNDING: 0, REFERRING: 0}
    counts = {GROUNDING: 0, REFERRING: 0}
    predictions: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    distances: list[float] = []
    parts = [0, 0]  # referring answers with the right type, with the right text
    outcomes: list[tuple[tuple[str, str], bool]] = []  # grounding: (data source, element type), correct
    while chunk := list(itertools.islice(stream, batch_size)):
        prompted, targets = [], []
        for d in chunk:
            record = d["record"]
            task = record.get("task")
            if task not in _SCORERS:
                raise ImageLoRAError(
                    f"sample {record.get('id')!r}: unknown task {task!r}; known: {sorted(_SCORERS)}"
                )
            try:
                instruction, answer = sample_text(record, answer_format, processor, max_pixels)
            except (KeyError, TypeError, ValueError) as exc:
                raise ImageLoRAError(
                    f"sample {record.get('id')!r}: cannot build its answer ({exc})"
                ) from None
            prompted.append({**d, "record": {**record, "instruction": instruction}})
            targets.append(answer)
        generated = generate_answers(
            model,
            processor,
            prompted,
            max_new_tokens=max_new_tokens,
            max_pixels=max_pixels,
            batch_size=batch_size,
        )
        for d, text, answer in zip(chunk, generated, targets, strict=True):
            record = d["record"]
            task = record["task"]
            extra: dict[str, Any] = {}
            if task == GROUNDING:
                size = None
                if answer_format == QWEN25_ABS:
                    size = model_image_size(processor, record["width"], record["height"], max_pixels)
                correct = grounding_hit(text, record, answer_format, size)
                distances.append(click_distance(text, record, answer_format, size))
                group = record_group(record)
                outcomes.append((group, correct))
                extra = {"data_source": group[0], "element_type": group[1]}
            else:
                correct = bool(referring_match(text, record))
                type_ok, text_ok = referring_parts(text, record)
                parts[0] += int(type_ok)
                parts[1] += int(text_ok)
            counts[task] += 1
            hits[task] += int(correct)
            records.append(record)
            predictions.append(
                {"id": record.get("id"), "task": task, "answer": answer, "generated": text,
                 "correct": correct, **extra}
            )  # fmt: skip

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
        **group_metrics(outcomes),
        "predictions": predictions,
    }
