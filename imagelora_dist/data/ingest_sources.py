"""The input files of `shard` and the records in them, read one at a time.

- `.jsonl`: one JSON object per line; rows are 1-based line numbers ("file.jsonl:12").
- `.json`: a JSON array of objects (ScreenSpot, ScreenSpot-v2, ScreenSpot-Pro); rows are 0-based indices
  ("file.json item 3", as `jq '.[3]'`). A .json holding JSON Lines is read as such.
- `.parquet` (or any file starting with parquet's `PAR1` magic): Hugging Face exports; rows are 0-based
  ("file.parquet row 5", as `dataset[5]`), read a batch at a time with pyarrow, never the whole table.
- a folder: every .parquet file under it (Hugging Face's `data/*-000NN-of-000MM.parquet`), or, when there
  is none, every .json / .jsonl file directly in it (ScreenSpot's per-platform files).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagelora_dist.errors import ImageLoRAError

JSON_SUFFIXES = (".json", ".jsonl")
PARQUET_SUFFIX = ".parquet"
# Rows per parquet batch: screenshots are embedded, so a batch holds this many images' bytes at most.
PARQUET_BATCH_ROWS = 16
_HF_SHARD = re.compile(r"^(?P<split>.+)-\d+-of-\d+$")


@dataclass(frozen=True)
class Row:
    """One record of an input file, or why it could not be parsed (`error`)."""

    unit: str  # "line" (1-based), "item" (0-based array index) or "row" (0-based parquet row)
    number: int
    record: Any = None
    error: str | None = None


def input_files(path: Path) -> list[Path]:
    """The files to read for `--input PATH`; raises ImageLoRAError when there is none."""
    if path.is_file():  # any name: the content says whether it is parquet, a JSON array or JSON Lines
        return [path]
    if not path.is_dir():
        raise ImageLoRAError(f"{path}: input not found")

    def visible(p: Path) -> bool:
        return p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)

    parquet = sorted(p for p in path.rglob(f"*{PARQUET_SUFFIX}") if visible(p))
    if parquet:
        return parquet
    found = sorted(p for p in path.iterdir() if p.suffix.lower() in JSON_SUFFIXES and visible(p))
    if not found:
        raise ImageLoRAError(
            f"{path}: no .parquet files under this folder and no .json or .jsonl files in it"
        )
    return found


def default_data_source(file: Path) -> str:
    """A record's `data_source` when it names none: the file's stem, or for a Hugging Face shard
    (`data/test-00000-of-00002.parquet`) the name of the dataset folder holding it."""
    match = _HF_SHARD.match(file.stem)
    if not match:
        return file.stem
    for parent in file.absolute().parents:
        if parent.name and parent.name != "data":
            return parent.name
    return match["split"]


def check_readable(file: Path) -> None:
    """Fail early (ImageLoRAError) on an unreadable file or parquet footer: before any shard is cut."""
    if _is_parquet(file):
        _parquet_file(file)  # opening reads the footer: the schema and row groups


def read_rows(file: Path) -> Iterator[Row]:
    """The records of one input file, in order; raises ImageLoRAError when the file as a whole is bad."""
    if _is_parquet(file):
        yield from _parquet_rows(file)
    elif _head(file).removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"[":
        yield from _array_items(file)
    else:
        yield from _jsonl_lines(file)


def _head(file: Path) -> bytes:
    try:
        with open(file, "rb") as f:
            return f.read(4096)
    except OSError as exc:
        raise ImageLoRAError(f"{file}: cannot read ({exc.strerror or exc})") from None


def _is_parquet(file: Path) -> bool:
    return file.suffix.lower() == PARQUET_SUFFIX or _head(file)[:4] == b"PAR1"


def _jsonl_lines(file: Path) -> Iterator[Row]:
    with open(file, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            row = jsonl_row(raw, line_no)
            if row is not None:
                yield row


def jsonl_row(raw: bytes, line_no: int) -> Row | None:
    """The Row of one JSON Lines line (1-based `line_no`), or None for a blank line."""
    if line_no == 1:
        raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Row("line", line_no, error="invalid JSON: not UTF-8 text")
    if not line.strip():
        return None
    try:
        return Row("line", line_no, json.loads(line))
    except json.JSONDecodeError as exc:
        return Row("line", line_no, error=f"invalid JSON: {exc.msg} (character {exc.pos + 1})")


def _array_items(file: Path) -> Iterator[Row]:
    # The array holds records, not decoded images (those are opened one record at a time), so parsing it
    # whole is fine; a syntax error anywhere makes the file unusable rather than one record.
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ImageLoRAError(f"{file}: cannot read ({exc.strerror or exc})") from None
    items = parse_json_array(data, str(file))
    for i in range(len(items)):
        item, items[i] = items[i], None  # let each record go once it is converted
        yield Row("item", i, item)


def parse_json_array(data: bytes, where: str) -> list[Any]:
    """The items of a JSON array file's bytes; raises ImageLoRAError naming `where` when they are not one."""
    try:
        items = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ImageLoRAError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ImageLoRAError(
            f"{where}: invalid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(items, list):
        raise ImageLoRAError(f"{where}: not a JSON array")
    return items


def _parquet_file(file: Path | Any, where: str | None = None) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImageLoRAError(
            f"{where or file}: reading parquet needs pyarrow (pip install pyarrow)"
        ) from None
    try:
        return pq.ParquetFile(file)
    except Exception as exc:  # pyarrow.ArrowInvalid, OSError, ...: anything here means an unreadable file
        raise ImageLoRAError(f"{where or file}: unreadable parquet ({_first_line(exc)})") from None


def _parquet_rows(file: Path) -> Iterator[Row]:
    parquet = _parquet_file(file)
    row = 0
    batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS)
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:  # a corrupt page or column chunk
            raise ImageLoRAError(f"{file}: unreadable parquet at row {row} ({_first_line(exc)})") from None
        if batch is None:
            return
        for record in batch.to_pylist():
            yield Row("row", row, record)
            row += 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
