"""Reading any flat element range of any tensor of a safetensors checkpoint, by byte offset.

A checkpoint directory (`model.safetensors`, or shards named by `model.safetensors.index.json`) on a local
path or an object store (`s3://...`, pyarrow range reads). Only each file's header is read up front; a
range read fetches exactly the bytes of the elements asked for, so a ZeRO-3 rank reads its partition of a
tensor without the rest of it ever reaching its memory.
"""

from __future__ import annotations

import json
import math
import posixpath
import struct
import warnings
from dataclasses import dataclass

import torch

from imagelora_dist.errors import ImageLoRAError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_MAX_HEADER = 100 * 2**20  # safetensors' own limit: a larger header is a corrupt file


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies: its file, dtype, shape and absolute byte offsets in the file."""

    file: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


def _filesystem(root: str):  # -> tuple[pyarrow.fs.FileSystem, str]
    import pyarrow.fs as pafs

    if "://" not in root:
        return pafs.LocalFileSystem(), root
    try:
        return pafs.FileSystem.from_uri(root)
    except (OSError, ValueError) as exc:
        raise ImageLoRAError(f"model.path: cannot open {root!r}: {exc}") from None


class CheckpointTensors:
    """The tensors of a safetensors checkpoint directory, read by element range (local or URI)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.fs, self.base = _filesystem(self.root)
        self._files: dict[str, object] = {}
        self.entries: dict[str, TensorEntry] = {}
        for name in self._weight_files():
            self.entries.update(self._header(name))

    def _read_small(self, name: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(posixpath.join(self.base, name)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _weight_files(self) -> list[str]:
        index = self._read_small(INDEX_FILE)
        if index is not None:
            try:
                weight_map = json.loads(index)["weight_map"]
                return sorted(set(weight_map.values()))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise ImageLoRAError(f"{self.root}/{INDEX_FILE}: unreadable weight_map ({exc})") from None
        import pyarrow.fs as pafs

        if self.fs.get_file_info(posixpath.join(self.base, SINGLE_FILE)).type != pafs.FileType.File:
            raise ImageLoRAError(f"model.path {self.root}: no {SINGLE_FILE} or {INDEX_FILE}")
        return [SINGLE_FILE]

    def _open(self, name: str):  # -> pyarrow.NativeFile
        if name not in self._files:
            try:
                self._files[name] = self.fs.open_input_file(posixpath.join(self.base, name))
            except FileNotFoundError:
                raise ImageLoRAError(f"{self.root}/{name}: missing (named by {INDEX_FILE})") from None
        return self._files[name]

    def _header(self, name: str) -> dict[str, TensorEntry]:
        f = self._open(name)
        where = f"{self.root}/{name}"
        size = f.size()
        if size < 8:
            raise ImageLoRAError(f"{where}: not a safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", f.read_at(8, 0))
        if length > min(_MAX_HEADER, size - 8):
            raise ImageLoRAError(f"{where}: not a safetensors file (header length {length})")
        try:
            header = json.loads(f.read_at(length, 8))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ImageLoRAError(f"{where}: unreadable safetensors header ({exc})") from None
        out = {}
        for key, info in header.items():
            if key == "__metadata__":
                continue
            try:
                dtype = _DTYPES[info["dtype"]]
                begin, end = (8 + length + int(o) for o in info["data_offsets"])
                entry = TensorEntry(name, dtype, tuple(int(s) for s in info["shape"]), begin, end)
            except (KeyError, TypeError, ValueError) as exc:
                raise ImageLoRAError(f"{where}: tensor {key!r}: bad header entry ({exc!r})") from None
            if entry.end > size or entry.end - entry.begin != entry.numel * entry.dtype.itemsize:
                raise ImageLoRAError(f"{where}: tensor {key!r}: byte range {begin}..{end} does not fit it")
            out[key] = entry
        return out

    def read_flat(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of tensor `key` flattened (1-D, the file's dtype): only those bytes are read."""
        entry = self.entries[key]
        if not 0 <= start <= stop <= entry.numel:
            raise ValueError(f"{key}: range {start}..{stop} outside its {entry.numel} elements")
        item = entry.dtype.itemsize
        data = self._open(entry.file).read_at((stop - start) * item, entry.begin + start * item)
        with warnings.catch_warnings():  # read-only buffer: the caller copies it into its own tensor
            warnings.simplefilter("ignore", UserWarning)
            if stop == start:
                return torch.empty(0, dtype=entry.dtype)
            return torch.frombuffer(data, dtype=torch.uint8).view(entry.dtype)

    def read(self, key: str) -> torch.Tensor:
        """Tensor `key` whole, in its shape (a copy that owns its memory)."""
        entry = self.entries[key]
        return self.read_flat(key, 0, entry.numel).clone().view(entry.shape)

    def close(self) -> None:
        """Close the open files."""
        for f in self._files.values():
            f.close()
        self._files.clear()
