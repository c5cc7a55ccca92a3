"""Shared-prefix packing on the data side: grouping, the packed layout, and the collator's packed batches.

The model-side exactness (loss, logits and gradients equal to the unpacked batch) is in
tests/models/test_shared_prefix.py.
"""

from __future__ import annotations

import pytest
import torch

from imagelora_dist.data.collate import IGNORE_INDEX, BatchCollator
from imagelora_dist.data.packing import pack_batch, screen_groups
from imagelora_dist.data.screens import make_screen
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models.processors import build_family_processor
from imagelora_dist.models.shared_prefix import POSITIONS, SEGMENTS

X = IGNORE_INDEX
V = 9  # the visual token id of the plain-tensor batches


def test_groups_are_consecutive_equal_keys_at_most_k():
    keys = ["a", "a", "a", "b", None, None, "b", "b", "b"]
    assert screen_groups(keys, 2) == [[0, 1], [2], [3], [4], [5], [6, 7], [8]]
    assert screen_groups(keys, 1) == [[i] for i in range(9)]
    with pytest.raises(ImageLoRAError, match="targets_per_sample"):
        screen_groups(keys, 0)


def _batch(rows, labels, grids):
    width = max(len(r) for r in rows)
    pad = [r + [0] * (width - len(r)) for r in rows]
    return {
        "input_ids": torch.tensor(pad),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([lab + [X] * (width - len(lab)) for lab in labels]),
        "mm_token_type_ids": (torch.tensor(pad) == V).long(),
        "pixel_values": torch.arange(sum(g[0] * g[1] * g[2] for g in grids) * 2).reshape(-1, 2).float(),
        "image_grid_thw": torch.tensor(grids),
    }


def test_a_group_shares_its_prefix_once_and_each_branch_keeps_its_positions_and_labels():
    batch = _batch(
        rows=[[1, V, V, 2, 3, 7, 8], [1, V, V, 2, 4, 4, 7, 6], [1, V, 2, 5, 5]],
        labels=[[X, X, X, X, X, 7, 8], [X, X, X, X, X, X, 7, 6], [X, X, X, X, 5]],
        grids=[[1, 2, 2], [1, 2, 2], [1, 1, 2]],
    )
    out, kept = pack_batch(batch, [[0, 1], [2]], [1, 1, 1], torch.tensor([V]))
    assert kept == [0, 2]
    assert out["input_ids"].tolist() == [[1, V, V, 2, 3, 7, 8, 4, 4, 7, 6], [1, V, 2, 5, 5] + [0] * 6]
    assert out["labels"].tolist() == [[X, X, X, X, X, 7, 8, X, X, 7, 6], [X, X, X, X, 5] + [X] * 6]
    assert out[SEGMENTS].tolist() == [[0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2], [0] * 5 + [-1] * 6]
    assert out[POSITIONS].tolist() == [[0, 1, 2, 3, 4, 5, 6, 4, 5, 6, 7], [0, 1, 2, 3, 4] + [0] * 6]
    assert out["attention_mask"].tolist() == [[1] * 11, [1] * 5 + [0] * 6]
    assert out["mm_token_type_ids"].tolist() == [[0, 1, 1] + [0] * 8, [0, 1] + [0] * 9]
    # the first row's 4 patches and the third row's 2; the second row's image is the first's
    assert out["pixel_values"][:, 0].tolist() == [0, 2, 4, 6, 16, 18]
    assert out["image_grid_thw"].tolist() == [[1, 2, 2], [1, 1, 2]]


