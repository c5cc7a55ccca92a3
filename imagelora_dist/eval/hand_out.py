"""Eval's work items on the shared hand-out (imagelora_dist/hand_out.py), and the plan it works from."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.eval.chunks import ChunkStore, chunk_count, chunk_positions
from imagelora_dist.hand_out import HandOut

Log = Callable[[str], None]
TEXT_ITEM = -1  # the text-only part (text preservation, the text task): one work item like a chunk
TEXT_NAME = "text.json"


class EvalFailed(RuntimeError):
    """A chunk failed on every retry, or no eval worker is left."""


class Plan:
    """The driver's view of the eval: the positions scored, in chunks, and where finished ones are kept."""

    def __init__(self, positions: Sequence[int], chunk_size: int, store: ChunkStore) -> None:
        self.positions, self.chunk_size, self.store = positions, chunk_size, store
        self.chunks = chunk_count(len(positions), chunk_size)

    def chunk(self, index: int) -> list[int]:
        """Positions of chunk `index`."""
        return chunk_positions(self.positions, index, self.chunk_size)


class EvalHandOut(HandOut):
    """Eval's chunks (and the text part) on the shared hand-out (imagelora_dist/hand_out.py): each result is
    stored as it arrives; a worker that cannot read the inputs gets each chunk's raw inputs with it."""

    def __init__(self, actors: list[Any], readable: list[bool], plan: Plan, driver_reader: Any, items: list[int],
                 retries: int, stall_s: float, log: Log) -> None:  # fmt: skip
        self.plan, self.driver_reader, self.last_log = plan, driver_reader, 0.0
        self.reads = {id(a): r for a, r in zip(actors, readable, strict=True)}
        super().__init__(actors, items, self._start, retries=retries, stall_s=stall_s, log=log, stage="eval",
                         name=lambda i: "the text part" if i == TEXT_ITEM else f"chunk {i}", failed=EvalFailed,
                         on_result=self._store, fatal=(ImageLoRAError,), contiguous=True)  # fmt: skip

    def _start(self, actor: Any, item: int) -> Any:
        positions = [] if item == TEXT_ITEM else self.plan.chunk(item)
        raws = None
        if item != TEXT_ITEM and not self.reads[id(actor)]:
            raws = self.driver_reader.read(positions)  # only this chunk's inputs, only to this worker
        return actor.score.remote(item, positions, raws)

    def _store(self, item: int, result: dict[str, Any]) -> None:
        name = TEXT_NAME if item == TEXT_ITEM else ChunkStore.chunk_name(item)
        self.plan.store.put(name, result)
        # As a re-run reads it back from the store: the report is the same bytes either way.
        self.results[item] = json.loads(json.dumps(result, sort_keys=True))
        now = time.perf_counter()
        if now - self.last_log >= 5.0 or self.wanted <= set(self.results):
            self.last_log = now
            self.log(f"[{self.stage}] chunks {len(self.results)}/{len(self.wanted)}")
