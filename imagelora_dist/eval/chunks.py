"""Eval's units of work: chunks of sample positions, read from the shards by position and kept once scored.

A chunk is `eval.chunk_size` consecutive entries of the positions being scored (the whole set, or the
stratified sample of eval/sampling.py). Positions index the shard set in index order (shard 0's samples,
then shard 1's ...), so a worker reads a chunk itself from a shared path or an object store
(`PositionReader`); only a worker that cannot read them gets the chunk's raw samples sent with it.

`ChunkStore` keeps each finished chunk as one JSON file under a directory named by everything the
predictions depend on (`eval/distributed.py: eval_key`): a local path, a shared one or `s3://...`. A lost
node costs only the chunks it had not finished, and a re-run of the same adapter on the same data reuses
every finished chunk. Files are written whole (a temp name then a rename locally; an object store shows
an object only once its upload completes), so a reader never sees half a chunk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from imagelora_dist.data.reader import open_url, tar_samples
from imagelora_dist.data.shards import ShardIndex, atomic_write_bytes, dataset_base, is_url, url_filesystem
from imagelora_dist.errors import ImageLoRAError


def chunk_count(total: int, chunk_size: int) -> int:
    """Chunks of `chunk_size` over `total` positions (the last may be shorter)."""
    return -(-total // chunk_size)


def chunk_positions(positions: Sequence[int], chunk: int, chunk_size: int) -> list[int]:
    """The positions of chunk `chunk` (`positions` may be a range: nothing is materialised but the chunk)."""
    return list(positions[chunk * chunk_size : (chunk + 1) * chunk_size])


class PositionReader:
    """Raw samples of a shard set by position, reading forward in a shard without reopening it.

    Chunks arrive in rising order on each worker, so consecutive requests usually continue in the shard
    already open; a request behind the stream's position reopens the shard."""

    def __init__(self, shards: str, *, trust_index_urls: bool = False) -> None:
        index = ShardIndex.read(shards)
        self.urls = index.urls(dataset_base(shards), allow_external=trust_index_urls)
        self.starts: list[int] = []
        total = 0
        for info in index.shards:
            self.starts.append(total)
            total += info.samples
        self.total = total
        self._open: tuple[int, Iterator[dict[str, Any]], Any] | None = None  # shard, samples, stream
        self._next = 0  # offset in the open shard of the sample `_open` yields next

    def _shard_of(self, position: int) -> int:
        if not 0 <= position < self.total:
            raise ImageLoRAError(f"sample position {position} outside 0..{self.total - 1}")
        lo, hi = 0, len(self.starts) - 1
        while lo < hi:  # the last shard starting at or before `position`
            mid = (lo + hi + 1) // 2
            if self.starts[mid] <= position:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def close(self) -> None:
        """Close the open shard, if any."""
        if self._open is not None:
            self._open[2].close()
            self._open = None

    def read(self, positions: Sequence[int]) -> list[tuple[int, dict[str, Any] | None, str]]:
        """(position, raw sample or None, why it is missing) for each position, in the order given."""
        out = []
        for position in positions:
            shard = self._shard_of(position)
            offset = position - self.starts[shard]
            if self._open is None or self._open[0] != shard or self._next > offset:
                self.close()
                try:
                    stream = open_url(self.urls[shard])
                except (OSError, ImageLoRAError) as exc:
                    out.append((position, None, f"missing: {self.urls[shard]} ({_first_line(exc)})"))
                    continue
                self._open, self._next = (shard, tar_samples(stream), stream), 0
            raw, why = None, ""
            try:
                while self._next <= offset:
                    raw = next(self._open[1])
                    self._next += 1
            except StopIteration:
                raw, why = None, f"corrupt: {self.urls[shard]} ends before sample {offset}"
                self.close()
            except Exception as exc:  # a broken tar stream: tarfile/OS errors of many kinds
                raw, why = None, f"corrupt: {self.urls[shard]} ({_first_line(exc)})"
                self.close()
            out.append((position, raw, why))
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class ChunkStore:
    """Finished chunks (and the text-only results) as JSON files under `root`: a local dir or a URL."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.remote = is_url(self.root)

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    @staticmethod
    def chunk_name(chunk: int) -> str:
        """The file of chunk `chunk`."""
        return f"chunk-{chunk:07d}.json"

    def names(self) -> set[str]:
        """Names of the files stored so far (none when the directory does not exist yet)."""
        if not self.remote:
            root = Path(self.root)
            return {p.name for p in root.iterdir() if p.is_file()} if root.is_dir() else set()
        import pyarrow.fs as pafs

        fs, path = url_filesystem(self.root)
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return {i.base_name for i in infos if i.type == pafs.FileType.File}

    def finished_chunks(self) -> set[int]:
        """The chunk numbers with a stored result."""
        out = set()
        for name in self.names():
            if name.startswith("chunk-") and name.endswith(".json"):
                try:
                    out.add(int(name[len("chunk-") : -len(".json")]))
                except ValueError:
                    continue
        return out

    def put(self, name: str, payload: dict[str, Any]) -> None:
        """Store `payload` as `name`, whole or not at all."""
        data = json.dumps(payload, sort_keys=True).encode()
        if not self.remote:
            atomic_write_bytes(Path(self._path(name)), data)
            return
        fs, path = url_filesystem(self._path(name))
        with fs.open_output_stream(path) as f:
            f.write(data)

    def get(self, name: str) -> dict[str, Any] | None:
        """The stored payload `name`, or None when it is not there (or unreadable: it is then redone)."""
        try:
            if not self.remote:
                raw = Path(self._path(name)).read_bytes()
            else:
                fs, path = url_filesystem(self._path(name))
                with fs.open_input_stream(path) as f:
                    raw = f.read()
            payload = json.loads(raw)
        except (OSError, ValueError):
            return None
        return payload if isinstance(payload, dict) else None

    def __str__(self) -> str:
        return self.root


def local_parent(path: str) -> None:
    """Create a local store's directory (an object store needs none)."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)