def test_identical_questions_keep_the_token_before_each_answer_in_the_branch():
    # Same question, answers differ from their 2nd token: the prefix stops one token before the first label,
    # since the loss predicts a label from the packed row's previous token.
    batch = _batch(
        rows=[[1, V, 2, 3, 5, 6], [1, V, 2, 3, 5, 7]],
        labels=[[X, X, X, X, 5, 6], [X, X, X, X, 5, 7]],
        grids=[[1, 1, 1], [1, 1, 1]],
    )
    out, _ = pack_batch(batch, [[0, 1]], [1, 1], torch.tensor([V]))
    assert out["input_ids"].tolist() == [[1, V, 2, 3, 5, 6, 3, 5, 7]]
    assert out["labels"].tolist() == [[X, X, X, X, 5, 6, X, 5, 7]]
    assert out[POSITIONS].tolist() == [[0, 1, 2, 3, 4, 5, 3, 4, 5]]


def test_a_group_whose_visual_tokens_would_leave_the_prefix_stays_unpacked():
    batch = _batch(
        rows=[[1, V, 2, 3, 4], [1, 2, V, 3, 4]],
        labels=[[X, X, X, X, 4], [X, X, X, X, 4]],
        grids=[[1, 1, 1], [1, 1, 1]],
    )
    out, kept = pack_batch(batch, [[0, 1]], [1, 1], torch.tensor([V]))
    assert out is batch and kept == [0, 1]
    batch["pixel_values_videos"] = torch.zeros(1)
    with pytest.raises(ImageLoRAError, match="pixel_values_videos"):
        pack_batch(batch, [[0, 1]], [1, 1], torch.tensor([V]))


def _decoded(screens: list[int]) -> list[dict]:
    out = []
    for i, seed in enumerate(screens):
        s = make_screen(seed, 224, 224)
        out.append(
            {"image": s.image, "record": {"instruction": f"{s.instruction} (target {i})", "answer": s.answer}}
        )
    return out


def test_the_collator_packs_consecutive_targets_of_one_screen_up_to_k():
    processor = build_family_processor("qwen2_vl")
    processor.tokenizer.padding_side = "right"
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    decoded = _decoded([1, 1, 1, 2, 2, 3])
    plain = BatchCollator(processor, [image_token], image_digests=True)(decoded)
    packed = BatchCollator(processor, [image_token], image_digests=True, targets_per_sample=2)(decoded)
    inputs, ref = packed["inputs"], plain["inputs"]
    assert packed["num_samples"] == plain["num_samples"] == 6
    assert inputs["input_ids"].shape[0] == 4  # [0, 1], [2], [3, 4], [5]
    # every answer token is supervised once, in the same order
    assert torch.equal(inputs["labels"][inputs["labels"] != X], ref["labels"][ref["labels"] != X])
    per_image = int((ref["input_ids"][0] == image_token).sum())
    assert int((inputs["input_ids"] == image_token).sum()) == 4 * per_image
    assert packed["visual_tokens"] == plain["visual_tokens"] - 2 * per_image
    assert packed["image_digests"] == [plain["image_digests"][i] for i in (0, 2, 3, 5)]
    assert inputs["image_grid_thw"].shape[0] == 4
    text_only = BatchCollator(processor, [image_token], targets_per_sample=2)(
        [{"image": None, "record": {"instruction": "Say hi", "answer": "hi", "text_only": True}}] * 2
    )
    assert SEGMENTS not in text_only["inputs"]  # nothing to share: the batch as it was


def test_config_validates_targets_per_sample_before_anything_runs():
    from imagelora_dist.config import load_config

    assert load_config(None, ["data.targets_per_sample=6"]).data.targets_per_sample == 6
    assert "targets_per_sample" not in load_config(None).model_dump_json()  # stage hashes stay as they were
    for overrides, says in (
        (
            ["data.targets_per_sample=0"],
            "data.targets_per_sample: Input should be greater than or equal to 1",
        ),
        (["data.targets_per_sample=2", "model.attn_implementation=flash_attention_2"], "eager"),
        (["data.targets_per_sample=2", "speed.prefix_cache=true"], "speed.prefix_cache"),
    ):
        with pytest.raises(ImageLoRAError, match=says):
            load_config(None, overrides)
    load_config(None, ["speed.prefix_cache=true", "model.attn_implementation=flash_attention_2"])  # K = 1
