"""Which samples an eval scores: the whole set, or a deterministic sample stratified by group.

`eval.num_samples: null` scores every sample (a benchmark's number). A smaller N never takes the first N in
file order (a benchmark's files are sorted by platform, so that would cut whole platforms off): the set is
split into strata, task x data source x element type, N is divided over them in proportion to their size
(largest remainders, ties by stratum name; every stratum keeps at least one sample while N allows), and
each stratum's samples are chosen by a shuffle seeded with the eval seed and the stratum's name. The
chosen positions come back sorted, so predictions still merge in sample order, and the same set, N and
seed give the same sample on any machine and worker count.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from imagelora_dist.eval.breakdown import group_name

Stratum = tuple[str, str, str]


def stratum_of(record: Mapping[str, Any]) -> Stratum:
    """(task, data source, element type) of a record, as group names."""
    source = record.get("data_source") or record.get("source")
    return group_name(record.get("task")), group_name(source), group_name(record.get("element_type"))


def allocate(sizes: Mapping[Stratum, int], wanted: int) -> dict[Stratum, int]:
    """How many samples each stratum gives to a sample of `wanted` (all of them when `wanted` covers the set)."""
    total = sum(sizes.values())
    if wanted >= total:
        return dict(sizes)
    keys = sorted(k for k, n in sizes.items() if n > 0)
    floor_one = wanted >= len(keys)  # every stratum stays represented while the budget allows
    take = {k: (1 if floor_one else 0) for k in keys}
    left = wanted - sum(take.values())
    room = {k: sizes[k] - take[k] for k in keys}
    room_total = sum(room.values())
    if left > 0 and room_total > 0:
        quotas = {k: left * room[k] / room_total for k in keys}
        for k in keys:
            take[k] += int(quotas[k])
        rest = wanted - sum(take.values())
        by_remainder = sorted(keys, key=lambda k: (-(quotas[k] - int(quotas[k])), k))
        for k in by_remainder:
            if rest <= 0:
                break
            if take[k] < sizes[k]:
                take[k] += 1
                rest -= 1
    return take


def stratified_positions(strata: Sequence[Stratum], wanted: int, seed: int) -> list[int]:
    """Sorted positions of a `wanted`-sample stratified sample of a set whose position i is in `strata[i]`."""
    members: dict[Stratum, list[int]] = {}
    for position, key in enumerate(strata):
        members.setdefault(key, []).append(position)
    take = allocate({k: len(v) for k, v in members.items()}, wanted)
    chosen: list[int] = []
    for key, count in take.items():
        pool = list(members[key])
        random.Random(f"eval-sample/{seed}/{'/'.join(key)}").shuffle(pool)
        chosen += pool[:count]
    return sorted(chosen)


def sample_summary(
    strata: Iterable[Stratum], positions: Sequence[int], total: int, seed: int
) -> dict[str, Any]:
    """What the report says about a sample: its size, the set's, the seed and the strata kept."""
    return {
        "stratified": True,
        "samples": len(positions),
        "of": total,
        "seed": seed,
        "strata": len(set(strata)),
    }
