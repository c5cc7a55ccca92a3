"""Shared-prefix packing: up to K targets of one screenshot in one sequence, exact.

A collated (unpacked) batch whose consecutive rows show the same screenshot becomes one row per group: the
tokens the rows share (chat template, image tokens, any common start of the question) once, then each
row's remaining tokens as a branch. Two per-token tensors describe the layout for the model side
(models/shared_prefix.py): the segment (0 the shared prefix, b >= 1 branch b, -1 padding) and the position
each token has in its own row alone. The model lets a branch see the prefix and itself only and gives it
those positions, so every logit equals the unpacked row's; the labels are the rows' own, so the loss (a
mean over answer tokens) and its gradients are those of the unpacked batch.

The prefix stops at least one token before a row's first label: the model's loss predicts a label from
the token before it in the packed row, which must be the row's own token, not the end of another branch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models.shared_prefix import POSITIONS, SEGMENTS
from imagelora_dist.models.vision_cache import is_pixel_stand_in, pixel_stand_in

IGNORE_INDEX = -100
# Per-token tensors besides input_ids/attention_mask/labels, packed like the tokens.
_PER_TOKEN = ("mm_token_type_ids", "token_type_ids")
# Image tensors with one entry per row (Idefics3: [rows, images, ...]): a group keeps its first row's.
_PER_ROW = ("pixel_attention_mask",)


def screen_groups(keys: Sequence[str | None], k: int) -> list[list[int]]:
    """Consecutive row indices with the same non-None key, at most `k` per group (None: a group alone)."""
    if k < 1:
        raise ImageLoRAError(f"data.targets_per_sample must be >= 1, got {k}")
    groups: list[list[int]] = []
    for i, key in enumerate(keys):
        last = groups[-1] if groups else None
        if last is not None and key is not None and keys[last[0]] == key and len(last) < k:
            last.append(i)
        else:
            groups.append([i])
    return groups


def _common_length(rows: Sequence[torch.Tensor]) -> int:
    """Length of the longest common start of 1-D tensors."""
    n = min(len(r) for r in rows)
    same = torch.ones(n, dtype=torch.bool)
    for r in rows[1:]:
        same &= rows[0][:n] == r[:n]
    differ = (~same).nonzero()
    return int(differ[0]) if len(differ) else n


def _prefix_length(ids: list[torch.Tensor], labels: list[torch.Tensor], visual: list[torch.Tensor]) -> int:
    """The shared prefix of a group's rows, or 0 when the group cannot share one."""
    length = _common_length(ids)
    for lab in labels:
        labelled = (lab != IGNORE_INDEX).nonzero()
        first = int(labelled[0]) if len(labelled) else len(lab)
        length = min(length, first - 1)  # the token before the first label stays in the branch
    if length < 1 or any(bool(v[length:].any()) for v in visual):
        return 0  # visual tokens must all be in the prefix (they are, for identical images first)
    return length


def _image_slices(batch: dict, images_per_row: Sequence[int]) -> list[tuple[int, int]] | None:
    """Per row, the [start, end) of its entries in pixel_values (flat Qwen patches or one per image)."""
    pixels = batch.get("pixel_values")
    if pixels is None:
        return None
    if "image_grid_thw" in batch:
        sizes = batch["image_grid_thw"].prod(-1).tolist()  # patches per image
    elif pixels.dim() == 5:  # [rows, images, C, H, W]
        return [(r, r + 1) for r in range(len(images_per_row))]
    else:
        sizes = [1] * sum(images_per_row)
    out, image, start = [], 0, 0
    for count in images_per_row:
        end = start + sum(sizes[image : image + count])
        out.append((start, end))
        image, start = image + count, end
    if start != pixels.shape[0]:
        raise ImageLoRAError(
            f"packing: {start} pixel entries for the rows' images, pixel_values has {pixels.shape[0]}"
        )
    return out


