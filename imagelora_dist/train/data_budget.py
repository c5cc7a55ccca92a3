"""A training step's data: usable and dropped samples summed over ranks, and the run's loss budget.

Every rank sums the same numbers at the same point (one small all-reduce per optimizer step), so every
rank skips a step with no usable sample, or stops with one line when more is dropped than
`data.max_dropped_fraction` allows, at the same step: none is left waiting in a collective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from imagelora_dist.data.drops import Counters, check_dropped, over_budget
from imagelora_dist.data.reader import Cursor


def count_step_drops(
    group: list[dict[str, Any]],
    rank: int,
    world_size: int,
    device: torch.device,
    cursor: Cursor,
    allowed: float,
    planned: int,
    step: int,
    seen: Counters,
    log: Callable[[str], None],
) -> tuple[int, dict[str, int]]:
    """The usable samples of an optimizer step's micro-batches and the dropped ones by reason, summed over
    ranks (one all-reduce on every rank, every step), added to the cursor's run totals. Every rank sees the
    same sums, so all skip an empty step, or stop with DataLossError, together (`planned`: the samples the
    run reads in all, see data/drops.py)."""
    drops, lost, usable = Counters(), [], 0
    for b in group:
        drops.add(b["stats"])
        lost += b.get("lost_shards") or []
        usable += int(b["num_samples"]) if b["inputs"] is not None else 0
    names = list(drops.as_dict())
    values = torch.tensor([usable, *drops.as_dict().values()], dtype=torch.long, device=device)
    if world_size > 1:
        torch.distributed.all_reduce(values)
    usable, *counts = (int(v) for v in values.tolist())
    step_drops = dict(zip(names, counts, strict=True))
    seen.add(step_drops)
    cursor.run_read += usable + sum(counts)
    cursor.run_dropped += sum(counts)
    if over_budget(cursor.run_dropped, cursor.run_read, allowed, planned):
        every = [lost]
        if world_size > 1:  # the shards other ranks lost: every rank is on this path at this step
            every = [None] * world_size
            torch.distributed.all_gather_object(every, lost)
        check_dropped(seen.as_dict(), cursor.run_read, allowed, [x for part in every for x in part or []],
                      where=f"train step {step}", dropped=cursor.run_dropped, planned=planned)  # fmt: skip
    for shard in lost:
        log(f"[train] rank {rank}: could not read shard {shard}; its samples are dropped "
            f"({cursor.run_dropped} of {cursor.run_read} so far, data.max_dropped_fraction={allowed:g})")  # fmt: skip
    return usable, step_drops


def drop_metrics(drops: dict[str, int], cursor: Cursor, *, skipped: bool) -> dict[str, float]:
    """A step's dropped samples by reason (summed over ranks), the run's dropped fraction, and whether the
    step was skipped for want of any usable sample."""
    return {
        **{f"dropped_{k}": float(v) for k, v in drops.items()},
        "dropped_fraction": cursor.run_dropped / max(1, cursor.run_read),
        "step_skipped": float(skipped),
    }
