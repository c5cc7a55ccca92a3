"""The on-disk shard format shared by `synth`, `shard` and the reader.

A dataset is a directory of WebDataset tar shards `{prefix}-{i:06d}.tar` plus `index.json`.
Each sample has `__key__`, one image member (`png`, `jpg`/`jpeg` or `webp`, the bytes as produced or as
found in the source) and a `json` member with the record below. Nothing else is written, and the
reader decodes nothing else.

Record (`json` member):
    id            str    unique within the dataset
    task          str    "grounding" or "referring"
    instruction   str    the user's text (for referring, built from the box)
    answer        str    the assistant's text (grounding: "(x, y)" in [0, 1000))
    bbox          [x0, y0, x1, y1] in pixels of the stored image, x0 < x1 <= width, y0 < y1 <= height
    point         [x, y] in pixels (the box centre unless the source gave a point)
    element_type  str    "button", "checkbox", "text", "icon", ...
    element_text  str    the element's visible text ("" for icons)
    width, height int    of the stored image
    source        str    where the sample came from ("synth", or the converted file name)
    data_source   str    the source's own grouping, for eval breakdowns (ScreenSpot's "ios", "windows"...;
                         ScreenSpot-Pro's platform; else the converted file's stem)
    application   str    the application shown (ScreenSpot-Pro's "vscode"...; "" when the source has none)
    point_only    bool   true when the source gave a point and no box (absent otherwise)

A screen-grouped shard (`shard --group-by-screen`, data/screen_groups.py) stores one screenshot per
sample, its `json` being `{"screen", "width", "height", "targets": [record, ...]}`: every target's
whole record as above; readers expand it into per-target samples (`reader.decode_samples`).

`shard` writes every field (`point_only` only for point-only records); `synth` writes all but
`data_source` and `application` (GROUPING_FIELDS). Readers must treat a missing `data_source` as the
record's `source`, a missing `application` as "" (`record_data_source`, `record_application`) and a
missing `point_only` as false. A point-only source record gets a small box around its point
(`ingest_records.point_box`), so the grounding hit test (click inside `bbox`) is always defined; its
`answer` is the point, and the native answer formats answer it with the point, not that box
(`answer_formats.is_point_only`).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds

from imagelora_dist.errors import ImageLoRAError

INDEX_NAME = "index.json"
INDEX_FORMAT = "imagelora-shards"
INDEX_VERSION = 1
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
RECORD_FIELDS = (
    "id", "task", "instruction", "answer", "bbox", "point", "element_type", "element_text", "width", "height", "source",
)  # fmt: skip
# Written by `shard` after RECORD_FIELDS; optional for readers (synthetic records do not carry them).
GROUPING_FIELDS = ("data_source", "application")


def record_data_source(record: Mapping[str, Any]) -> str:
    """The record's `data_source`, or its `source` when it has none (synthetic records)."""
    return str(record.get("data_source") or record.get("source") or "")


def record_application(record: Mapping[str, Any]) -> str:
    """The record's `application`, or "" when it has none."""
    return str(record.get("application") or "")


# Screenshots larger than this are refused before decoding (decompression bombs), here and in the reader.
MAX_IMAGE_PIXELS = 64_000_000
# Tar layout of `write_shard` (USTAR, integer mtime, short ASCII names): a 512-byte header per member,
# data padded to 512, two zero blocks at the end, the archive padded to a 10240-byte record.
TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK


def tar_member_size(nbytes: int) -> int:
    """Bytes one member of `nbytes` takes in a shard written by `write_shard`."""
    return TAR_BLOCK + -(-nbytes // TAR_BLOCK) * TAR_BLOCK


def tar_archive_size(members_bytes: int) -> int:
    """Bytes of a shard whose members (from `tar_member_size`) add up to `members_bytes`."""
    return -(-(members_bytes + 2 * TAR_BLOCK) // TAR_RECORD) * TAR_RECORD


def shard_name(prefix: str, index: int) -> str:
    """`{prefix}-{index:06d}.tar`."""
    return f"{prefix}-{index:06d}.tar"


@dataclass
class ShardInfo:
    """One shard of the index: its file name (relative to the index) and contents."""

    url: str
    samples: int
    bytes: int = 0


@dataclass
class ShardIndex:
    """`index.json`: the shards in order, their sample counts, and how they were made."""

    shards: list[ShardInfo]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def total_samples(self) -> int:
        """Samples over all shards."""
        return sum(s.samples for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "total_samples": self.total_samples,
            "shards": [{"url": s.url, "samples": s.samples, "bytes": s.bytes} for s in self.shards],
            "meta": self.meta,
        }

    def write(self, directory: str | os.PathLike) -> Path:
        """Write `index.json` atomically into `directory`."""
        path = Path(directory) / INDEX_NAME
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> ShardIndex:
        """Read `index.json` (or the directory or URL holding it), with errors naming the file and field."""
        where = index_location(path)
        try:
            data = json.loads(index_bytes(path))
        except FileNotFoundError:
            raise ImageLoRAError(f"{where}: shard index not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ImageLoRAError(f"{where}: not valid JSON ({exc})") from None
        except OSError as exc:
            raise ImageLoRAError(f"{where}: cannot read the shard index ({exc})") from None
        if not isinstance(data, Mapping) or data.get("format") != INDEX_FORMAT:
            raise ImageLoRAError(f"{where}: not an {INDEX_FORMAT} index (format field)")
        try:
            shards = [
                ShardInfo(str(s["url"]), int(s["samples"]), int(s.get("bytes", 0))) for s in data["shards"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise ImageLoRAError(f"{where}: bad 'shards' entry ({exc})") from None
        return cls(shards=shards, meta=dict(data.get("meta") or {}))

    def urls(self, base: str | os.PathLike, *, allow_external: bool = False) -> list[str]:
        """Shard URLs resolved against the directory (or URL) holding the index.

        An index travels with untrusted shards, so by default its entries must be plain relative names:
        an absolute path could read any file, and a `pipe:` entry would run a shell command. Pass
        `allow_external=True` only for an index you wrote yourself.
        """
        base = str(base).rstrip("/")
        out = []
        for s in self.shards:
            external = _is_absolute(s.url) or ".." in Path(s.url).parts
            if external and not allow_external:
                raise ImageLoRAError(
                    f"shard index entry {s.url!r} is not a plain relative name; refusing it "
                    "(set data.trust_index_urls=true for an index you wrote yourself)"
                )
            out.append(s.url if _is_absolute(s.url) else f"{base}/{s.url}")
        return out


def index_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of `index.json` (or of the directory or URL holding it), read where the reader reads them."""
    where = index_location(path)
    if is_url(where):
        with open_url_stream(where) as f:
            return f.read()
    return Path(where).read_bytes()


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _is_absolute(url: str) -> bool:
    """An absolute path, or a URL with a scheme (`file://`, `s3://`, `pipe:`)."""
    return url.startswith("/") or bool(_SCHEME.match(url))


def is_url(path: str | os.PathLike) -> bool:
    """True for `scheme://...` locations (read through pyarrow's filesystems), False for local paths."""
    return "://" in str(path) and not str(path).startswith("file://")


# One pyarrow filesystem per (process, object-store bucket): `from_uri` resolves an S3 bucket's region with
# a request, which every shard open would otherwise repeat. Keyed by pid: a DataLoader worker is a fork and
# must not reuse its parent's connections.
_FILESYSTEMS: dict[tuple[int, str], Any] = {}
_BUCKET_SCHEMES = ("s3", "gs", "gcs")


def url_filesystem(url: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) of a `scheme://` URL: s3://, gs://, hdfs://, abfs:// ...

    pyarrow is what Ray Train already uses for checkpoints, so no fsspec backend (s3fs, gcsfs) is needed.
    S3 credentials, region and endpoint come from the standard variables (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3 or
    AWS_ENDPOINT_URL for MinIO-like stores), ~/.aws, or the instance's role.
    """
    import pyarrow.fs as pafs

    scheme, _, rest = url.partition("://")
    location = rest.partition("?")[0]
    try:
        if scheme not in _BUCKET_SCHEMES:
            return pafs.FileSystem.from_uri(url)
        key = _filesystem_key(url)
        if key not in _FILESYSTEMS:
            _FILESYSTEMS[key] = pafs.FileSystem.from_uri(url)[0]
    except ValueError as exc:  # pyarrow.ArrowInvalid: unknown scheme, malformed URI
        raise ImageLoRAError(f"{url}: no filesystem for this URL ({exc})") from None
    return _FILESYSTEMS[key], location


def _filesystem_key(url: str) -> tuple[int, str]:
    scheme, _, rest = url.partition("://")
    location, _, query = rest.partition("?")
    return os.getpid(), f"{scheme}://{location.split('/', 1)[0]}?{query}"


def forget_filesystem(url: str) -> None:
    """Drop this process's cached filesystem of `url`'s bucket: the next open makes a new one, with the
    credentials as they are then (a rotated key, a refreshed session token)."""
    _FILESYSTEMS.pop(_filesystem_key(url), None)


def open_url_stream(url: str) -> io.BufferedIOBase:
    """A readable binary stream of the object at a `scheme://` URL: through pyarrow (`url_filesystem`),
    else through fsspec for the schemes pyarrow does not know (`memory://`, or any installed backend)."""
    try:
        fs, path = url_filesystem(url)
    except ImageLoRAError as unknown:
        try:
            import fsspec

            return fsspec.open(url, "rb").open()
        except (ImportError, ValueError) as exc:  # no fsspec, no backend, or an unknown protocol
            raise ImageLoRAError(f"{url}: no filesystem opens this URL ({unknown}; fsspec: {exc})") from None
    return fs.open_input_stream(path)


def index_location(path: str | os.PathLike) -> str:
    """The index file for a dataset directory, URL prefix, or the index file itself."""
    text = str(path)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if text.endswith(".json"):
        return text
    if is_url(text) or not Path(text).is_file():
        return f"{text.rstrip('/')}/{INDEX_NAME}"
    return text


def dataset_base(path: str | os.PathLike) -> str:
    """The directory (or URL prefix) relative shard names are resolved against."""
    where = index_location(path)
    return where.rsplit("/", 1)[0] if "/" in where else "."


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp name in the same directory, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_shard(path: str | os.PathLike, samples: Iterable[Mapping[str, Any]]) -> ShardInfo:
    """Write one tar shard atomically and deterministically (fixed mtime/owner): same samples, same bytes.

    Each sample: `__key__`, one image member (bytes) named by its extension, and `json` (a dict).
    """
    path = Path(path)
    data, count = shard_bytes(samples)
    atomic_write_bytes(path, data)
    return ShardInfo(url=path.name, samples=count, bytes=len(data))


def write_bytes_at(location: str, data: bytes) -> None:
    """Write a whole file at a local path (temp name, then rename) or a `scheme://` URL (an object store
    PUT is all or nothing: a failed upload leaves no object)."""
    if not is_url(location):
        atomic_write_bytes(Path(location.removeprefix("file://")), data)
        return
    fs, path = url_filesystem(location)
    with fs.open_output_stream(path) as f:
        f.write(data)


def shard_bytes(samples: Iterable[Mapping[str, Any]]) -> tuple[bytes, int]:
    """The bytes of a shard of `samples` as `write_shard` writes it, and the number of samples."""
    buf = io.BytesIO()
    count = 0
    with wds.TarWriter(buf, mtime=0, user="imagelora", group="imagelora", mode=0o444) as sink:
        for sample in samples:
            keys = set(sample) - {"__key__"}
            images = [k for k in keys if k in IMAGE_EXTENSIONS]
            if len(images) != 1 or keys != {images[0], "json"}:
                raise ValueError(
                    f"sample {sample.get('__key__')}: expected one image member and 'json', got {sorted(keys)}"
                )
            sink.write(dict(sample))
            count += 1
    return buf.getvalue(), count


def read_shard_raw(path: str | os.PathLike) -> list[dict[str, bytes | str]]:
    """All members of a local shard grouped by key, as raw bytes (for tests and tools; never decodes)."""
    groups: dict[str, dict[str, bytes | str]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            groups.setdefault(key, {"__key__": key})[ext] = tar.extractfile(member).read()
    return list(groups.values())