def pack_batch(
    batch: dict[str, torch.Tensor],
    groups: Sequence[Sequence[int]],
    images_per_row: Sequence[int],
    visual_token_ids: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """One row per group (rows of a group show the same images), and the rows whose images it keeps.

    A group that cannot share a prefix stays as separate rows; when nothing packs, the batch comes back as
    it is. Pixel values (and grids) are kept for each packed row's first source row only, so the vision
    tower runs once per screen.
    """
    known = {
        "input_ids",
        "attention_mask",
        "labels",
        "pixel_values",
        "image_grid_thw",
        *_PER_TOKEN,
        *_PER_ROW,
    }
    unknown = sorted(set(batch) - known)
    if unknown:
        raise ImageLoRAError(
            f"data.targets_per_sample > 1: cannot pack a batch carrying {', '.join(unknown)}"
        )
    ids_all, mask_all = batch["input_ids"], batch["attention_mask"].bool()
    real = [mask_all[r] for r in range(len(ids_all))]
    tokens = {
        k: [batch[k][r][real[r]] for r in range(len(ids_all))]
        for k in ("input_ids", "labels", *_PER_TOKEN)
        if k in batch
    }
    visual = [torch.isin(t, visual_token_ids) for t in tokens["input_ids"]]
    planned: list[tuple[list[int], int]] = []
    for group in groups:
        length = 0
        if len(group) > 1:
            length = _prefix_length(
                [tokens["input_ids"][r] for r in group],
                [tokens["labels"][r] for r in group],
                [visual[r] for r in group],
            )
        if length:
            planned.append((list(group), length))
        else:
            planned.extend(([r], 0) for r in group)
    if all(len(g) == 1 for g, _ in planned):
        return batch, list(range(len(ids_all)))
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in (*tokens, SEGMENTS, POSITIONS)}
    for group, length in planned:
        first = group[0]
        for k, per_row in tokens.items():
            rows[k].append(torch.cat([per_row[first][:length]] + [per_row[r][length:] for r in group]))
        n = [len(tokens["input_ids"][r]) - length for r in group]
        if length == 0:  # a row alone: its own positions, all in segment 0
            rows[SEGMENTS].append(torch.zeros(n[0], dtype=torch.long))
            rows[POSITIONS].append(torch.arange(n[0]))
            continue
        rows[SEGMENTS].append(
            torch.cat(
                [torch.zeros(length, dtype=torch.long)] + [torch.full((m,), b + 1) for b, m in enumerate(n)]
            )
        )
        rows[POSITIONS].append(
            torch.cat([torch.arange(length)] + [torch.arange(length, length + m) for m in n])
        )
    width = max(len(r) for r in rows["input_ids"])
    # padding as the collator padded (fully masked either way), else 0
    pad_id = int(ids_all[~mask_all][0]) if bool((~mask_all).any()) else 0
    fill = {
        "input_ids": pad_id,
        "labels": IGNORE_INDEX,
        SEGMENTS: -1,
        POSITIONS: 0,
        "mm_token_type_ids": 0,
        "token_type_ids": 0,
    }
    out: dict[str, torch.Tensor] = {}
    for k, values in rows.items():
        out[k] = torch.stack(
            [torch.nn.functional.pad(v, (0, width - len(v)), value=fill[k]) for v in values]
        ).to(batch.get(k, values[0]).dtype)
    out["attention_mask"] = (out[SEGMENTS] >= 0).to(batch["attention_mask"].dtype)
    kept = [g[0] for g, _ in planned]
    slices = _image_slices(batch, images_per_row)
    if slices is not None:
        pixels = batch["pixel_values"]
        if is_pixel_stand_in(pixels):  # a batch sent without pixels (cached features) stays so
            count = sum(slices[r][1] - slices[r][0] for r in kept)
            out["pixel_values"] = pixel_stand_in(count, pixels.shape[1], pixels.dtype, pixels.device)
        else:
            out["pixel_values"] = torch.cat([pixels[slice(*slices[r])] for r in kept])
    if "image_grid_thw" in batch:
        starts = [sum(images_per_row[:r]) for r in range(len(images_per_row))]
        out["image_grid_thw"] = torch.cat(
            [batch["image_grid_thw"][starts[r] : starts[r] + images_per_row[r]] for r in kept]
        )
    for k in _PER_ROW:
        if k in batch:
            out[k] = batch[k][kept]
    return out, kept
