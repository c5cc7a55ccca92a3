"""A cache of the hidden states that enter the lowest adapted decoder layer, one entry per sample.

Nothing below the lowest adapter trains, so for a frozen base the hidden states reaching it are a fixed
function of the sample (its tokens and pixels). Computed in the first epoch, they are reused in later
ones: the decoder layers below it then run no more (and neither does the vision tower, unless the
vision-feature cache serves it from memory anyway). This goes one step past `no_grad_below_adapters`,
which stops the backward there but still runs the forward. Exact for every real position; padded
positions (no labels, and masked out of every real query) get zeros. A batch is served from the cache
only when every one of its samples is there; otherwise it is computed and recorded.

Qwen2-VL and Qwen2.5-VL only: Qwen3-VL adds vision features inside the decoder (deepstack), so the
vision tower would still be needed above the cached layer. Keys come from the data-loader workers
(`sample_digests`, with the pixel digests of models/vision_cache.py) via `expect`; a forward without
keys (probe, evaluation) runs unchanged.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models.registry import decoder_layers
from imagelora_dist.models.vision_cache import CACHEABLE_MODEL_TYPES, TensorStore


def sample_digests(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    images_per_row: Sequence[int],
    image_digests: Sequence[str],
) -> list[str]:
    """One hash per row: its real tokens and its images' pixel digests, in order.

    Padding is left out: positions come from the real tokens alone, so a sample keeps its key in any batch.
    """
    if sum(images_per_row) != len(image_digests):
        raise ValueError(f"{sum(images_per_row)} images in the rows but {len(image_digests)} pixel digests")
    out, start = [], 0
    for row, count in enumerate(images_per_row):
        h = hashlib.blake2b(digest_size=20)
        h.update(input_ids[row][attention_mask[row].bool()].cpu().to(torch.int64).numpy().tobytes())
        for digest in image_digests[start : start + count]:
            h.update(digest.encode())
        start += count
        out.append(h.hexdigest())
    return out


class PrefixCache:
    """Per-sample hidden states at the lowest adapted layer (host memory, LRU, capped in bytes; optionally
    also on disk, shared by the ranks). `namespace` names the model weights, dtype and layer."""

    def __init__(
        self, max_bytes: int = 4 << 30, directory: str | os.PathLike | None = None, namespace: str = ""
    ) -> None:
        self.store = TensorStore(max_bytes, directory)
        self.namespace = namespace
        self.hits = self.misses = 0
        self._keys: list[str] | None = None
        self.mode: str | None = None  # "hit" or "record" for the forward in flight, else None
        # Set where ranks must run the same modules (ZeRO-3): given whether this rank's batch is all cached,
        # whether every rank's is. Called at every `expect`, so every rank must call `expect` every step.
        self.agree: Callable[[bool], bool] | None = None

    def expect(self, keys: Sequence[str] | None) -> None:
        """The sample keys of the next forward (from the loader), or None: that forward runs unchanged."""
        self._keys = [self._store_key(k) for k in keys] if keys else None
        found = self._keys is not None and all(self.store.contains(k) for k in self._keys)
        if self.agree is not None:
            found = self.agree(found)  # a rank that could hit computes (and re-records) with the others
        if self._keys is None:
            self.mode = None
            return
        self.mode = "hit" if found else "record"
        if found:
            self.hits += len(self._keys)
        else:
            self.misses += len(self._keys)

    def _store_key(self, sample_key: str) -> str:
        # Another model, dtype or lowest layer never shares an entry (the directory may outlive a run).
        return hashlib.blake2b(f"{self.namespace}\0{sample_key}".encode(), digest_size=20).hexdigest()

    def replace(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The cached hidden states of the expected samples, laid out like `hidden` (zeros at padding)."""
        out = torch.zeros_like(hidden)
        for row, key in enumerate(self._keys or []):
            out[row][mask[row]] = self.store.get(key).to(device=hidden.device, dtype=hidden.dtype)
        return out

    def record(self, hidden: torch.Tensor, mask: torch.Tensor) -> None:
        """Keep each expected sample's real positions (on the host, so device memory stays free)."""
        for row, key in enumerate(self._keys or []):
            self.store.put(key, hidden[row][mask[row]].detach().cpu())

    def done(self) -> None:
        """The forward is over: the next one runs unchanged unless `expect` is called again."""
        self._keys, self.mode = None, None


def attach_prefix_cache(model: nn.Module, cache: PrefixCache, lowest_layer: int) -> Callable[[], None]:
    """Serve decoder layer `lowest_layer`'s input from `cache` on hits; returns a function that detaches it."""
    model_type = getattr(model.config, "model_type", "")
    if model_type not in CACHEABLE_MODEL_TYPES:
        raise ImageLoRAError(
            f"speed.prefix_cache supports {', '.join(CACHEABLE_MODEL_TYPES)}, not model_type {model_type!r}"
        )
    text_cfg = getattr(model.config, "text_config", model.config)
    if float(getattr(text_cfg, "attention_dropout", 0.0) or 0.0) > 0:
        raise ImageLoRAError(
            "speed.prefix_cache needs a dropout-free base: attention_dropout > 0 in layers below"
        )
    layers = list(decoder_layers(model))
    if not 0 < lowest_layer < len(layers):
        raise ImageLoRAError(f"speed.prefix_cache: nothing below the lowest adapted layer ({lowest_layer})")
    inner = getattr(model, "model", model)
    state: dict[str, torch.Tensor | None] = {"mask": None}
    undo: list[Callable[[], None]] = []

    def remember_mask(module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        state["mask"] = mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    undo.append(model.register_forward_pre_hook(remember_mask, with_kwargs=True).remove)
    undo.append(model.register_forward_hook(lambda *a: cache.done(), always_call=True).remove)

    def at_lowest(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if cache.mode is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        mask = state["mask"]
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        if cache.mode == "record":
            cache.record(hidden, mask)
            return None
        new = cache.replace(hidden, mask)
        return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

    undo.append(layers[lowest_layer].register_forward_pre_hook(at_lowest, with_kwargs=True).remove)

    for layer in layers[:lowest_layer]:
        undo.append(_skip_on_hit(layer, cache))

    original = inner.get_image_features

    def image_features(pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, **kwargs: Any) -> Any:
        if cache.mode != "hit":
            return original(pixel_values, image_grid_thw, **kwargs)
        # Served from the cache: the features only fill placeholders below the cached layer.
        merge = inner.visual.spatial_merge_size**2
        width = inner.config.text_config.hidden_size  # the merger projects to the decoder width
        shapes = [int(n) // merge for n in image_grid_thw.prod(-1).tolist()]
        zeros = [pixel_values.new_zeros((n, width), dtype=inner.dtype) for n in shapes]
        return BaseModelOutputWithPooling(pooler_output=tuple(zeros))

    inner.get_image_features = image_features

    def restore_features() -> None:
        if inner.__dict__.get("get_image_features") is image_features:
            del inner.get_image_features

    undo.append(restore_features)

    def detach() -> None:
        for fn in reversed(undo):
            fn()

    return detach


def _skip_on_hit(layer: nn.Module, cache: PrefixCache) -> Callable[[], None]:
    """Make `layer` an identity while a cache hit is in flight; returns the undo."""
    previous = layer.__dict__.get("forward")
    run = layer.forward

    def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if cache.mode == "hit":
            return hidden_states
        return run(hidden_states, *args, **kwargs)

    layer.forward = forward

    def undo() -> None:
        if previous is None:
            layer.__dict__.pop("forward", None)
        else:
            layer.forward = previous

    return undo
