"""A cache of the frozen vision tower's outputs, keyed by a hash of each image's pixels.

Neither Image-LoRA nor decoder LoRA touches the vision tower, so its output for an image never changes
during a run: computing it once and reusing it on later epochs (and between the probe and training,
through the optional directory) removes the tower from every repeated step. Granularity is one image,
so reuse survives reshuffled batches. Qwen2-VL and Qwen2.5-VL only: their towers take packed patches
with a per-image grid, which makes per-image hits exact to assemble.

A key is `hash(model fingerprint, pixel digest)`. The training loop's collator computes the pixel digests
in the data-loader workers, on the CPU tensors, and hands them over with the batch (`expect`): the
training process then never copies pixels back from the device or hashes them on its critical path. The
probe (no digests handed over) hashes in the hook; both give the same keys, so a shared directory serves both.
With the loader in the training process, a batch whose every image is cached skips the image processor and
carries a `pixel_stand_in` (data/collate.py); the hook never reads its pixels, and refuses it on a miss.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from imagelora_dist.errors import ImageLoRAError

CACHEABLE_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")


class TensorStore:
    """Tensors by key in memory (LRU, capped in bytes), optionally also on disk as safetensors."""

    def __init__(self, max_bytes: int = 2 << 30, directory: str | os.PathLike | None = None) -> None:
        self.max_bytes = max_bytes
        self.directory = Path(directory) if directory else None
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> torch.Tensor | None:
        """The tensor stored under `key` (memory first, then disk), or None."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        if self.directory is not None:
            path = self.directory / f"{key}.safetensors"
            if path.is_file():
                tensor = load_file(str(path))["features"]
                self._remember(key, tensor)
                return tensor
        return None

    def contains(self, key: str) -> bool:
        """Whether `get(key)` would find a tensor (in memory or on disk), without loading it."""
        if key in self._items:
            return True
        return self.directory is not None and (self.directory / f"{key}.safetensors").is_file()

    def put(self, key: str, features: torch.Tensor) -> None:
        """Store a detached copy; written to disk atomically when a directory is set."""
        features = features.detach().clone()
        self._remember(key, features)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{key}.safetensors"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file({"features": features.cpu().contiguous()}, str(tmp))
            os.replace(tmp, path)

    def _remember(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if size > self.max_bytes:
            return
        self._items[key] = tensor
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()


class VisionFeatureCache(TensorStore):
    """Per-image vision-tower outputs, with the loader's pixel digests for the next forward."""

    def __init__(self, max_bytes: int = 2 << 30, directory: str | os.PathLike | None = None) -> None:
        super().__init__(max_bytes, directory)
        self.hits = self.misses = 0
        self._expected: list[str] | None = None
        self._without_pixels = False
        # Set where ranks must run the same modules (ZeRO-3): given whether this rank's forward found all
        # its images, whether every rank's did. Called once per forward that reaches the tower.
        self.agree: Callable[[bool], bool] | None = None
        self.forced_runs = 0  # forwards that ran the tower only because another rank missed

    def expect(self, digests: list[str] | None, without_pixels: bool = False) -> None:
        """The pixel digests of the images of the next forward (from the collator), or None to hash there;
        `without_pixels`: its pixel_values are a stand-in (the collator found every image cached)."""
        self._expected = list(digests) if digests else None
        self._without_pixels = without_pixels

    def take_without_pixels(self) -> bool:
        """Whether the forward `expect` announced came without pixels; once."""
        flag, self._without_pixels = self._without_pixels, False
        return flag

    def take_expected(self, count: int) -> list[str] | None:
        """The digests handed over by `expect`, once, if they are for `count` images; else None."""
        digests, self._expected = self._expected, None
        return digests if digests is not None and len(digests) == count else None


def pixel_digest(pixels: torch.Tensor, grid: torch.Tensor) -> str:
    """Hash of one image's packed patches: dtype, grid (t, h, w) and pixel bytes."""
    h = hashlib.blake2b(digest_size=20)
    h.update(str(pixels.dtype).encode())
    h.update(grid.detach().cpu().to(torch.int64).numpy().tobytes())
    h.update(pixels.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def pixel_digests(pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[str]:
    """`pixel_digest` of every image of a batch (Qwen packing: one grid row per image)."""
    chunks = torch.split(pixel_values, image_grid_thw.prod(-1).tolist())
    return [pixel_digest(c, g) for c, g in zip(chunks, image_grid_thw, strict=True)]


def pixel_stand_in(patches: int, patch_dim: int, dtype: torch.dtype, device: Any = "cpu") -> torch.Tensor:
    """Zeros of pixel_values' shape in no memory (stride 0): for images whose tower output is cached."""
    return torch.zeros((), dtype=dtype, device=device).expand(patches, patch_dim)


def is_pixel_stand_in(pixel_values: torch.Tensor) -> bool:
    """Whether `pixel_values` is a `pixel_stand_in` (every stride 0) rather than real patches."""
    return pixel_values.dim() == 2 and pixel_values.shape[0] > 1 and pixel_values.stride() == (0, 0)


def image_key(fingerprint: str, digest: str) -> str:
    """The cache key of an image (its `pixel_digest`) under one model (its fingerprint)."""
    return hashlib.blake2b(f"{fingerprint}\0{digest}".encode(), digest_size=20).hexdigest()


def _inner_model(model: nn.Module) -> nn.Module:
    inner = getattr(model, "model", model)
    if not hasattr(inner, "get_image_features") or not hasattr(inner, "visual"):
        raise ImageLoRAError("vision cache: the model has no Qwen-style get_image_features/visual tower")
    return inner


def attach_vision_cache(model: nn.Module, cache: VisionFeatureCache, fingerprint: str) -> Any:
    """Route the model's image-feature computation through `cache`; returns a function that detaches it.

    `fingerprint` names the model weights and dtype (features of another model must never be reused).
    """
    model_type = getattr(model.config, "model_type", "")
    if model_type not in CACHEABLE_MODEL_TYPES:
        raise ImageLoRAError(
            f"train.vision_cache supports {', '.join(CACHEABLE_MODEL_TYPES)}, not model_type {model_type!r}"
        )
    inner = _inner_model(model)
    original = inner.get_image_features
    merge = inner.visual.spatial_merge_size**2

    def cached(pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None, **kwargs: Any) -> Any:
        patches = image_grid_thw.prod(-1).tolist()
        chunks = torch.split(pixel_values, patches)
        digests = cache.take_expected(len(chunks))
        without_pixels = cache.take_without_pixels() or is_pixel_stand_in(pixel_values)
        if digests is None:  # no digests from the loader (the probe, eval): hash here
            digests = pixel_digests(pixel_values, image_grid_thw)
        keys = [image_key(fingerprint, d) for d in digests]
        found = [cache.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        cache.hits += len(keys) - len(missing)
        cache.misses += len(missing)
        if missing and without_pixels:
            raise ImageLoRAError(
                "vision cache: a batch came without pixels (its features were cached when it was collated) "
                f"but {len(missing)} of its images are no longer cached; set speed.vision_cache_skip_processor=false"
            )
        if not missing and cache.agree is not None and not cache.agree(True):
            # Another rank runs the tower: run it too (on one image, result unused) so the sharded
            # weights are gathered in the same order everywhere. A stand-in is made dense for it.
            cache.forced_runs += 1
            with torch.no_grad():
                original(chunks[0].contiguous(), image_grid_thw[:1], **kwargs)
        elif missing and cache.agree is not None:
            cache.agree(False)
        if missing:
            with torch.no_grad():  # frozen: no graph, and nothing to keep for a backward
                out = original(torch.cat([chunks[i] for i in missing]), image_grid_thw[missing], **kwargs)
            pooled = out.pooler_output if not isinstance(out, tuple) else out[1]
            for i, feats in zip(missing, pooled, strict=True):
                if feats.shape[0] != patches[i] // merge:
                    raise ImageLoRAError("vision cache: unexpected vision tower output size")
                cache.put(keys[i], feats)
                found[i] = feats.detach()
        device = pixel_values.device
        return BaseModelOutputWithPooling(pooler_output=tuple(f.to(device) for f in found))

    inner.get_image_features = cached

    def detach() -> None:
        if inner.__dict__.get("get_image_features") is cached:
            del inner.get_image_features

    return detach
