"""The probe's hand-out (probe/distributed.py `_HandOut`) with fake actors and a fake clock: a lost actor's
batch is re-run by another actor and counted once, the lost actor's error is read and it is dropped, a copy
of a batch still running elsewhere counts once, and the bounds on retries and lost workers hold. No Ray
cluster: `wait`/`get`/`cancel` are the fakes' (issue 35 row 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import ray.exceptions

from imagelora_dist.data.probe_set import ProbeBatchInfo
from imagelora_dist.probe.distributed import ProbeFailed, _HandOut


class Ref:
    def __init__(self, actor: FakeActor, index: int, done_at: float, outcome):
        self.actor, self.index, self.done_at, self.outcome = actor, index, done_at, outcome


class Cluster:
    """A fake clock and what every actor was asked, in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[tuple[int, str, int]] = []  # (worker, "score"|"ready", batch)
        self.cancelled: list[tuple[int, int]] = []

    def wait(self, refs, num_returns=1, timeout=None):
        first = min(refs, key=lambda r: r.done_at)
        if math.isinf(first.done_at) or (timeout is not None and first.done_at - self.now > timeout):
            return [], refs
        self.now = max(self.now, first.done_at)
        return [first], [r for r in refs if r is not first]

    def get(self, ref):
        if isinstance(ref.outcome, Exception):
            raise ref.outcome
        return ref.outcome

    def cancel(self, ref, force=False):
        self.cancelled.append((ref.actor.worker, ref.index))


def scores_of(index: int) -> np.ndarray:
    return np.full((2, 2), float(index + 1), dtype=np.float64)


class FakeActor:
    """Scores a batch in `seconds`; `lost_at`: from that batch on (and for every ping after) it fails."""

    def __init__(self, cluster: Cluster, worker: int, seconds: float, lost_at: int | None = None):
        self.cluster, self.worker, self.seconds, self.lost_at = cluster, worker, seconds, lost_at
        self.lost = False
        outer = self

        class Method:
            def __init__(self, kind: str):
                self.kind = kind

            def remote(self, index: int = -1):
                return outer.call(self.kind, index)

        self.score, self.ready = Method("score"), Method("ready")

    def call(self, kind: str, index: int) -> Ref:
        self.cluster.calls.append((self.worker, kind, index))
        if kind == "score" and index == self.lost_at:
            self.lost = True
        if self.lost:
            died = ray.exceptions.RayActorError(error_msg=f"worker {self.worker}: its node was lost")
            return Ref(self, index, self.cluster.now + self.seconds / 2, died)
        if kind == "ready":
            return Ref(self, index, self.cluster.now, 1234)
        return Ref(self, index, self.cluster.now + self.seconds, (scores_of(index), self.worker))


def infos(n: int) -> list[ProbeBatchInfo]:
    return [ProbeBatchInfo(examples=2, visual_tokens=4, text_tokens=8) for _ in range(n)]


def hand_out(cluster: Cluster, actors, n: int, retries: int = 2, lines: list[str] | None = None) -> _HandOut:
    log = (lines if lines is not None else []).append
    return _HandOut(
        actors, infos(n), retries, 60.0, log, wait=cluster.wait, get=cluster.get, cancel=cluster.cancel
    )


def test_a_lost_actors_batch_is_rerun_elsewhere_and_the_actor_dropped():
    cluster = Cluster()
    fast, slow = FakeActor(cluster, 0, 1.0), FakeActor(cluster, 1, 5.0, lost_at=1)
    lines: list[str] = []
    results, per_worker, _ = hand_out(cluster, [fast, slow], 6, lines=lines).run()
    assert sorted(results) == list(range(6))
    for i in range(6):
        np.testing.assert_array_equal(results[i], scores_of(i))
    # Batch 1 went to the slow worker, which was lost on it; the fast worker scored it (and all the rest).
    assert (1, "score", 1) in cluster.calls and (0, "score", 1) in cluster.calls
    assert per_worker == [6]
    # The lost actor's error was read: its batch requeued, then its ping failed and it was dropped.
    assert any("worker 1 failed on batch 1 (worker 1: its node was lost); it goes back" in x for x in lines)
    assert any(
        x.startswith("[probe] worker 1 is lost (worker 1: its node was lost); 1 workers go on") for x in lines
    )
    assert [c for c in cluster.calls if c[0] == 1] == [(1, "score", 1), (1, "ready", -1)]  # no work after


def test_an_idle_actor_takes_a_copy_of_a_straggling_batch_and_the_first_copy_counts():
    cluster = Cluster()
    fast, slow = FakeActor(cluster, 0, 1.0), FakeActor(cluster, 1, 100.0)
    results, per_worker, _ = hand_out(cluster, [fast, slow], 3).run()
    assert sorted(results) == [0, 1, 2]
    # Batch 1 (the slow worker's) was copied by the fast worker once the queue ran dry; the copy won and
    # the slow one was cancelled.
    assert (0, "score", 1) in cluster.calls and (1, "score", 1) in cluster.calls
    assert cluster.cancelled == [(1, 1)]
    assert per_worker == [3]


def test_a_batch_failing_on_every_retry_stops_the_probe_naming_it():
    cluster = Cluster()

    class Poisoned(FakeActor):  # fails batch 2 wherever it runs, but answers pings
        def call(self, kind, index):
            if kind == "score" and index == 2:
                self.cluster.calls.append((self.worker, kind, index))
                return Ref(
                    self, index, self.cluster.now + 0.5, ray.exceptions.RayActorError(error_msg="boom")
                )
            return super().call(kind, index)

    actors = [Poisoned(cluster, 0, 1.0), Poisoned(cluster, 1, 1.0)]
    with pytest.raises(ProbeFailed, match=r"probe batch 2 failed after 1 retries: boom"):
        hand_out(cluster, actors, 4, retries=1).run()
    tries = [c for c in cluster.calls if c[1:] == ("score", 2)]
    assert len(tries) >= 2 and {w for w, _, _ in tries} == {0, 1}  # retried, on either worker


def test_every_actor_lost_is_an_error():
    cluster = Cluster()
    actors = [FakeActor(cluster, 0, 1.0, lost_at=0), FakeActor(cluster, 1, 1.0, lost_at=1)]
    with pytest.raises(ProbeFailed, match="every probe worker was lost"):
        hand_out(cluster, actors, 4).run()
