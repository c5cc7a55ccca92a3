"""Render a synthetic dataset into shards plus `index.json` with a process pool: same bytes for any pool size.

Every synthesizer (`synth/`: grounding/referring screens; the research pre-training tasks: a base model's
generic tasks) describes a dataset as a frozen spec with `num_samples`, `samples_per_shard`, `prefix` and
`num_shards`, and a top-level `make(spec, index)` that is a pure function of the index. This module does the
rest once: shard `i` holds samples `[i * per_shard, (i + 1) * per_shard)`, whichever worker renders it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from imagelora_dist.data.shards import INDEX_NAME, ShardIndex, ShardInfo, shard_name, write_shard
from imagelora_dist.errors import ImageLoRAError

MakeSample = Callable[[Any, int], dict[str, Any]]


def _write_one_shard(job: tuple[MakeSample, Any, int, str]) -> tuple[int, ShardInfo]:
    """Render and write shard `i` (top level so a spawned worker can unpickle it)."""
    make, spec, i, out_dir = job
    lo = i * spec.samples_per_shard
    hi = min(spec.num_samples, lo + spec.samples_per_shard)
    return i, write_shard(Path(out_dir) / shard_name(spec.prefix, i), (make(spec, k) for k in range(lo, hi)))


def _pool_context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    # Not fork: the parent may hold torch threads. A forkserver (preloaded with the sample module) starts
    # each worker in milliseconds instead of re-importing the package; spawn where there is no forkserver.
    # The preload only takes effect when this process starts its forkserver: a module missing from it is
    # imported by each worker on first use, so it speeds workers up and never changes what they render.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(preload))
        return ctx
    return multiprocessing.get_context("spawn")


def spec_record(spec: Any) -> dict[str, Any]:
    """`spec` as an index records it: JSON types, and its opt-in fields left out while at their defaults,
    so a set made before such a field existed still matches its spec (and is not synthesized again)."""
    record = json.loads(json.dumps(asdict(spec)))
    for f in fields(spec):
        if f.metadata.get("omit_at_default") and getattr(spec, f.name) == f.default:
            del record[f.name]
    return record


def render_shards(
    spec: Any,
    make: MakeSample,
    out_dir: str | os.PathLike,
    *,
    workers: int | None,
    progress: Callable[[str], None] | None,
    overwrite: bool,
    tag: str,
    created_by: str,
    preload: Sequence[str] = (),
) -> ShardIndex:
    """Render every sample of `spec` with `make` into shards plus `index.json` in `out_dir`.

    `preload`: modules besides `make`'s that every worker needs (e.g. the module of a screen style named
    in the spec), imported once in the forkserver instead of in each worker.
    """
    out = Path(out_dir)
    if (out / INDEX_NAME).exists() and not overwrite:
        raise ImageLoRAError(
            f"{out}: already holds a dataset ({INDEX_NAME}); pass overwrite=True to replace it"
        )
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ImageLoRAError(f"{tag}: workers={workers!r}: must be an integer >= 1")
    out.mkdir(parents=True, exist_ok=True)
    total = spec.num_shards
    if overwrite:  # stale shards of a larger earlier run would otherwise sit next to the new index
        stale = re.compile(rf"{re.escape(spec.prefix)}-(\d{{6}})\.tar")
        for p in out.iterdir():
            m = stale.fullmatch(p.name)
            if m and int(m.group(1)) >= total:
                p.unlink()
        (out / INDEX_NAME).unlink(missing_ok=True)
    n_workers = max(1, min(workers or os.cpu_count() or 1, total))
    jobs = [(make, spec, i, str(out)) for i in range(total)]
    infos: dict[int, ShardInfo] = {}
    t0, done = time.perf_counter(), 0

    def report(i: int, info: ShardInfo) -> None:
        nonlocal done
        infos[i] = info
        done += info.samples
        if progress is not None:
            rate = done / max(time.perf_counter() - t0, 1e-9)
            progress(
                f"[{tag}] shards {len(infos)}/{total}, samples {done}/{spec.num_samples}, {rate:.0f} samples/s"
            )

    if n_workers == 1:
        for job in jobs:
            report(*_write_one_shard(job))
    else:
        with _pool_context([make.__module__, *preload]).Pool(n_workers) as pool:
            for i, info in pool.imap_unordered(_write_one_shard, jobs):
                report(i, info)
    index = ShardIndex(
        shards=[infos[i] for i in range(total)],
        # JSON-normalised (tuples -> lists) so the returned index equals the one read back from disk.
        meta={"created_by": created_by, "spec": spec_record(spec)},
    )
    index.write(out)
    return index
