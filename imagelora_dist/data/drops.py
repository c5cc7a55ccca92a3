"""Dropped samples: counted by reason, reported, and bounded by `data.max_dropped_fraction`.

A sample is dropped when it cannot be used: its shard could not be read (`missing`, after the reader's
retries), its tar data is broken or short (`corrupt`), its image or JSON does not decode (`undecodable`),
it lacks an image or a record field (`incomplete`), it is longer than `data.max_length` (`too_long`), or
its answer cannot be built in the answer format (`malformed`).

The dropped fraction is dropped / read, where `read` counts every sample position a stage has read so
far, usable or dropped (training: summed over ranks, since the run's first step, kept across resumes;
the probe: while building its set). A stage stops with one line (`DataLossError`) as soon as it has
dropped more than `data.max_dropped_fraction` (default 0: any drop stops it) of max(read, planned), where
`planned` is what the stage is set to read in all (training: train.steps x the global batch; the probe:
probe.num_examples): a loss early in a run is weighed against the run's whole budget, not against the few
samples read by then, and at the end (read >= planned) the bound is exactly dropped / read. The line names
the shards the stage could not read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from imagelora_dist.errors import ImageLoRAError

REASONS = ("missing", "corrupt", "undecodable", "incomplete", "too_long", "malformed")


class DataLossError(ImageLoRAError):
    """More samples were dropped than `data.max_dropped_fraction` allows (exit 2, one line)."""


@dataclass
class Counters:
    """What was dropped while reading, by reason (summed over the batches they are added from)."""

    corrupt: int = 0
    undecodable: int = 0
    incomplete: int = 0
    missing: int = 0
    too_long: int = 0
    malformed: int = 0  # grounding records whose box or size cannot be read (the collator drops them)

    def add(self, other: Mapping[str, int]) -> None:
        """Add a batch's counts (keys that are not a reason are ignored)."""
        for k, v in other.items():
            if k in REASONS:
                setattr(self, k, getattr(self, k) + int(v))

    @property
    def total(self) -> int:
        """All dropped samples."""
        return sum(asdict(self).values())

    def as_dict(self) -> dict[str, int]:
        """{reason: count} for every reason."""
        return asdict(self)


def describe_drops(counts: Mapping[str, int]) -> str:
    """`missing 4, undecodable 1`: the non-zero reasons, for a progress line."""
    return ", ".join(f"{k} {int(counts[k])}" for k in REASONS if int(counts.get(k, 0)))


def one_line(error: BaseException) -> str:
    """An exception as one short line (pyarrow's S3 errors span several)."""
    return (" ".join(str(error).split()) or type(error).__name__)[:300]


def over_budget(dropped: int, read: int, allowed: float, planned: int = 0) -> bool:
    """Whether `dropped` is more than the fraction `allowed` of max(`read`, `planned`) samples."""
    return dropped > allowed * max(read, planned)


def check_dropped(
    counts: Mapping[str, int],
    read: int,
    allowed: float,
    lost: Sequence[str] = (),
    *,
    where: str,
    dropped: int | None = None,
    planned: int = 0,
) -> None:
    """Raise DataLossError when `dropped` (default: the sum of `counts`, by reason) is more than `allowed`
    of max(`read`, `planned`): `read` is every sample read so far, usable or dropped, `planned` what the
    stage reads in all. `lost` names the shards that could not be read (`url: error (after N tries)`),
    the first of which the line shows."""
    if dropped is None:
        dropped = sum(int(counts.get(k, 0)) for k in REASONS)
    if not over_budget(dropped, read, allowed, planned):
        return
    shard = ""
    if lost:
        more = f" (and {len(lost) - 1} more shard(s))" if len(lost) > 1 else ""
        shard = f"; could not read shard {lost[0]}{more}"
    share = (
        f"data.max_dropped_fraction={allowed:g} allows {math.floor(allowed * planned + 1e-9)} of the {planned} samples it reads"
        if planned > read
        else f"that is {dropped / max(1, read):.1%}, more than data.max_dropped_fraction={allowed:g} allows"
    )
    raise DataLossError(
        f"{where}: {dropped} of the {read} samples read so far were dropped ({describe_drops(counts)}){shard}; "
        f"{share} (raise it to accept the loss)"
    )
