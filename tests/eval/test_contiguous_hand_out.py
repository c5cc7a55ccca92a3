"""The contiguous hand-out eval uses (imagelora_dist/hand_out.py, `contiguous=True`): each actor works
through runs of consecutive chunks, so a worker reading shards forward by position streams each shard's
bytes about once, instead of every worker streaming past the others' chunks. Fake actors and a fake clock,
no Ray."""

from __future__ import annotations

import ray.exceptions

from imagelora_dist.hand_out import HandOut


class Ref:
    def __init__(self, slot: int, item: int, done_at: float, outcome):
        self.slot, self.item, self.done_at, self.outcome = slot, item, done_at, outcome


class Fake:
    """Actors of given speeds; `lost`: (slot, nth call) from which that actor's calls fail."""

    def __init__(self, seconds: list[float], lost: tuple[int, int] | None = None) -> None:
        self.now, self.seconds, self.lost = 0.0, seconds, lost
        self.taken: dict[int, list[int]] = {s: [] for s in range(len(seconds))}
        self.actors = [self.Actor(self, s) for s in range(len(seconds))]

    class Actor:
        def __init__(self, fake: Fake, slot: int) -> None:
            self.fake, self.slot = fake, slot
            outer = self

            class Ready:
                def remote(self):
                    return outer.fake.ref(outer.slot, -(2**31))

            self.ready = Ready()

    def ref(self, slot: int, item: int) -> Ref:
        dead = self.lost is not None and slot == self.lost[0] and len(self.taken[slot]) > self.lost[1]
        if dead:
            return Ref(slot, item, self.now + 0.1, ray.exceptions.RayActorError(error_msg="node lost"))
        return Ref(slot, item, self.now + (0 if item < 0 else self.seconds[slot]), (item, slot))

    def call(self, actor: Actor, item: int) -> Ref:
        self.taken[actor.slot].append(item)
        return self.ref(actor.slot, item)

    def wait(self, refs, num_returns=1, timeout=None):
        first = min(refs, key=lambda r: r.done_at)
        self.now = max(self.now, first.done_at)
        return [first], [r for r in refs if r is not first]

    def get(self, ref):
        if isinstance(ref.outcome, Exception):
            raise ref.outcome
        return ref.outcome

    def run(self, items: list[int], contiguous: bool) -> dict[int, object]:
        hand_out = HandOut(self.actors, items, self.call, retries=2, stall_s=60, log=lambda m: None,
                           stage="eval", name=str, failed=RuntimeError, wait=self.wait, get=self.get,
                           cancel=lambda ref, force=False: None, contiguous=contiguous)  # fmt: skip
        results, _, _ = hand_out.run()
        return results


def runs(items: list[int]) -> int:
    """How many runs of consecutive items a worker's sequence is."""
    return sum(1 for i, item in enumerate(items) if i == 0 or item != items[i - 1] + 1)


def streamed(sequence: list[int], chunk_size: int, shard_size: int) -> int:
    """Samples a forward-reading worker (eval/chunks.py PositionReader) streams for its chunks in order:
    a chunk that does not continue the open shard's stream reopens its shard and reads from its start."""
    total, position = 0, None  # position: the next sample the open stream yields
    for chunk in sequence:
        first, end = chunk * chunk_size, (chunk + 1) * chunk_size
        if position is None or position // shard_size != first // shard_size or position > first:
            position = first // shard_size * shard_size  # reopened at the shard's start
        total += end - position
        position = end
    return total


def test_each_worker_takes_runs_of_consecutive_chunks_and_streams_each_shard_about_once():
    chunks, chunk_size, shard_size, speeds = 120, 8, 80, [1.0, 1.3, 0.7, 2.1]
    fake = Fake(speeds)
    assert sorted(fake.run(list(range(chunks)), contiguous=True)) == list(range(chunks))
    # Each worker's first run is its even share of the set (stealing splits runs only near the end).
    assert all(runs(t[: chunks // len(speeds) // 2]) == 1 for t in fake.taken.values()), fake.taken
    read = sum(streamed(t, chunk_size, shard_size) for t in fake.taken.values())
    assert read <= 1.5 * chunks * chunk_size, fake.taken  # the end's stolen and copied chunks cost the rest

    interleaved = Fake(speeds)
    interleaved.run(list(range(chunks)), contiguous=False)
    assert sum(streamed(t, chunk_size, shard_size) for t in interleaved.taken.values()) > 2 * read


def test_a_lost_workers_chunk_is_rerun_by_the_others_and_every_chunk_counts_once():
    fake = Fake([1.0, 1.0, 1.0], lost=(1, 3))
    results = fake.run(list(range(30)), contiguous=True)
    assert sorted(results) == list(range(30)) and all(results[i] == i for i in results)
    lost_item = fake.taken[1][3]
    assert any(lost_item in fake.taken[s] for s in (0, 2)), "its chunk went to another worker"
