"""The model side of shared-prefix packing (data/packing.py): block attention mask and as-if-alone positions.

A packed batch carries, per token, its segment (0 the shared prefix, b >= 1 branch b, -1 padding) and its
position in its own row alone. A forward pre-hook turns them into what the model's forward takes:

- a 4D additive mask: a token sees earlier tokens of its own segment and the prefix; nothing else (the
  model's mask code returns a 4D mask as it is, transformers' masking_utils). Gemma3's bidirectional image
  blocks and sliding-window layers are rebuilt on the as-if-alone positions (a dict per layer type);
- position_ids: the as-if-alone positions; for the mRoPE families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) the
  model's own `get_rope_index` on the packed row (exact for the prefix, which holds every image), with each
  branch continuing from the prefix's largest position as text does after an image.

Only the eager and sdpa kernels take such a mask; flash-attention and flex kernels are refused at attach.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from imagelora_dist.errors import ImageLoRAError

# The layout keys of a packed batch (data/packing.py writes them); the hook pops them before the forward.
SEGMENTS = "packed_segments"
POSITIONS = "packed_positions"

MROPE_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
MASKABLE_KERNELS = ("eager", "sdpa")


def check_shared_prefix_support(model: nn.Module) -> None:
    """Raise ImageLoRAError when `model`'s attention kernel cannot take a block mask."""
    config = model.config
    kernels = {getattr(config, "_attn_implementation", None)}
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    kernels.add(getattr(text, "_attn_implementation", None))
    bad = sorted(str(k) for k in kernels - {None, *MASKABLE_KERNELS})
    if bad:
        raise ImageLoRAError(
            f"data.targets_per_sample > 1 needs an attention kernel that takes a block mask; model uses "
            f"{', '.join(bad)}: set model.attn_implementation: eager (or sdpa), or data.targets_per_sample: 1"
        )


def _allowed(segments: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[rows, L, L] query-may-see-key: same segment or the prefix, not later, both real; padding sees itself."""
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]
    pos_q, pos_k = positions[:, :, None], positions[:, None, :]
    real_k = seg_k >= 0
    allowed = real_k & (seg_q >= 0) & ((seg_k == 0) | (seg_k == seg_q)) & (pos_k <= pos_q)
    return allowed | torch.eye(segments.shape[1], dtype=torch.bool, device=segments.device)


def _image_blocks(token_types: torch.Tensor) -> torch.Tensor:
    """[rows, L, L] both tokens in the same run of image tokens (Gemma3 lets an image see itself whole)."""
    image = token_types == 1
    start = image & ~torch.nn.functional.pad(image, (1, 0))[:, :-1]
    block = torch.where(image, start.cumsum(1), 0)
    return image[:, :, None] & (block[:, :, None] == block[:, None, :])


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def packed_attention_mask(
    model: nn.Module, segments: torch.Tensor, positions: torch.Tensor, token_types: torch.Tensor | None
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The mask the model's forward takes for a packed batch (a dict by layer type where some layers slide)."""
    dtype = getattr(model, "dtype", None) or next(model.parameters()).dtype  # the base's, not the adapter's
    allowed = _allowed(segments, positions)
    text = model.config.get_text_config()
    if token_types is not None and model.config.model_type == "gemma3":
        allowed |= _image_blocks(token_types)  # image blocks lie in the prefix, segment 0
    layer_types = set(getattr(text, "layer_types", None) or ())
    if "sliding_attention" not in layer_types:
        return _additive(allowed, dtype)
    window = int(text.sliding_window)
    near = positions[:, :, None] - positions[:, None, :] < window
    eye = torch.eye(segments.shape[1], dtype=torch.bool, device=segments.device)
    return {
        "full_attention": _additive(allowed, dtype),
        "sliding_attention": _additive(allowed & near | eye, dtype),
    }


def packed_position_ids(
    model: nn.Module, kwargs: dict[str, Any], segments: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """As-if-alone positions: [rows, L], or [3, rows, L] for the mRoPE families."""
    if model.config.model_type not in MROPE_MODEL_TYPES:
        return positions
    grid = kwargs.get("image_grid_thw")
    if grid is None:  # text only: text positions on all three axes
        return positions[None].expand(3, -1, -1)
    types = kwargs.get("mm_token_type_ids")
    if types is None:  # a processor that does not return them: 1 at image tokens
        types = (kwargs["input_ids"] == model.config.image_token_id).long()
    rope, _ = model.model.get_rope_index(
        kwargs["input_ids"],
        mm_token_type_ids=types,
        image_grid_thw=grid,
        attention_mask=(segments >= 0).long(),
    )
    prefix = segments == 0
    top = torch.where(prefix[None], rope, torch.zeros_like(rope)).amax(dim=(0, 2))  # per row
    length = prefix.sum(1)
    branch = segments > 0
    after = (top + 1 - length)[:, None] + positions  # text after the prefix: one more per token
    return torch.where(branch[None], after[None].expand(3, -1, -1), rope)


def attach_shared_prefix(outer: nn.Module, model: nn.Module | None = None) -> Callable[[], None]:
    """Make `outer` (the module training calls: the model, or a wrapper around `model`) take packed batches.

    A call without the layout keys runs unchanged. Returns a function that detaches the hook.
    """
    model = outer if model is None else model
    check_shared_prefix_support(model)

    def pre(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        if SEGMENTS not in kwargs:
            return None
        kwargs = dict(kwargs)
        segments, positions = kwargs.pop(SEGMENTS), kwargs.pop(POSITIONS)
        kwargs["position_ids"] = packed_position_ids(model, kwargs, segments, positions)
        kwargs["attention_mask"] = packed_attention_mask(
            model, segments, positions, kwargs.get("token_type_ids")
        )
        return args, kwargs

    return outer.register_forward_pre_hook(pre, with_kwargs=True).remove
