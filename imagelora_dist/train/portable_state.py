"""Resume state that does not depend on the world size: the trainable parameters in fp32 and their Adam
moments, whole (not ZeRO partitions), keyed by parameter name, with the step, the scheduler position, the
data cursor and the RNG, in one safetensors file beside DeepSpeed's own checkpoint files.

DeepSpeed's files resume a run only on the same number of data-parallel ranks (its optimizer partitions
are cut for that count). This file is what lets a run resume on another worker count, or when DeepSpeed's
files are gone; it stays small because only the adapter is trainable (frozen weights are never in it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from imagelora_dist.errors import ImageLoRAError

PORTABLE_FILE = "portable_state.safetensors"
FORMAT = "imagelora-portable-1"
MOMENTS = ("exp_avg", "exp_avg_sq")  # Adam / AdamW, the optimizer every run here uses


@dataclass
class PortableState:
    """What a resume from the portable file restores besides the weights and moments."""

    step: int
    cursor: dict[str, Any]
    torch_rng: torch.Tensor | None


def trainable(engine: Any) -> list[tuple[str, torch.nn.Parameter]]:
    """The engine's trainable parameters by name (the names do not depend on the world size)."""
    return [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]


def _basic_optimizer(engine: Any) -> torch.optim.Optimizer:
    # ZeRO wraps the torch optimizer (which steps the flat fp32 partitions); without ZeRO it is used as is.
    opt = engine.optimizer
    return getattr(opt, "optimizer", opt)


def _is_sharded(param: torch.nn.Parameter) -> bool:
    # A ZeRO-1/2 parameter held wholly by another rank still has the attribute (None): it joins the gather.
    return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")


def _optimizer_step(engine: Any) -> int:
    basic = _basic_optimizer(engine)
    for state in basic.state.values():
        if "step" in state:
            return int(float(state["step"]))
    return int(basic.param_groups[0].get("step", 0)) if basic.param_groups else 0


def gather_portable_state(engine: Any) -> dict[str, torch.Tensor]:
    """Whole fp32 parameters and moments by name. Every rank must call it: ZeRO gathers collectively."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    basic = _basic_optimizer(engine)
    out: dict[str, torch.Tensor] = {}
    for name, param in trainable(engine):
        if _is_sharded(param):
            value = safe_get_full_fp32_param(param)
            moments = {key: safe_get_full_optimizer_state(param, key) for key in MOMENTS}
        else:  # ZeRO off: the torch optimizer holds the module's own parameters
            value, state = param, basic.state.get(param, {})
            moments = {key: state.get(key) for key in MOMENTS}
        out[f"param/{name}"] = value.detach().float().cpu().clone()
        for key, moment in moments.items():
            if moment is None:
                raise ImageLoRAError(
                    f"parameter {name} has no optimizer state {key!r}; is the optimizer Adam?"
                )
            out[f"{key}/{name}"] = moment.detach().float().cpu().reshape(out[f"param/{name}"].shape).clone()
    return out


def save_portable_state(
    engine: Any, checkpoint: Path, *, rank: int, step: int, cursor: dict[str, Any]
) -> None:
    """Gather on every rank; rank 0 writes `<checkpoint>/portable_state.safetensors` (temp name, then rename)."""
    tensors = gather_portable_state(engine)
    if rank != 0:
        return
    tensors["rng/torch"] = torch.get_rng_state()
    meta = {
        "format": FORMAT,
        "step": str(step),
        "optimizer_step": str(_optimizer_step(engine)),
        "lr_scheduler": json.dumps(engine.lr_scheduler.state_dict() if engine.lr_scheduler else {}),
        "cursor": json.dumps(cursor),
    }
    checkpoint.mkdir(parents=True, exist_ok=True)
    path = checkpoint / PORTABLE_FILE
    tmp = path.with_name(f".{PORTABLE_FILE}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def read_portable_meta(path: Path) -> dict[str, str]:
    """The metadata of a portable state file; a file of another kind is refused."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise ImageLoRAError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ImageLoRAError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def _ensure_adam_state(engine: Any, optimizer_step: int) -> None:
    """Give the torch optimizer its (lazily created) Adam state, so the moments have somewhere to go."""
    basic = _basic_optimizer(engine)
    flats = [p for group in basic.param_groups for p in group["params"]]
    # ZeRO-3 hands its flat fp32 partitions to the torch optimizer only inside step()
    flats += [
        p
        for p in getattr(engine.optimizer, "fp32_partitioned_groups_flat", [])
        if all(p is not q for q in flats)
    ]
    # torch's Adam/AdamW keep the step as a tensor per parameter; DeepSpeed's FusedAdam as an int, also
    # per parameter group
    as_tensor = isinstance(basic, torch.optim.Adam | torch.optim.AdamW)
    for group in basic.param_groups:
        if "step" in group:
            group["step"] = optimizer_step
    for flat in flats:
        state = basic.state[flat]
        for key in MOMENTS:
            state.setdefault(key, torch.zeros_like(flat, memory_format=torch.preserve_format))
        step = state.get("step")
        dtype = step.dtype if isinstance(step, torch.Tensor) else torch.float32
        device = step.device if isinstance(step, torch.Tensor) else torch.device("cpu")
        state["step"] = (
            torch.tensor(float(optimizer_step), dtype=dtype, device=device) if as_tensor else optimizer_step
        )
    # ZeRO-1/2 link each parameter to its slice of the moments after the first step; do it now.
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        engine.optimizer._hp_optimizer_states_linked = False
        link()


