"""Input blocks of `shard`: fixed runs of rows of one input file, each converted on its own into a shard.

The driver lists the input files (a local path or a `scheme://` URL: a file, or a folder as in
`ingest_sources.input_files`) and counts their rows: parquet from the footer, JSON Lines by a scan that
counts newlines and notes the byte offset of each block's first line, a JSON array by parsing it once
(ScreenSpot-sized eval files). Each file is cut into blocks of `rows` rows (lines for JSON Lines, blank
ones included, so a row keeps its line number). The driver holds one small `Block` per `rows` rows and
never a record. A block's rows, and so its shard, depend only on the input and `rows`, never on how many
workers convert blocks or in which order.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from imagelora_dist.data.ingest_sources import (
    _HF_SHARD,
    JSON_SUFFIXES,
    PARQUET_BATCH_ROWS,
    PARQUET_SUFFIX,
    Row,
    _first_line,
    _parquet_file,
    default_data_source,
    input_files,
    jsonl_row,
    parse_json_array,
)
from imagelora_dist.data.shards import is_url, url_filesystem
from imagelora_dist.errors import ImageLoRAError

READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Block:
    """Rows [start, stop) of one input file (JSON Lines: 1-based line numbers; else 0-based rows)."""

    index: int
    file: str  # local path or URL
    label: str  # the name problems are reported under (relative to the input folder)
    kind: str  # "parquet" | "array" | "jsonl"
    start: int
    stop: int
    offset: int = 0  # JSON Lines: byte offset of line `start`
    data_source: str = ""  # records' default `data_source`
    version: str = ""  # the file's size and modification time: a changed input is converted anew

    def spec(self) -> dict[str, Any]:
        """JSON-ready form (the manifest's record of which rows a shard holds)."""
        return asdict(self)

    @property
    def stem(self) -> str:
        """The file's name without its suffix (default record ids are `{stem}-{row}`)."""
        return PurePosixPath(self.label).stem

    @property
    def name(self) -> str:
        """The file's name (a sample's `source`)."""
        return PurePosixPath(self.label).name


def plan_blocks(source: str, rows: int) -> list[Block]:
    """The blocks of `source` (a file or folder, local or URL), `rows` rows each; raises ImageLoRAError for
    a missing input or an unreadable file (before anything is written)."""
    if rows < 1:
        raise ImageLoRAError(f"rows per block must be at least 1, got {rows}")
    blocks: list[Block] = []
    for file, label, data_source in _list_inputs(source):
        kind, version = _kind(file), _version(file)
        for start, stop, offset in _cuts(file, kind, rows):
            blocks.append(Block(len(blocks), file, label, kind, start, stop, offset, data_source, version))
    return blocks


def _list_inputs(source: str) -> list[tuple[str, str, str]]:
    """(location, label, default data source) of every input file, in a fixed order."""
    if not is_url(source):
        path = Path(source)
        files = input_files(path)
        return [
            (str(f), f.relative_to(path).as_posix() if path.is_dir() else f.name, default_data_source(f))
            for f in files
        ]
    import pyarrow.fs as pafs

    fs, root = url_filesystem(source)
    base = source.rstrip("/")
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [(source, PurePosixPath(root).name, _url_data_source(PurePosixPath(root)))]
    if info.type != pafs.FileType.Directory:
        raise ImageLoRAError(f"{source}: input not found")
    found = [
        i.path
        for i in fs.get_file_info(pafs.FileSelector(root.rstrip("/"), recursive=True))
        if i.type == pafs.FileType.File
    ]
    rel = sorted(
        p[len(root.rstrip("/")) + 1 :]
        for p in found
        if not any(part.startswith(".") for part in PurePosixPath(p[len(root.rstrip("/")) + 1 :]).parts)
    )
    chosen = [r for r in rel if r.lower().endswith(PARQUET_SUFFIX)]
    if not chosen:
        chosen = [r for r in rel if "/" not in r and PurePosixPath(r).suffix.lower() in JSON_SUFFIXES]
    if not chosen:
        raise ImageLoRAError(
            f"{source}: no .parquet files under this folder and no .json or .jsonl files in it"
        )
    return [(f"{base}/{r}", r, _url_data_source(PurePosixPath(root) / r)) for r in chosen]


def _url_data_source(path: PurePosixPath) -> str:
    """`default_data_source` for a file in an object store."""
    match = _HF_SHARD.match(path.stem)
    if not match:
        return path.stem
    for parent in path.parents:
        if parent.name and parent.name != "data":
            return parent.name
    return match["split"]


def _open(location: str) -> Any:
    """A seekable binary file at a local path or URL."""
    try:
        if not is_url(location):
            return open(location, "rb")
        fs, path = url_filesystem(location)
        return fs.open_input_file(path)
    except OSError as exc:
        raise ImageLoRAError(f"{location}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None


def _version(location: str) -> str:
    if not is_url(location):
        st = os.stat(location)
        return f"{st.st_size}:{st.st_mtime_ns}"
    fs, path = url_filesystem(location)
    info = fs.get_file_info(path)
    return f"{info.size}:{info.mtime_ns}"


def _kind(location: str) -> str:
    with _open(location) as f:
        head = f.read(4096)
    if location.lower().endswith(PARQUET_SUFFIX) or head[:4] == b"PAR1":
        return "parquet"
    return "array" if head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"[" else "jsonl"


def _parquet(location: str) -> Any:
    return _parquet_file(_open(location) if is_url(location) else Path(location), location)


def _cuts(location: str, kind: str, rows: int) -> Iterator[tuple[int, int, int]]:
    """(start, stop, byte offset) of each block of one file."""
    if kind == "parquet":
        total = _parquet(location).metadata.num_rows
        yield from ((a, min(a + rows, total), 0) for a in range(0, total, rows))
    elif kind == "array":
        with _open(location) as f:
            total = len(parse_json_array(f.read(), location))
        yield from ((a, min(a + rows, total), 0) for a in range(0, total, rows))
    else:
        yield from _jsonl_cuts(location, rows)


def _jsonl_cuts(location: str, rows: int) -> Iterator[tuple[int, int, int]]:
    offsets = [0]  # byte offset of lines 1, 1 + rows, 1 + 2 rows, ...
    newlines, pos, last = 0, 0, b"\n"
    with _open(location) as f:
        while chunk := f.read(READ_CHUNK):
            n = chunk.count(b"\n")
            target = len(offsets) * rows  # the newline (counted from 1) that ends the current block
            if newlines + n >= target:
                i = -1
                for seen in range(newlines + 1, newlines + n + 1):
                    i = chunk.index(b"\n", i + 1)
                    if seen == target:
                        offsets.append(pos + i + 1)
                        target += rows
            newlines += n
            pos += len(chunk)
            last = chunk[-1:]
    lines = newlines + (0 if last == b"\n" else 1)
    for k, start in enumerate(range(1, lines + 1, rows)):
        yield start, min(start + rows, lines + 1), offsets[k]


def block_rows(block: Block) -> Iterator[Row]:
    """The rows of one block, in order; raises ImageLoRAError when the file as a whole is bad."""
    if block.kind == "jsonl":
        yield from _jsonl_block(block)
    elif block.kind == "array":
        with _open(block.file) as f:
            items = parse_json_array(f.read(), block.file)
        for i in range(block.start, min(block.stop, len(items))):
            yield Row("item", i, items[i])
    else:
        yield from _parquet_block(block)


def _jsonl_block(block: Block) -> Iterator[Row]:
    with _open(block.file) as f:
        f.seek(block.offset)
        reader = io.BufferedReader(_Raw(f), READ_CHUNK) if is_url(block.file) else f
        for line_no in range(block.start, block.stop):
            raw = reader.readline()
            if not raw:
                return
            row = jsonl_row(raw, line_no)
            if row is not None:
                yield row


class _Raw(io.RawIOBase):
    """A pyarrow input file as a raw stream, so `io.BufferedReader` can read lines from it."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.f.read(len(b))
        b[: len(data)] = data
        return len(data)


def _parquet_block(block: Block) -> Iterator[Row]:
    parquet = _parquet(block.file)
    meta = parquet.metadata
    groups, first, at = [], None, 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if at < block.stop and at + n > block.start:
            groups.append(g)
            first = at if first is None else first
        at += n
    if not groups:
        return
    row = first
    batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=groups)
    while row < block.stop:
        try:
            batch = next(batches, None)
        except Exception as exc:  # a corrupt page or column chunk
            raise ImageLoRAError(
                f"{block.file}: unreadable parquet at row {row} ({_first_line(exc)})"
            ) from None
        if batch is None:
            return
        if row + batch.num_rows <= block.start:
            row += batch.num_rows
            continue
        for record in batch.to_pylist():
            if block.start <= row < block.stop:
                yield Row("row", row, record)
            row += 1
