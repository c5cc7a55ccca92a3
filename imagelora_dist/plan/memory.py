"""The plan's memory arithmetic: pure functions of shapes and settings (no model, no torch).

Per token and decoder layer, a training forward with a frozen base keeps for the backward (measured on the
tiny model against torch's CPU allocator, tests/app/test_plan_measured.py): the two RMSNorms' float32
inputs (they upcast whatever the training dtype), q, k and v as attention sees them (k and v repeated to
every query head: with a padding mask transformers' SDPA does not use grouped-query kernels), the
attention output, and the SwiGLU's gate, its activation and the up projection. A frozen linear layer keeps
nothing (its input gradient needs only its weight); a trained one keeps its input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagelora_dist.errors import ImageLoRAError

GIB = 2**30
RUNTIME_ALLOWANCE_GIB = 3.0  # CUDA context, NCCL buffers, allocator fragmentation (an assumption)
# A worker process before any model: Python, torch, transformers, the Ray worker, the CUDA host-side
# context (an assumption; issue 33 measured loading above such a baseline).
HOST_FIXED_GIB = 4.0
LOADER_PROCESS_GIB = 1.0  # one data.num_workers loader process: its imports and a few decoded batches
TEXT_ALLOWANCE = 256  # prompt and answer tokens beside the visual ones (instruction, chat template, answer)
BATCHES_IN_FLIGHT = 2  # collated batches held at once (one in use, one prefetched)
EVAL_BACKENDS = ("replicas", "zero3", "device_map")


def decoder_activation_bytes(hidden: int, q_width: int, intermediate: int, b: int) -> int:
    """Bytes one decoder layer keeps for the backward per token with a frozen base (`b`: dtype bytes)."""
    norms = 2 * 4 * hidden  # input_layernorm and post_attention_layernorm keep their fp32 upcast
    attention = b * (q_width + 2 * q_width + q_width)  # q, k and v (repeated to every head), output
    mlp = b * 3 * intermediate  # gate, act(gate), up
    return norms + attention + mlp


def trained_linear_input_bytes(
    hidden: int, q_width: int, intermediate: int, b: int, method: str, every_linear: bool = False
) -> int:
    """Extra bytes per token and layer that trained projections keep (their inputs): every linear layer
    (`full`, or LoRA on all-linear), v_proj's (LoRA's default); Image-LoRA: see adapter_input_bytes."""
    if method == "full" or (method == "lora" and every_linear):
        # q/k/v and gate/up share a normed input each; o_proj and down_proj have their own
        return b * (2 * hidden + q_width + intermediate)
    return b * hidden if method == "lora" else 0


def adapter_input_bytes(hidden: int) -> int:
    """Image-LoRA keeps v_proj's input rows at visual tokens in fp32 (the delta runs in the adapter's dtype)."""
    return 4 * hidden


def inference_layer_bytes(hidden: int, q_width: int, intermediate: int, b: int) -> int:
    """Bytes per token alive inside one decoder layer without grad (the larger of attention and MLP)."""
    attention = 2 * hidden + 4 * q_width  # residual, normed input, q, k and v repeated, output
    mlp = 2 * hidden + 3 * intermediate
    return b * max(attention, mlp)


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, b: int, batch: int, tokens: int) -> int:
    """Keys and values of every layer for `batch` sequences of `tokens` tokens."""
    return 2 * layers * kv_heads * head_dim * b * batch * tokens


def visual_tokens_for(max_pixels: int, vision: dict[str, Any] | None, config: dict[str, Any]) -> int:
    """Visual tokens of the largest image data.max_pixels lets through (Qwen: pixels / (28 * 28))."""
    vision = vision or {}
    merge = vision.get("spatial_merge_size")
    if merge:  # Qwen-VL families: one token per merge x merge patches
        unit = int(vision.get("patch_size", 14)) * int(merge)
        return max(1, max_pixels // (unit * unit))
    for key in ("mm_tokens_per_image", "image_seq_length"):  # a fixed count per image (gemma3, llava)
        if config.get(key):
            return int(config[key])
    size, patch = vision.get("image_size"), vision.get("patch_size")
    if size and patch:  # one token per patch of a fixed-size image (llava, idefics3 before pixel shuffle)
        return (int(size) // int(patch)) ** 2 // max(1, int(config.get("scale_factor", 1)) ** 2)
    return max(1, max_pixels // (28 * 28))


def resolve_eval_backend(
    backend: str,
    replica_gib: float,
    device_map_gib: float | None,
    gpu_memory_gib: float | None,
    gpus_per_worker: int = 1,
) -> str:
    """eval.backend with `auto` resolved: replicas when a replica fits one GPU, else device_map when it fits
    a worker's GPUs (`device_map_gib` per GPU, over `gpus_per_worker` > 1), else zero3; no GPU: replicas."""
    if backend != "auto":
        if backend not in EVAL_BACKENDS:
            raise ImageLoRAError(f"eval.backend {backend!r}: one of auto, {', '.join(EVAL_BACKENDS)}")
        return backend
    if gpu_memory_gib is None or replica_gib <= gpu_memory_gib:
        return "replicas"
    if gpus_per_worker > 1 and device_map_gib is not None and device_map_gib <= gpu_memory_gib:
        return "device_map"
    return "zero3"