def _zero3_partition(param: torch.nn.Parameter, value: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a whole ZeRO-3 tensor, zero-padded like DeepSpeed's partitions (its own
    `safe_set_full_*` cut past the end of a tensor whose size the world size does not divide)."""
    part = param.ds_tensor.numel()
    flat = torch.nn.functional.pad(
        value.flatten(), (0, part * torch.distributed.get_world_size() - value.numel())
    )
    rank = torch.distributed.get_rank()
    return flat[rank * part : (rank + 1) * part].to(param.ds_tensor.device)


def _set_module_weight(param: torch.nn.Parameter, value: torch.Tensor) -> None:
    if hasattr(param, "ds_id"):  # ZeRO-3: the module holds a partition; gather, set on rank 0, re-partition
        import deepspeed

        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            if torch.distributed.get_rank() == 0:
                param.data.copy_(value.reshape(param.shape).to(param.dtype))
        return
    with torch.no_grad():
        param.data.copy_(value.reshape(param.shape).to(param.device, param.dtype))


def load_portable_state(engine: Any, path: Path) -> PortableState:
    """Put the file's weights, moments, optimizer step and scheduler position into `engine` (any world size)."""
    from deepspeed.utils import (
        safe_set_full_fp32_param,
        safe_set_full_optimizer_state,
        safe_set_local_fp32_param,
        safe_set_local_optimizer_state,
    )

    meta = read_portable_meta(path)
    tensors = load_file(str(path))
    params = trainable(engine)
    expected = {f"{kind}/{name}" for name, _ in params for kind in ("param", *MOMENTS)}
    stored = {k for k in tensors if not k.startswith("rng/")}
    if stored != expected:
        missing, extra = sorted(expected - stored)[:3], sorted(stored - expected)[:3]
        raise ImageLoRAError(
            f"{path}: does not fit this model's trainable parameters (missing {missing}, unexpected {extra}); "
            "was it written with another train.method or adapter?"
        )
    _ensure_adam_state(engine, int(meta["optimizer_step"]))
    basic = _basic_optimizer(engine)
    for name, param in params:
        value = tensors[f"param/{name}"]
        numel = param.ds_numel if hasattr(param, "ds_id") else param.numel()
        if value.numel() != numel:
            raise ImageLoRAError(f"{path}: {name} has {value.numel()} values, the model {numel}")
        if hasattr(param, "ds_id"):
            safe_set_local_fp32_param(param, _zero3_partition(param, value))
            for key in MOMENTS:
                safe_set_local_optimizer_state(param, _zero3_partition(param, tensors[f"{key}/{name}"]), key)
        elif _is_sharded(param):
            safe_set_full_fp32_param(param, value.to(param.device))
            for key in MOMENTS:
                safe_set_full_optimizer_state(param, tensors[f"{key}/{name}"].to(param.device), key)
        else:
            state = basic.state[param]
            for key in MOMENTS:
                state[key].copy_(tensors[f"{key}/{name}"].reshape(param.shape))
        _set_module_weight(param, value)
    sched = json.loads(meta["lr_scheduler"])
    if engine.lr_scheduler is not None and "last_batch_iteration" in sched:
        # step(n) sets the position and writes its lr into the optimizer, as the next step expects
        engine.lr_scheduler.step(int(sched["last_batch_iteration"]))
    step = int(meta["step"])
    engine.global_steps = step
    engine.global_samples = step * engine.train_batch_size()
    engine.micro_steps = step * engine.gradient_accumulation_steps()
    rng = tensors.get("rng/torch")
    return PortableState(step=step, cursor=json.loads(meta["cursor"]), torch_rng=rng)
