"""Streaming reader of screenshot shards: exact, resumable, and equal work on every rank.

Every epoch the shard list is shuffled with a seed derived from (seed, epoch); the shards' samples,
concatenated in that order, are the epoch's global sample positions (counts come from index.json). Rank r
takes the contiguous range [r*S, (r+1)*S) with S = N // world_size, cut into S // batch_size batches;
each DataLoader worker takes a contiguous block of those batches and reads only the shards overlapping
it. So every sample is read by exactly one worker of one rank, every rank yields the same number of
batches (a corrupt or missing sample makes a batch smaller, never absent), and ranks never hang at the
epoch end. Up to world_size * batch_size - 1 tail samples per epoch are left out; the shuffle moves
them to other positions in the next epoch.

Batches come out of the DataLoader round-robin over workers: rank batch g is worker g % W's batch
g // W. The cursor (epoch, batches consumed) therefore says exactly which batches each worker has
already delivered; on resume each worker skips those without decoding them. A resume with another
layout (ranks, loader workers, batch size) replays the earlier layouts' plans and buffer shuffles on
sample positions, so it knows exactly which samples were consumed, and splits the rest of the epoch
anew: the positions become a list with holes, and each worker reads past the holes in its shards.

Positions, batches, the Cursor and the epoch plan count RECORDS (the index's `samples`): a screen-grouped
shard's record (data/screen_groups.py) is expanded into its targets only after the shuffle buffer
(`decode_samples`), so a screen's targets come out one after another sharing one decoded image, a batch
holds every target of `batch_size` screens, and a resume skips whole records, exactly.

Shards are untrusted: only image members (png/jpg/jpeg/webp, decoded by PIL) and `json` are read;
everything else (`.pyd`, `.pth`, `.pickle`, ...) is never even extracted, let alone unpickled.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from imagelora_dist.data.drops import Counters, one_line
from imagelora_dist.data.screen_groups import check_text_fields, expand_record, is_grouped, target_count
from imagelora_dist.data.shards import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    ShardIndex,
    dataset_base,
    forget_filesystem,
    open_url_stream,
)
from imagelora_dist.errors import ImageLoRAError

_READ_SUFFIXES = {*IMAGE_EXTENSIONS, "json"}
_PIL_FORMATS = ("PNG", "JPEG", "WEBP")
# A shard that cannot be opened, or whose stream breaks off with an I/O error (a deleted object, an expired
# credential, a reset connection), is tried this many times in all, waiting OPEN_BACKOFF_S before the
# second try and twice as long before each next one (at most OPEN_BACKOFF_MAX_S); then its unread samples
# count as `missing`. pyarrow's S3 client retries transient network errors below this on its own.
OPEN_TRIES = 3
OPEN_BACKOFF_S = 1.0
OPEN_BACKOFF_MAX_S = 8.0


def _wait_before_retry(tries: int) -> None:
    time.sleep(min(OPEN_BACKOFF_MAX_S, OPEN_BACKOFF_S * 2 ** (tries - 1)))


@dataclass
class Cursor:
    """Where a rank is in the stream: the epoch and how many of its batches were consumed in it.

    The training loop calls `advance(batch)` once per batch it consumed (not per batch prefetched).
    `history` lists the layouts the epoch was read with before this one (a resume on another worker
    count or micro-batch): the samples they consumed are left out of the rest of the epoch.
    `run_read` and `run_dropped` are the run's totals over all epochs and ranks (samples read, of them
    dropped; the training loop keeps them, see data/drops.py), so a resumed run keeps its loss budget.
    """

    epoch: int = 0
    batches: int = 0
    samples: int = 0
    world_size: int = 1
    num_workers: int = 0
    batch_size: int = 1
    history: list[dict[str, int]] = field(default_factory=list)
    run_read: int = 0
    run_dropped: int = 0

    def advance(self, num_samples: int, batches_per_epoch: int) -> None:
        """Count one consumed batch; roll over to the next epoch after its last batch."""
        self.batches += 1
        self.samples += int(num_samples)
        if self.batches >= batches_per_epoch:
            self.finish_epoch()

    def finish_epoch(self) -> None:
        """Move to the start of the next epoch (a plain one: read with this layout from its start)."""
        self.epoch, self.batches, self.samples, self.history = self.epoch + 1, 0, 0, []

    def layout(self) -> dict[str, int]:
        """The layout that fixes the order of the epoch's samples."""
        return {"world_size": self.world_size, "num_workers": self.num_workers, "batch_size": self.batch_size}

    def relayout(self, world_size: int, num_workers: int, batch_size: int) -> Cursor:
        """The cursor for reading the rest of this epoch with another layout (itself if it is the same)."""
        new = {"world_size": world_size, "num_workers": num_workers, "batch_size": batch_size}
        if new == self.layout():
            return self
        history = [dict(h) for h in self.history]
        if self.batches:
            history.append({**self.layout(), "batches": self.batches})
        return Cursor(
            epoch=self.epoch, history=history, run_read=self.run_read, run_dropped=self.run_dropped, **new
        )

    def to_dict(self) -> dict[str, Any]:
        """For a checkpoint (plain JSON, no pickle)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cursor:
        """Inverse of `to_dict`."""
        fields = {k: int(v) for k, v in data.items() if k in cls.__dataclass_fields__ and k != "history"}
        history = [{k: int(v) for k, v in h.items()} for h in data.get("history") or []]
        return cls(**fields, history=history)


@dataclass
class ShardSpan:
    """Read samples [start, stop) of one shard (positions in tar order), except those in `skip`."""

    url: str
    start: int
    stop: int
    skip: frozenset[int] = frozenset()


@dataclass
class WorkerPlan:
    """A worker's share of a rank's epoch: its batches, as spans of shards."""

    spans: list[ShardSpan]
    num_batches: int
    first_position: int
    worker: int
    shuffle_seed: int
    positions: Sequence[int] = ()


@dataclass
class EpochPlan:
    """The deterministic layout of one epoch for one rank."""

    epoch: int
    rank: int
    world_size: int
    batch_size: int
    batches_per_rank: int
    samples_per_rank: int
    shard_order: list[int] = field(default_factory=list)
    # The epoch's positions this plan splits: all of them, or what earlier layouts left (`Cursor.history`)
    universe: Sequence[int] = ()
    segment: int = 0


def open_url(url: str) -> io.BufferedIOBase:
    """Open a shard: a local path, `file://`, `pipe:cmd`, or any URL pyarrow opens (`s3://`, `gs://` ...)."""
    if url.startswith("pipe:"):
        return wds.gopen(url, "rb")
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" not in url:
        return open(url, "rb")
    return open_url_stream(url)


class ShardReader:
    """Plans epochs over a shard index and turns a worker's plan into raw samples and batches."""

    def __init__(
        self,
        index: ShardIndex,
        base_url: str,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle_buffer: int = 256,
        shuffle_shards: bool = True,
        trust_index_urls: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ImageLoRAError(f"batch_size must be >= 1, got {batch_size}")
        self.index = index
        self.urls = index.urls(base_url, allow_external=trust_index_urls)
        self.counts = [s.samples for s in index.shards]
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.shuffle_shards = shuffle_shards

    @classmethod
    def from_path(
        cls, path: str | os.PathLike, batch_size: int, *, trust_index_urls: bool = False, **kwargs: Any
    ) -> ShardReader:
        """A reader for the shards listed in `path`: a directory or URL holding index.json, or the index file."""
        index = ShardIndex.read(path)
        reader = cls(index, dataset_base(path), batch_size, trust_index_urls=trust_index_urls, **kwargs)
        return reader

    def shard_order(self, epoch: int) -> list[int]:
        """The epoch's shard order: a permutation seeded by (seed, epoch), the same on every rank."""
        order = list(range(len(self.urls)))
        if self.shuffle_shards:
            random.Random(f"shards/{self.seed}/{epoch}").shuffle(order)
        return order

    def epoch_plan(
        self, epoch: int, rank: int, world_size: int, history: Sequence[dict[str, int]] = ()
    ) -> EpochPlan:
        """How many batches every rank gets this epoch (the same for all), after what `history` consumed."""
        universe: Sequence[int] = range(sum(self.counts))
        for segment, layout in enumerate(history):
            universe = self._left_after(epoch, universe, segment, layout)
        return self._plan(epoch, rank, world_size, self.batch_size, universe, len(history))

    def _plan(
        self, epoch: int, rank: int, world_size: int, batch_size: int, universe: Sequence[int], segment: int
    ) -> EpochPlan:
        if not 0 <= rank < world_size:
            raise ImageLoRAError(f"rank {rank} outside world size {world_size}")
        per_rank = len(universe) // world_size
        batches = per_rank // batch_size
        if batches == 0 and segment == 0:
            raise ImageLoRAError(
                f"{len(universe)} samples cannot give every one of {world_size} ranks a batch of {batch_size}"
            )
        # (a resumed epoch's rest may be too small for a batch on every rank: it is then simply over)
        return EpochPlan(epoch, rank, world_size, batch_size, batches, per_rank, self.shard_order(epoch),
                         universe, segment)  # fmt: skip

    def _left_after(
        self, epoch: int, universe: Sequence[int], segment: int, layout: dict[str, int]
    ) -> list[int]:
        """The positions of `universe` not consumed by a layout's first `layout["batches"]` batches per rank:
        the same replay of shard spans and buffer shuffles that its readers ran, on positions instead of
        samples (a shuffle's permutation depends only on the count). What that layout would have left
        out at the epoch's end stays in: the rest of the epoch is split anew anyway."""
        world, workers, bsz, done = (
            layout[k] for k in ("world_size", "num_workers", "batch_size", "batches")
        )
        n_roles = max(1, workers)
        consumed: set[int] = set()
        for rank in range(world):
            plan = self._plan(epoch, rank, world, bsz, universe, segment)
            for role in range(n_roles):
                wplan = self.worker_plan(plan, role, workers)
                taken = max(0, -(-(done - role) // n_roles)) * bsz
                order = shuffled(iter(wplan.positions), self.shuffle_buffer, wplan.shuffle_seed)
                consumed.update(p for _, p in zip(range(taken), order, strict=False))
        return [p for p in universe if p not in consumed]

    def worker_plan(self, plan: EpochPlan, worker: int, num_workers: int) -> WorkerPlan:
        """The block of the rank's batches that `worker` of `num_workers` reads, as shard spans."""
        w_count = max(1, num_workers)
        base, extra = divmod(plan.batches_per_rank, w_count)
        n_batches = base + (1 if worker < extra else 0)
        first_batch = worker * base + min(worker, extra)
        universe = plan.universe
        lo = plan.rank * plan.samples_per_rank + first_batch * plan.batch_size
        positions = universe[lo : lo + n_batches * plan.batch_size]
        spans, pos = [], 0
        wanted = set(positions) if not isinstance(positions, range) else None
        first, last = (positions[0], positions[-1] + 1) if len(positions) else (0, 0)
        for shard in plan.shard_order:
            count = self.counts[shard]
            a, b = max(first, pos), min(last, pos + count)
            if a < b:
                # A resumed epoch's rest has holes (what was consumed before): read past them.
                skip = (
                    frozenset()
                    if wanted is None
                    else frozenset(p - pos for p in range(a, b) if p not in wanted)
                )
                spans.append(ShardSpan(self.urls[shard], a - pos, b - pos, skip))
            pos += count
            if pos >= last:
                break
        parts = (self.seed, plan.epoch, plan.rank, worker) + ((plan.segment,) if plan.segment else ())
        return WorkerPlan(spans, n_batches, first, worker, hash_seed(*parts), positions)

    def raw_samples(
        self, wplan: WorkerPlan, counters: dict[str, int], lost: list[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Undecoded samples of the worker's spans; what cannot be read is counted, not fatal.

        A shard that does not open, or whose stream breaks off with an I/O error, is tried OPEN_TRIES times
        in all with backoff (each try builds the object-store client anew, so a refreshed credential is
        picked up) and read on from where it broke off; after that its unread samples count as `missing`
        and the shard is named in `lost`. Broken or short tar data counts its unread samples as `corrupt`.
        """
        for span in wplan.spans:
            done, tries, error = 0, 0, None  # done: the span's tar positions already passed (over all tries)
            while tries < OPEN_TRIES:
                if tries:
                    _wait_before_retry(tries)
                    forget_filesystem(span.url)
                tries += 1
                try:
                    stream = open_url(span.url)
                except ImageLoRAError as exc:  # no filesystem opens this URL: another try cannot help
                    error = exc
                    break
                except OSError as exc:
                    error = exc
                    continue
                with stream:
                    try:
                        for position, sample in enumerate(tar_samples(stream)):
                            if position >= span.stop:
                                break
                            if position >= max(done, span.start) and position not in span.skip:
                                yield sample
                            done = max(done, position + 1)
                    except (tarfile.TarError, EOFError):
                        pass  # a broken tar stream cannot be resynchronised: the rest of the span is counted
                    except OSError as exc:  # the object or the connection went away mid-read: reopen
                        error = exc
                        continue
                error = None
                break
            rest = range(max(done, span.start), span.stop)
            unread = len(rest) - sum(1 for p in span.skip if p in rest)
            if unread and error is not None:
                counters["missing"] += unread
                if lost is not None:
                    lost.append(f"{span.url}: {one_line(error)} (after {tries} tries)")
            elif unread:  # short shard (truncated tar, or fewer samples than the index says)
                counters["corrupt"] += unread


# Per-member size limits, checked from the tar header before anything is read: a tiny shard must not be
# able to make a worker allocate gigabytes.
MAX_MEMBER_BYTES = {"json": 1 << 20, **dict.fromkeys(IMAGE_EXTENSIONS, 64 << 20)}


def tar_samples(stream: io.BufferedIOBase) -> Iterator[dict[str, Any]]:
    """Group an uncompressed tar stream's members into samples by key; read only image and JSON members.

    A sample with an oversized member is still yielded (it holds a position in the shard) but marked
    `__bad__`, and the member's bytes are never read. Compressed streams are refused (tarfile error).
    """
    tar = tarfile.open(fileobj=stream, mode="r|")
    key: str | None = None
    sample: dict[str, Any] = {}
    for info in tar:
        if not info.isreg():
            continue
        directory, _, base = info.name.rpartition("/")
        stem, dot, ext = base.partition(".")
        if not dot or stem.startswith("__"):
            continue
        member_key = f"{directory}/{stem}" if directory else stem
        if member_key != key:
            if key is not None:
                yield sample
            key, sample = member_key, {"__key__": member_key}
        ext = ext.lower()
        if ext not in _READ_SUFFIXES:
            continue
        if info.size > MAX_MEMBER_BYTES[ext]:
            sample["__bad__"] = f"{ext} member of {info.size} bytes"
            continue
        member = tar.extractfile(info)
        sample[ext] = member.read() if member is not None else b""
    if key is not None:
        yield sample


def hash_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (Python's hash() is salted per process)."""
    rng = random.Random("/".join(str(p) for p in parts))
    return rng.getrandbits(63)


def shuffled(items: Iterator[dict[str, Any]], buffer: int, seed: int) -> Iterator[dict[str, Any]]:
    """A seeded buffer shuffle: deterministic for a given stream and seed."""
    if buffer <= 1:
        yield from items
        return
    rng = random.Random(seed)
    pool: list[dict[str, Any]] = []
    for item in items:
        pool.append(item)
        if len(pool) >= buffer:
            i = rng.randrange(len(pool))
            pool[i], pool[-1] = pool[-1], pool[i]
            yield pool.pop()
    rng.shuffle(pool)
    yield from pool


def decode_samples(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-target samples of a raw sample: itself decoded, or a screen-grouped record's targets in
    stored order, each `{"__key__": "<key>/<k>", "image", "record", "screen": "<key>"}` sharing one image.
    Raises like `decode_sample` (a bad target drops the whole screen)."""
    try:
        record = json.loads(raw["json"]) if "__bad__" not in raw else None
    except (KeyError, ValueError):
        record = None  # decode_sample raises the usual error
    if not isinstance(record, dict) or not is_grouped(record):
        return [decode_sample(raw)]
    key, targets = raw.get("__key__"), expand_record(record)
    if not targets:
        raise ValueError(f"sample {key}: a screen with no targets")
    first = decode_sample({**raw, "json": json.dumps(targets[0]).encode()})
    out = [{**first, "__key__": f"{key}/0", "screen": key}]
    for k, target in enumerate(targets[1:], start=1):
        check_text_fields(target, f"{key}/{k}")
        out.append({"__key__": f"{key}/{k}", "image": first["image"], "record": target, "screen": key})
    return out


def _own_raw(raw: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any]:
    """The stored members that `decode_sample` turns into this one target (probe_set keeps them)."""
    if "screen" not in sample:
        return raw
    return {**raw, "__key__": sample["__key__"], "json": json.dumps(sample["record"]).encode()}


def decode_sample(raw: dict[str, Any]) -> dict[str, Any]:
    """Image (PIL, RGB) and record (dict) of a raw sample. Raises ValueError for anything else."""
    if "__bad__" in raw:
        raise ValueError(f"sample {raw.get('__key__')}: {raw['__bad__']}")
    images = [k for k in raw if k.lower() in IMAGE_EXTENSIONS]
    if "json" not in raw or len(images) != 1:
        raise KeyError(f"sample {raw.get('__key__')}: needs one image and a json member")
    record = json.loads(raw["json"])
    if not isinstance(record, dict):
        raise ValueError("json member is not an object")
    check_text_fields(record, raw.get("__key__"))
    # Only the formats shards may hold: PIL would otherwise open TIFF, EPS (Ghostscript) and more.
    with Image.open(io.BytesIO(raw[images[0]]), formats=_PIL_FORMATS) as im:
        if im.width * im.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"image {im.width}x{im.height} exceeds {MAX_IMAGE_PIXELS} pixels")
        image = im.convert("RGB")
    return {"__key__": raw.get("__key__"), "image": image, "record": record}


BatchFn = Callable[[list[dict[str, Any]]], dict[str, Any]]


class ShardStream(IterableDataset):
    """An IterableDataset over one rank's share of an epoch; use with a DataLoader(batch_size=None).

    Yields `{"samples": [...decoded...], "stats": {...counts...}, "lost_shards": [...], "batch_index": g}`
    or, with `collate_fn`, whatever it returns for the decoded samples plus those three. "stats" is the
    batch's dropped samples by reason (data/drops.py), "lost_shards" the shards given up on while reading
    it (`url: error (after N tries)`). With `keep_raw` each decoded sample also holds its stored members
    under "raw" (data/probe_set.py). `drop_counts()` sums what this stream dropped in this process.
    """

    def __init__(
        self,
        reader: ShardReader,
        *,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
        skip_batches: int = 0,
        num_workers: int = 0,
        collate_fn: BatchFn | None = None,
        history: Sequence[dict[str, int]] = (),
        keep_raw: bool = False,
    ) -> None:
        super().__init__()
        self.reader = reader
        self.keep_raw = keep_raw
        self.rank, self.world_size = rank, world_size
        self.epoch = epoch
        self.skip_batches = skip_batches
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.plan = reader.epoch_plan(epoch, rank, world_size, history)
        self._dropped, self._read, self.lost_shards = Counters(), 0, []

    def drop_counts(self) -> dict[str, int]:
        """{reason: samples dropped} of every batch this stream yielded in this process, plus "read": the
        samples it read, usable or dropped (with DataLoader workers, sum the batches' "stats" instead).
        `lost_shards` names the shards it could not read; `drops.check_dropped` bounds the loss."""
        return {**self._dropped.as_dict(), "read": self._read}

    def __len__(self) -> int:
        return self.plan.batches_per_rank

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        if info is not None and n_workers != max(1, self.num_workers):
            raise ImageLoRAError(
                f"ShardStream built for {self.num_workers} workers, DataLoader has {n_workers}"
            )
        # Rank batch g is role g % W's local batch g // W. The DataLoader asks its workers round-robin
        # starting from worker 0, so after skipping k batches worker i plays role (i + k) % W.
        role = (worker + self.skip_batches) % n_workers
        wplan = self.reader.worker_plan(self.plan, role, n_workers)
        done = max(0, -(-(self.skip_batches - role) // n_workers))
        counters = dict.fromkeys(asdict(Counters()), 0)
        lost: list[str] = []
        raw = shuffled(
            self.reader.raw_samples(wplan, counters, lost), self.reader.shuffle_buffer, wplan.shuffle_seed
        )
        bsz = self.reader.batch_size
        for local in range(wplan.num_batches):
            chunk = [s for _, s in zip(range(bsz), raw, strict=False)]
            if local < done:
                counters.update(dict.fromkeys(counters, 0))  # consumed before the resume: read, not decoded
                continue
            decoded = []
            for s in chunk:
                try:
                    decoded += [
                        d | ({"raw": _own_raw(s, d)} if self.keep_raw else {}) for d in decode_samples(s)
                    ]
                except KeyError:
                    counters["incomplete"] += target_count(s)
                except (OSError, ValueError, Image.DecompressionBombError):
                    counters["undecodable"] += target_count(s)
            stats = dict(counters)
            counters.update(dict.fromkeys(counters, 0))  # in place: raw_samples holds this dict
            batch: dict[str, Any] = {"samples": decoded}
            if self.collate_fn is not None:
                batch = self.collate_fn(decoded)
                stats["too_long"] = stats.get("too_long", 0) + int(batch.pop("too_long", 0))
                # grounding records whose box or size the answer format cannot read (data/collate.py)
                stats["malformed"] = stats.get("malformed", 0) + int(batch.pop("malformed", 0))
            batch["stats"] = stats
            batch["lost_shards"], lost[:] = list(lost), []
            batch["batch_index"] = role + local * n_workers
            used = int(batch["num_samples"]) if self.collate_fn is not None else len(decoded)
            self._dropped.add(stats)
            self._read += used + sum(stats.values())
            self.lost_shards += batch["lost_shards"]
            yield batch


def make_loader(
    reader: ShardReader,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    epoch: int = 0,
    skip_batches: int = 0,
    num_workers: int = 0,
    collate_fn: BatchFn | None = None,
    prefetch_factor: int | None = None,
    cursor: Cursor | None = None,
) -> DataLoader:
    """A DataLoader yielding this rank's batches of the epoch in a deterministic order.

    With `cursor` (from a checkpoint) the epoch and the batches to skip come from it; it must have been
    made with the same world size, worker count and batch size, since those fix the order (for another
    layout, `Cursor.relayout` it first: the rest of the epoch is then split anew).
    """
    if rank is None or world_size is None:
        env_rank, env_world = dist_rank_world()
        rank = env_rank if rank is None else rank
        world_size = env_world if world_size is None else world_size
    history: Sequence[dict[str, int]] = ()
    if cursor is not None:
        expected = {"world_size": world_size, "num_workers": num_workers, "batch_size": reader.batch_size}
        for key, value in expected.items():
            if getattr(cursor, key) != value:
                raise ImageLoRAError(
                    f"cannot resume: the data cursor was saved with {key}={getattr(cursor, key)}, now {value}"
                )
        epoch, skip_batches, history = cursor.epoch, cursor.batches, cursor.history
    ds = ShardStream(
        reader,
        rank=rank,
        world_size=world_size,
        epoch=epoch,
        skip_batches=skip_batches,
        num_workers=num_workers,
        collate_fn=collate_fn,
        history=history,
    )
    extra = {} if num_workers == 0 else {"prefetch_factor": prefetch_factor or 2, "persistent_workers": False}
    return DataLoader(ds, batch_size=None, num_workers=num_workers, **extra)


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed if initialised, else RANK/WORLD_SIZE, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