@dataclass(frozen=True)
class DeepSpeedLimits:
    """What a DeepSpeed JSON says about where memory goes (DeepSpeed's defaults where it is silent)."""

    stage: int = 2
    offload: str = "none"  # none | optimizer | optimizer+params
    pin_memory: bool = True
    max_live_parameters: int = 10**9  # stage3_max_live_parameters
    prefetch_bucket_size: int = 5 * 10**7  # stage3_prefetch_bucket_size (parameters)
    param_persistence_threshold: int = 10**5  # stage3_param_persistence_threshold: smaller ones stay whole
    max_reuse_distance: int = 10**9  # stage3_max_reuse_distance: a weight used again within this stays


def read_deepspeed(path: Path) -> DeepSpeedLimits:
    """The ZeRO stage, CPU offload and ZeRO-3 live/prefetch limits of a DeepSpeed JSON."""
    try:
        ds = json.loads(path.read_text())
    except FileNotFoundError:
        raise ImageLoRAError(f"train.deepspeed: {path} not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ImageLoRAError(f"train.deepspeed: {path} unreadable ({exc})") from None
    zero = ds.get("zero_optimization") if isinstance(ds, dict) else None
    if not isinstance(zero, dict) or zero.get("stage") not in (0, 1, 2, 3):
        raise ImageLoRAError(f"train.deepspeed: {path} has no zero_optimization.stage in 0..3")
    opt, par = zero.get("offload_optimizer") or {}, zero.get("offload_param") or {}
    on_host = [x.get("device") in ("cpu", "nvme") for x in (opt, par)]
    offload = "optimizer+params" if all(on_host) else "optimizer" if on_host[0] else "none"
    pinned = [bool(x.get("pin_memory", True)) for x, host in zip((opt, par), on_host, strict=True) if host]
    return DeepSpeedLimits(
        stage=int(zero["stage"]),
        offload=offload,
        pin_memory=all(pinned) if pinned else True,
        max_live_parameters=int(float(zero.get("stage3_max_live_parameters", 1e9))),
        prefetch_bucket_size=int(float(zero.get("stage3_prefetch_bucket_size", 5e7))),
        param_persistence_threshold=int(float(zero.get("stage3_param_persistence_threshold", 1e5))),
        max_reuse_distance=int(float(zero.get("stage3_max_reuse_distance", 1e9))),
    )


def loading_host_gib(
    parameters: int, largest_tensor: int, b: int, zero3_ranks: int | None
) -> dict[str, float]:
    """Host memory (GiB) of one process while it loads, above its fixed cost: a rank of a ZeRO-3 group of
    `zero3_ranks` reads only its slice of each tensor, one tensor at a time (sharded loading); a whole
    replica (`zero3_ranks` None) holds every weight."""
    if zero3_ranks is not None:
        return {
            f"checkpoint partition (1/{zero3_ranks})": parameters * b / zero3_ranks / GIB,
            "largest tensor, read whole": largest_tensor * b / GIB,
        }
    return {"whole model": parameters * b / GIB}
