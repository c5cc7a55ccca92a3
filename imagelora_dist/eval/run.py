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
    click_pixels,
    model_image_size,
    sample_text,
)
from imagelora_dist.data.reader import ShardReader, ShardStream
from imagelora_dist.data.tasks import GROUNDING, REFERRING
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.eval.breakdown import group_metrics, group_wrong_format, record_group
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
    `chance_baselines` of the same questions, `wrong_format_count` (answers that could not be read at all,
    counted apart from misses; per task and per group too), and `predictions`: one
    `{"id", "task", "answer", "generated", "correct", "wrong_format"}` per sample (grounding ones also
    `data_source` and `element_type`), in input order. A sample whose task is neither grounding nor
    referring is an error (checked before generating its batch).

    This is `summarize(score_samples(...))`: the data-parallel eval scores chunks on many workers with
    `score_samples` and merges them in sample order with `summarize`, which gives the same report.
    """
    if max_samples is not None and max_samples < 0:
        raise ImageLoRAError(f"max_samples must be >= 0 or None, got {max_samples}")
    stream = iter(samples) if max_samples is None else itertools.islice(samples, max_samples)
    scored = score_samples(model, processor, stream, max_pixels=max_pixels, batch_size=batch_size,
                           max_new_tokens=max_new_tokens, answer_format=answer_format)  # fmt: skip
    return summarize(scored)


def score_samples(
    model: nn.Module,
    processor: Any,
    samples: Iterable[dict[str, Any]],
    *,
    max_pixels: int | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 24,
    answer_format: str = POINT,
) -> list[dict[str, Any]]:
    """One JSON-ready scored entry per decoded sample, in order: the prediction plus what `summarize` needs
    (the record's scoring fields, the click distance, the referring parts). Deterministic per sample."""
    if answer_format != POINT:
        max_new_tokens = max(max_new_tokens, NATIVE_MIN_NEW_TOKENS)
    check_answer_format(answer_format, processor)  # before generating anything
    stream = iter(samples)
    scored: list[dict[str, Any]] = []
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
            scored.append(score_answer(d["record"], text, answer, answer_format, processor, max_pixels))
    return scored


# The record fields `summarize` reads (chance baselines, groups); the rest of a record stays in the shards.
_SCORING_FIELDS = ("task", "bbox", "width", "height", "element_type", "element_text", "data_source", "source")


def score_answer(
    record: dict[str, Any],
    text: str,
    answer: str,
    answer_format: str = POINT,
    processor: Any = None,
    max_pixels: int | None = None,
) -> dict[str, Any]:
    """The scored entry of one generated `text` for `record` (expected `answer`), as `score_samples` makes."""
    task = record["task"]
    entry: dict[str, Any] = {"id": record.get("id"), "task": task, "answer": answer, "generated": text}
    if task == GROUNDING:
        size = None
        if answer_format == QWEN25_ABS:
            size = model_image_size(processor, record["width"], record["height"], max_pixels)
        group = record_group(record)
        entry["correct"] = grounding_hit(text, record, answer_format, size)
        entry["wrong_format"] = click_pixels(text, record, answer_format, size) is None
        entry["distance"] = click_distance(text, record, answer_format, size)
        entry["data_source"], entry["element_type"] = group
    else:
        type_ok, text_ok = referring_parts(text, record)
        entry["correct"] = bool(referring_match(text, record))
        entry["wrong_format"] = ":" not in text  # not "type: text" at all: unreadable, not a wrong element
        entry["parts"] = [type_ok, text_ok]
    entry["record"] = {k: record[k] for k in _SCORING_FIELDS if k in record}
    return entry


_PREDICTION_KEYS = (
    "id",
    "task",
    "answer",
    "generated",
    "correct",
    "wrong_format",
    "data_source",
    "element_type",
)


def summarize(scored: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The report of scored entries (`score_samples`, possibly from many workers) in sample order."""
    hits = {GROUNDING: 0, REFERRING: 0}
    counts = {GROUNDING: 0, REFERRING: 0}
    wrong = {GROUNDING: 0, REFERRING: 0}
    predictions: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    distances: list[float] = []
    parts = [0, 0]  # referring answers with the right type, with the right text
    outcomes: list[tuple[tuple[str, str], bool]] = []  # grounding: (data source, element type), correct
    wrong_groups: list[tuple[tuple[str, str], bool]] = []
    for entry in scored:
        task = entry["task"]
        if task == GROUNDING:
            group = (entry["data_source"], entry["element_type"])
            outcomes.append((group, entry["correct"]))
            wrong_groups.append((group, entry["wrong_format"]))
            distances.append(entry["distance"])
        else:
            parts[0] += int(entry["parts"][0])
            parts[1] += int(entry["parts"][1])
        counts[task] += 1
        hits[task] += int(entry["correct"])
        wrong[task] += int(entry["wrong_format"])
        records.append(entry["record"])
        predictions.append({k: entry[k] for k in _PREDICTION_KEYS if k in entry})

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
        "wrong_format_count": wrong[GROUNDING] + wrong[REFERRING],
        "grounding_wrong_format_count": wrong[GROUNDING],
        "referring_wrong_format_count": wrong[REFERRING],
        **chance_baselines(records),
        **group_metrics(outcomes),
        **group_wrong_format(wrong_groups),
        "predictions": predictions,
    }
