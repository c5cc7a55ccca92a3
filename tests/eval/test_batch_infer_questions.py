"""Batch inference's shard questions: a per-target sample is one question; a screen-grouped sample
(`shard --group-by-screen`) gets one clear error line, not a misleading 'no instruction'."""

from __future__ import annotations

import json

import pytest

from imagelora_dist.eval.batch_infer import shard_question


def test_a_per_target_sample_is_a_question_and_a_grouped_one_is_refused_naming_why():
    target = {"id": "a", "instruction": "Click Save", "answer": "[1, 2]"}
    raw = {"__key__": "000001-000000", "png": b"\x89PNG...", "json": json.dumps(target).encode()}
    question = shard_question(raw)
    assert question["record"] == target and question["image"] == b"\x89PNG..."
    grouped = {"screen": "abc", "width": 10, "height": 10, "targets": [target, {**target, "id": "b"}]}
    with pytest.raises(ValueError) as err:
        shard_question({**raw, "json": json.dumps(grouped).encode()})
    msg = str(err.value)
    assert "screen-grouped sample (2 targets" in msg and "--group-by-screen" in msg and "\n" not in msg
