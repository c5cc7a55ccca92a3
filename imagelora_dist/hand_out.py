"""Work items handed to Ray actors one at a time, for the probe (batches) and eval (chunks) alike.

An actor gets its next item when it returns one, so a slow or restarting actor holds up only what it has.
The item of an actor that fails (its process crashed, its node was lost) goes back in the queue for
whichever actor is free next; the failed actor gets work again once it answers a ping (Ray restarts it up
to `max_restarts` times, on another node if its own is gone), or is dropped when its restarts are spent.
Once the queue is empty an idle actor takes a copy of an item still running elsewhere; the first copy back
counts and the other is cancelled. An item that fails more than `retries` times, no actor left, or no
actor back within `stall_s` after failures, stops the stage with one line naming it.

With `contiguous=True` (eval: items are chunks of consecutive sample positions) each actor works through a
run of consecutive items: it takes the item after its last one while that is still queued, else the start
of the longest queued run no actor is heading into, else the middle of the longest run (splitting it with
the actor working there). Actors start spread evenly over the items. An actor reading the shards forward
by position then streams each shard's bytes once, instead of every actor streaming past the other actors'
chunks of the same shard (W times the bytes with W actors on an object store).

Actor calls return `(result, worker number)`; `wait`, `get` and `cancel` are Ray's (a test passes fakes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray

Log = Callable[[str], None]
PING = -(2**31)  # the item of a liveness ping: after a failure an actor gets new work once it answers one


class HandOut:
    """Hands items to actors (see the module docstring); `call(actor, item)` starts one on an actor."""

    def __init__(
        self,
        actors: list[Any],
        items: list[int],
        call: Callable[[Any, int], Any],
        *,
        retries: int,
        stall_s: float,
        log: Log,
        stage: str,
        name: Callable[[int], str],
        failed: type[Exception],
        on_result: Callable[[int, Any], None] | None = None,
        fatal: tuple[type[BaseException], ...] = (),
        wait: Callable[..., tuple[list[Any], list[Any]]] = ray.wait,
        get: Callable[[Any], Any] = ray.get,
        cancel: Callable[..., Any] = ray.cancel,
        contiguous: bool = False,
    ) -> None:
        self.actors, self.call, self.retries, self.stall_s, self.log = actors, call, retries, stall_s, log
        self.stage, self.name, self.error, self.on_result, self.fatal = stage, name, failed, on_result, fatal
        self.wait, self.get, self.cancel = wait, get, cancel
        self.todo = list(items)
        self.wanted = set(items)
        self.pending: dict[Any, tuple[int, int]] = {}  # ref -> (item or PING, actor slot)
        self.results: dict[int, Any] = {}
        self.per_worker: dict[int, int] = {}
        self.failures: dict[int, int] = {}
        self.dead: set[int] = set()
        self.contiguous = contiguous
        self.last: dict[int, int] = {}  # actor slot -> the item it took last (contiguous hand-out)
        ordered = sorted(items)
        self.starts = (
            {slot: ordered[len(ordered) * slot // len(actors)] for slot in range(len(actors))}
            if ordered
            else {}
        )

    def _busy(self, slot: int) -> bool:
        return any(s == slot for _, s in self.pending.values())

    def _take(self, slot: int) -> int:
        """The queued item `slot` works on next (the first queued, or see `contiguous`)."""
        if not self.contiguous:
            return self.todo.pop(0)
        last = self.last.get(slot)
        queued = set(self.todo)
        if last is not None and last + 1 in queued:
            item = last + 1
        elif last is None and self.starts.get(slot) in queued:
            item = self.starts[slot]
        else:
            item = self._split(queued)
        self.todo.remove(item)
        return item

    def _split(self, queued: set[int]) -> int:
        """Start of the longest queued run no actor heads into, else the middle of the longest run."""
        heading = {i + 1 for slot, i in self.last.items() if slot not in self.dead}
        runs: list[tuple[int, int]] = []  # (start, length)
        for item in sorted(queued):
            if runs and item == runs[-1][0] + runs[-1][1]:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((item, 1))
        free = [r for r in runs if r[0] not in heading]
        if free:
            start, _ = max(free, key=lambda r: (r[1], -r[0]))
            return start
        start, length = max(runs, key=lambda r: (r[1], -r[0]))
        return start + length // 2

    def _submit(self, slot: int) -> None:
        if self.todo:
            item = self._take(slot)
            self.last[slot] = item
        else:  # nothing new: a copy of the item running longest, unless every item already has two
            copies = [i for i, _ in self.pending.values() if i != PING]
            spare = [i for i in dict.fromkeys(copies) if copies.count(i) < 2]
            if not spare:
                return
            item = spare[0]
        self.pending[self.call(self.actors[slot], item)] = (item, slot)

    def _feed(self) -> None:
        if not self.wanted <= set(self.results):
            for slot in range(len(self.actors)):
                if slot not in self.dead and not self._busy(slot):
                    self._submit(slot)

    def _ping(self, slot: int) -> None:
        self.pending[self.actors[slot].ready.remote()] = (PING, slot)

    def _failed(self, item: int, slot: int, exc: Exception) -> None:
        if self.fatal and isinstance(exc, self.fatal):
            # Bad input: the actor's own one-line error (not Ray's wrapper with its traceback), no retry.
            cause = getattr(exc, "cause", None)
            raise cause if isinstance(cause, self.fatal) else exc
        reason = str(exc).strip().splitlines()[0][:300]
        if item == PING and isinstance(exc, ray.exceptions.ActorUnavailableError):
            time.sleep(1.0)  # restarting, or its node is unreachable for now: ask again
            self._ping(slot)
            return
        if item == PING:  # the actor is gone for good (its restarts are spent)
            self.dead.add(slot)
            left = len(self.actors) - len(self.dead)
            self.log(f"[{self.stage}] worker {slot} is lost ({reason}); {left} workers go on")
            if not left:
                raise self.error(f"every {self.stage} worker was lost; the last: {reason}")
            return
        self.failures[item] = self.failures.get(item, 0) + 1
        self._ping(slot)  # benched whatever became of the item: new work would fail on a restarting actor
        if any(i == item for i, _ in self.pending.values()) or item in self.results:
            return  # another copy is still running, or has won
        what = self.name(item)
        if self.failures[item] > self.retries:
            raise self.error(f"{self.stage} {what} failed after {self.retries} retries: {reason}")
        self.log(f"[{self.stage}] worker {slot} failed on {what} ({reason}); it goes back in the queue")
        self.todo.insert(0, item)

    def run(self) -> tuple[dict[int, Any], list[int], float]:
        """Every item done: (results by item, items per worker number, seconds)."""
        start = time.perf_counter()
        self._feed()
        stalled_since: float | None = None  # no item in flight since then, only pings
        while not self.wanted <= set(self.results):
            working = any(i != PING for i, _ in self.pending.values())
            stalled_since = None if working else (stalled_since or time.perf_counter())
            left = None if stalled_since is None else self.stall_s - (time.perf_counter() - stalled_since)
            ready, _ = self.wait(
                list(self.pending), num_returns=1, timeout=None if left is None else max(left, 0)
            )
            if not ready:
                raise self.error(
                    f"no {self.stage} worker came back within {self.stall_s:g}s after failures "
                    f"({len(self.results)} of {len(self.wanted)} done)"
                )
            item, slot = self.pending.pop(ready[0])
            try:
                value = self.get(ready[0])
            except ray.exceptions.RayError as exc:
                self._failed(item, slot, exc)
                self._feed()
                continue
            if item != PING and item not in self.results:
                result, worker = value
                self.results[item] = result
                self.per_worker[worker] = self.per_worker.get(worker, 0) + 1
                if self.on_result is not None:
                    self.on_result(item, result)
            for ref, (i, _) in list(self.pending.items()):
                if i in self.results:  # the other copy won: free its actor
                    self.cancel(ref, force=False)
                    del self.pending[ref]
            self._feed()
        per_worker = [self.per_worker.get(w, 0) for w in range(max(self.per_worker, default=-1) + 1)]
        return self.results, per_worker, time.perf_counter() - start


def workers_that_fit(wanted: int, cpus: float, gpus: float, log: Log, *, stage: str, hint: str = "") -> int:
    """How many of `wanted` actors the cluster's current resources hold (at least 1, else one error line)."""
    from imagelora_dist.errors import ImageLoRAError

    total = ray.cluster_resources()
    fits = int(total.get("CPU", 0) // cpus) if cpus else wanted
    if gpus:
        fits = min(fits, int(total.get("GPU", 0) // gpus))
    if fits < 1:
        raise ImageLoRAError(
            f"the Ray cluster ({total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU) cannot hold one {stage} "
            f"worker ({cpus:g} CPU, {gpus:g} GPU): lower ray.cpus_per_worker / ray.gpus_per_worker{hint}"
        )
    if fits < wanted:
        log(f"[{stage}] the cluster holds {fits} of the {wanted} requested workers; using {fits}")
    return min(fits, wanted)
