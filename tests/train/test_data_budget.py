"""A training step's drop accounting on one rank: counts by reason, the run totals in the cursor, the
stop line naming the lost shard, and the metrics (the 2-rank sums run in tests/train/test_skipped_step.py)."""

from __future__ import annotations

import json

import pytest
import torch

from imagelora_dist.data.drops import Counters, DataLossError
from imagelora_dist.data.reader import Cursor
from imagelora_dist.train.data_budget import count_step_drops, drop_metrics

ZERO = Counters().as_dict()


def _batch(usable: int, lost=(), **dropped) -> dict:
    return {"inputs": {"input_ids": torch.ones(usable, 3)} if usable else None, "num_samples": usable,
            "stats": {**ZERO, **dropped}, "lost_shards": list(lost)}  # fmt: skip


def _count(group, cursor, allowed, seen, lines, step=1, planned=0):
    return count_step_drops(
        group, 0, 1, torch.device("cpu"), cursor, allowed, planned, step, seen, lines.append
    )


def test_drops_are_counted_by_reason_and_kept_across_a_resume():
    cursor, seen, lines = Cursor(), Counters(), []
    group = [
        _batch(2, undecodable=1),
        _batch(0, ["s3://b/train-000003.tar: ACCESS_DENIED (after 3 tries)"], missing=3),
    ]
    usable, drops = _count(group, cursor, 0.7, seen, lines)
    assert usable == 2 and drops == {**ZERO, "undecodable": 1, "missing": 3}
    assert (cursor.run_read, cursor.run_dropped) == (6, 4)
    assert lines == ["[train] rank 0: could not read shard s3://b/train-000003.tar: ACCESS_DENIED (after 3 tries); "
                     "its samples are dropped (4 of 6 so far, data.max_dropped_fraction=0.7)"]  # fmt: skip
    metrics = drop_metrics(drops, cursor, skipped=False)
    assert metrics["dropped_missing"] == 3.0 and metrics["dropped_undecodable"] == 1.0
    assert metrics["dropped_fraction"] == pytest.approx(4 / 6) and metrics["step_skipped"] == 0.0
    # The totals travel with the checkpoint's cursor and through a resume on another layout.
    resumed = Cursor.from_dict(json.loads(json.dumps(cursor.to_dict()))).relayout(2, 1, 4)
    assert (resumed.run_read, resumed.run_dropped) == (6, 4)
    resumed.finish_epoch()
    assert (resumed.run_read, resumed.run_dropped) == (6, 4)


def test_a_step_over_the_budget_stops_with_one_line_naming_the_shard():
    cursor, seen, lines = Cursor(run_read=96, run_dropped=0), Counters(), []
    lost = "s3://b/train-000007.tar: Path does not exist 'b/train-000007.tar' (after 3 tries)"
    with pytest.raises(DataLossError) as info:
        _count([_batch(0, [lost], missing=4)], cursor, 0.03, seen, lines, step=13)
    assert str(info.value) == (
        f"train step 13: 4 of the 100 samples read so far were dropped (missing 4); could not read shard {lost}; "
        "that is 4.0%, more than data.max_dropped_fraction=0.03 allows (raise it to accept the loss)"
    )
    # Exactly at the budget is allowed; the default (0) allows nothing.
    assert _count([_batch(0, missing=4)], Cursor(run_read=96), 4 / 100, Counters(), [])[0] == 0
    with pytest.raises(DataLossError, match=r"1 of the 9 samples .* \(too_long 1\); that is 11.1%"):
        _count([_batch(8, too_long=1)], Cursor(), 0.0, Counters(), [])


def _rank(rank: int, init: str, out: str) -> None:
    """One of two gloo ranks: three steps of drop accounting; what it saw goes to `out`.rank."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    lost = "s3://b/train-000005.tar: Path does not exist (after 3 tries)"
    steps = [
        [_batch(0, missing=2)] if rank == 0 else [_batch(2)],  # one rank has samples: the step runs
        [_batch(0, undecodable=2)],  # no rank has any: skipped on both
        [_batch(0, [lost], missing=4)] if rank == 1 else [_batch(0)],  # only rank 1 knows the shard
    ]
    cursor, seen, seen_steps, error = Cursor(), Counters(), [], None
    try:
        for step, group in enumerate(steps, 1):
            usable, drops = count_step_drops(
                group, rank, 2, torch.device("cpu"), cursor, 0.8, 0, step, seen, print
            )
            seen_steps.append([usable, drops["missing"], drops["undecodable"]])
    except DataLossError as exc:
        error = str(exc)
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"steps": seen_steps, "error": error}, f)
    torch.distributed.destroy_process_group()


def test_two_ranks_sum_the_same_counts_and_stop_together_naming_either_ranks_shard(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_rank, args=(r, str(tmp_path / "init"), str(tmp_path / "out"))) for r in (0, 1)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    got = [json.loads((tmp_path / f"out.{r}").read_text()) for r in (0, 1)]
    assert got[0] == got[1]  # every rank decides alike: none is left in a collective
    assert got[0]["steps"] == [[2, 2, 0], [0, 0, 4]]
    assert got[0]["error"].startswith("train step 3: 10 of the 12 samples read so far were dropped")
    assert (
        "could not read shard s3://b/train-000005.tar: Path does not exist (after 3 tries)" in got[0]["error"]
    )


def test_an_early_loss_is_weighed_against_the_whole_run():
    # 1,000 samples planned, 10% allowed: 8 dropped of the first 16 read is within the run's budget of 100...
    cursor = Cursor()
    assert _count([_batch(8, missing=8)], cursor, 0.1, Counters(), [], planned=1000)[0] == 8
    # ...101 are not, however early; and at the run's end (read >= planned) the bound is dropped / read.
    with pytest.raises(DataLossError) as info:
        _count([_batch(0, missing=93)], cursor, 0.1, Counters(), [], step=2, planned=1000)
    assert "101 of the 109 samples read so far were dropped (missing 93); data.max_dropped_fraction=0.1 allows " \
           "100 of the 1000 samples it reads (raise it to accept the loss)" in str(info.value)  # fmt: skip
    with pytest.raises(DataLossError, match=r"that is 10.1%, more than data.max_dropped_fraction=0.1 allows"):
        _count(
            [_batch(9, missing=2)],
            Cursor(run_read=990, run_dropped=99),
            0.1,
            Counters(),
            [],
            planned=1000,
        )
