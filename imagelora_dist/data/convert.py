"""Convert published GUI-grounding data into shards + `index.json` (the `shard` command).

The input is a `.jsonl`, a `.json` array, a `.parquet` file, or a folder of parquet (or JSON) files
(`ingest_sources`); each record names its screenshot (a path under the image folder, or embedded bytes)
and gives a box or a point (`ingest_records`, which lists every field alias). A record with an
`elements` list gives one sample per element.

Each good record becomes one sample of the shard format in `shards.py`: the ORIGINAL image bytes under
the extension of the image's real format, and a `grounding` record with the box in pixels plus the
source's grouping (`data_source`, `application`). Bad records are skipped and reported by file and
line or row, with a reason. Inputs are streamed and at most one shard is held in memory. Shards are
written into a staging folder inside the output folder and moved into place only when the whole input
converted, so a failure leaves the output folder as it was. This is the one-process library function;
the `shard` command converts by input blocks, here or on Ray Data (convert_blocks.py), and shares this
module's options, record reading and report.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from imagelora_dist.data.ingest_records import (  # IMAGE_KEYS, INSTRUCTION_KEYS: infer's field names too
    BBOX_FORMATS,
    IMAGE_KEYS,
    INSTRUCTION_KEYS,
    NORMALIZED_MODES,
    ImageLoader,
    RecordContext,
    Skip,
    record_samples,
)
from imagelora_dist.data.ingest_sources import (
    Row,
    check_readable,
    default_data_source,
    input_files,
    read_rows,
)
from imagelora_dist.data.shards import (
    INDEX_NAME,
    ShardIndex,
    ShardInfo,
    shard_name,
    tar_archive_size,
    tar_member_size,
    write_shard,
)
from imagelora_dist.errors import ImageLoRAError

__all__ = [
    "IMAGE_KEYS",
    "INSTRUCTION_KEYS",
    "ConversionReport",
    "ConvertOptions",
    "Problem",
    "convert",
    "convert_jsonl",
]

SHOW_PROBLEMS = 10
STAGING_PREFIX = ".shard-staging-"


@dataclass
class ConvertOptions:
    """How to read boxes and how to cut shards (stored in the index's meta)."""

    bbox_format: str = "xyxy"  # "xyxy" or "xywh"
    normalized: str = "auto"  # "auto" | "pixels" | "1" | "1000"
    max_count: int = 1000  # samples per shard
    max_size: int = 2**30  # bytes per shard (a single larger sample still gets its own shard)
    prefix: str = "train"
    strict: bool = False  # exit code 1 when any record was skipped

    def __post_init__(self) -> None:
        if self.bbox_format not in BBOX_FORMATS:
            raise ImageLoRAError(
                f"bbox format must be one of {', '.join(BBOX_FORMATS)}, got {self.bbox_format!r}"
            )
        self.normalized = str(self.normalized)
        if self.normalized not in NORMALIZED_MODES:
            raise ImageLoRAError(
                f"normalized must be one of {', '.join(NORMALIZED_MODES)}, got {self.normalized!r}"
            )
        if int(self.max_count) < 1:
            raise ImageLoRAError(f"max_count must be at least 1, got {self.max_count}")
        if int(self.max_size) < 1:
            raise ImageLoRAError(f"max_size must be at least 1 byte, got {self.max_size}")
        if not self.prefix or any(c in self.prefix for c in "/\\") or self.prefix.startswith("."):
            raise ImageLoRAError(f"shard prefix must be a plain file name part, got {self.prefix!r}")


class Problem(NamedTuple):
    """A skipped record (or element of one): where it is and why."""

    file: str  # the file's name (relative to the input folder when the input is one)
    unit: str  # "line" (1-based), "item" (0-based JSON array index) or "row" (0-based parquet row)
    row: int
    reason: str
    element: int | None = None  # index into the record's `elements`

    @property
    def where(self) -> str:
        """`file.jsonl:12`, `file.json item 3` or `file.parquet row 5`, plus ` elements[k]`."""
        place = f"{self.file}:{self.row}" if self.unit == "line" else f"{self.file} {self.unit} {self.row}"
        return place if self.element is None else f"{place} elements[{self.element}]"


@dataclass
class ConversionReport:
    """What a conversion read, wrote and skipped."""

    total_records: int = 0  # records (lines, array items, rows) read
    written: int = 0  # samples written (a record with `elements` writes one per good element)
    skipped: int = 0  # records and elements skipped
    problems: list[Problem] = field(default_factory=list)
    index: ShardIndex | None = None
    strict: bool = False
    duplicates: int = 0  # image references beyond the first of each distinct screenshot (same pixels)
    screens: int = 0  # distinct screenshots (block conversions only)
    grouped: bool = False  # screen-grouped shards (`screens` samples holding `written` targets)
    reasons: Counter[str] | None = None  # skipped by kind of reason when `problems` lists only some

    @property
    def exit_code(self) -> int:
        """0 when nothing was skipped or the run was not strict; 1 when strict and something was skipped."""
        return 1 if self.strict and self.skipped else 0

    def reason_counts(self) -> Counter[str]:
        """Skipped records by kind of reason (the part of the reason before the first ':')."""
        if self.reasons is not None:
            return Counter(self.reasons)
        return Counter(p.reason.split(":", 1)[0] for p in self.problems)

    def summary(self) -> str:
        """`N records: W written in S shards, K skipped (reasons by count)`."""
        shards = len(self.index.shards) if self.index is not None else 0
        text = (
            f"{self.total_records} records: {self.written} written in {shards} "
            f"shard{'s' if shards != 1 else ''}, {self.skipped} skipped"
        )
        if self.skipped:
            counts = self.reason_counts().most_common()
            text += " (" + ", ".join(f"{n} {kind}" for kind, n in counts) + ")"
        if self.grouped:
            text += f"; {self.screens} screen{'s' if self.screens != 1 else ''} stored once each"
        if self.duplicates:
            text += f"; {self.duplicates} duplicate screenshot{'s' if self.duplicates != 1 else ''}"
        return text


def convert(
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: ConvertOptions | None = None,
    *,
    image_dir: str | os.PathLike | None = None,
    progress: Callable[[str], Any] | None = print,
    overwrite: bool = False,
    progress_every: int = 1000,
) -> ConversionReport:
    """Convert `input_path` (a .jsonl, .json array, .parquet or a folder of them) into shards in `out_dir`.

    Image paths in records are relative to `image_dir` (default: the input's folder); embedded images
    need none. Raises ImageLoRAError for bad inputs (missing file or folder, unreadable parquet or JSON,
    an existing index without `overwrite`) and when no record is valid; then `out_dir` is left as it was.
    """
    options = options or ConvertOptions()
    say = progress or (lambda _msg: None)
    source, out_dir = Path(input_path), Path(out_dir)
    files = input_files(source)
    root = source if source.is_dir() else source.parent
    if image_dir is not None and not Path(image_dir).is_dir():
        raise ImageLoRAError(f"{image_dir}: image folder not found")
    if out_dir.exists() and not out_dir.is_dir():
        raise ImageLoRAError(f"{out_dir}: output path exists and is not a folder")
    if (out_dir / INDEX_NAME).exists() and not overwrite:
        raise ImageLoRAError(f"{out_dir}: already holds {INDEX_NAME} (pass overwrite to replace it)")
    for file in files:
        check_readable(file)

    images = ImageLoader(Path(image_dir) if image_dir is not None else root)
    report = ConversionReport(strict=options.strict)
    writer = _ShardWriter(out_dir, options)
    seen_ids: set[str] = set()
    start = time.monotonic()

    def skip(problem: Problem) -> None:
        report.skipped += 1
        report.problems.append(problem)
        if len(report.problems) <= SHOW_PROBLEMS:
            say(f"{problem.where}: skipped: {problem.reason}")
        elif len(report.problems) == SHOW_PROBLEMS + 1:
            say(f"{source.name}: further skipped records are not shown (the report lists them all)")

    try:
        for label, file, row in _rows(files, source):
            report.total_records += 1
            for result in row_samples(row, images, options, stem=file.stem, source=file.name,
                                      data_source=default_data_source(file)):  # fmt: skip
                if isinstance(result, Skip):
                    skip(Problem(label, row.unit, row.number, str(result), result.element))
                    continue
                element, sample = result
                sample_id = sample["json"]["id"]
                if sample_id in seen_ids:
                    skip(Problem(label, row.unit, row.number, f"duplicate id: {sample_id!r}", element))
                    continue
                seen_ids.add(sample_id)
                writer.add(sample)
                report.written += 1
            if progress_every > 0 and report.total_records % progress_every == 0:
                rate = report.total_records / max(time.monotonic() - start, 1e-9)
                say(
                    f"{report.total_records} records: {report.written} written, {report.skipped} skipped "
                    f"({rate:.0f} records/s)"
                )
        if report.written == 0:
            first = report.problems[0] if report.problems else None
            raise ImageLoRAError(
                f"{source}: no valid records ({report.total_records} records, {report.skipped} skipped"
                + (f"; first: {first.where}: {first.reason}" if first else "")
                + ")"
            )
        meta = {
            "created_by": "imagelora-dist shard",
            "source": source.name,
            "files": [_label(f, source) for f in files],
            "options": asdict(options),
            "skipped": report.skipped,
        }
        report.index = writer.commit(meta, overwrite=overwrite)
    except BaseException:
        writer.abort()
        raise
    say(report.summary())
    return report


def convert_jsonl(
    jsonl: str | os.PathLike,
    image_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: ConvertOptions | None = None,
    progress: Callable[[str], Any] | None = print,
    *,
    overwrite: bool = False,
    progress_every: int = 1000,
) -> ConversionReport:
    """`convert` of one JSONL (or JSON) file whose records name images under `image_dir`."""
    if not Path(image_dir).is_dir():
        raise ImageLoRAError(f"{image_dir}: image folder not found")
    return convert(
        jsonl,
        out_dir,
        options,
        image_dir=image_dir,
        progress=progress,
        overwrite=overwrite,
        progress_every=progress_every,
    )


def _label(file: Path, source: Path) -> str:
    return file.relative_to(source).as_posix() if source.is_dir() else file.name


def _rows(files: list[Path], source: Path) -> Iterator[tuple[str, Path, Row]]:
    for file in files:
        label = _label(file, source)
        for row in read_rows(file):
            yield label, file, row


def row_samples(
    row: Row, images: ImageLoader, options: ConvertOptions, *, stem: str, source: str, data_source: str
) -> Iterator[Skip | tuple[int | None, dict[str, Any]]]:
    """The row's (element index, sample) pairs and Skips; a record failing as a whole gives one Skip.
    `stem`-`row.number` is the id of a record without one; `source` names the file in errors."""
    if row.error is not None:
        yield Skip(row.error)
        return
    # Lines are numbered from 1 and so were the ids made from them; array items and rows from 0.
    ctx = RecordContext(
        default_id=f"{stem}-{row.number}",
        source=source,
        default_data_source=data_source,
        bbox_format=options.bbox_format,
        normalized=options.normalized,
    )
    try:
        yield from record_samples(row.record, ctx, images)
    except Skip as exc:
        yield exc


# --- writing ---------------------------------------------------------------------------------------


class _ShardWriter:
    """Collects samples into the current shard and writes it into a staging folder when full; `commit`
    moves the shards into place and writes the index, `abort` removes everything this run wrote."""

    def __init__(self, out_dir: Path, options: ConvertOptions) -> None:
        self.out_dir = out_dir
        self.options = options
        self.created_out_dir = False
        self.staging: Path | None = None
        self.samples: list[dict[str, Any]] = []
        self.members = 0  # tar bytes of the current shard's members
        self.shards: list[ShardInfo] = []
        self.count = 0

    def add(self, sample: dict[str, Any]) -> None:
        size = sum(
            tar_member_size(len(json.dumps(v).encode("utf-8")) if k == "json" else len(v))
            for k, v in sample.items()
        )
        if self.samples and (
            len(self.samples) + 1 > self.options.max_count
            or tar_archive_size(self.members + size) > self.options.max_size
        ):
            self._flush()
        sample["__key__"] = f"{self.count:09d}"
        self.count += 1
        self.samples.append(sample)
        self.members += size

    def _flush(self) -> None:
        if self.staging is None:
            self.created_out_dir = not self.out_dir.exists()
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.staging = self.out_dir / f"{STAGING_PREFIX}{os.getpid()}"
            shutil.rmtree(self.staging, ignore_errors=True)  # left by a killed run of this pid
            self.staging.mkdir()
        path = self.staging / shard_name(self.options.prefix, len(self.shards))
        self.shards.append(write_shard(path, self.samples))
        self.samples = []
        self.members = 0

    def commit(self, meta: dict[str, Any], *, overwrite: bool) -> ShardIndex:
        """Move the staged shards into place and write the index over any old one (and its extra shards)."""
        if self.samples:
            self._flush()
        assert self.staging is not None
        old_index = self.out_dir / INDEX_NAME
        old_urls: list[str] = []
        if overwrite and old_index.exists():
            try:
                old_urls = [s.url for s in ShardIndex.read(old_index).shards]
            except ImageLoRAError:
                old_urls = []
            # Before the first shard replaces an old one, drop the old index so no reader mixes the two.
            old_index.unlink()
        for info in self.shards:
            os.replace(self.staging / info.url, self.out_dir / info.url)
        index = ShardIndex(shards=self.shards, meta=meta)
        index.write(self.out_dir)
        shutil.rmtree(self.staging, ignore_errors=True)
        keep = {s.url for s in self.shards}
        for url in old_urls:
            if url in keep or "://" in url or "/" in url or "\\" in url or url.startswith("."):
                continue
            (self.out_dir / url).unlink(missing_ok=True)
        return index

    def abort(self) -> None:
        """Remove the staged shards (and the output folder when this run created it and it is empty)."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        if self.created_out_dir:
            try:
                self.out_dir.rmdir()
            except OSError:
                pass
