"""Save and load Image-LoRA adapters: `adapter_model.safetensors` + `adapter_config.json`, never pickle.

Tensors are keyed by decoder layer index and KV head index (`layers.{l}.A`, `layers.{l}.gamma`,
`layers.{l}.heads.{h}.B`), not by transformers module paths, which change between releases.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from imagelora_dist.adapter.image_lora import ImageLoRAHandle, attach_image_lora
from imagelora_dist.errors import AdapterFormatError, ImageLoRAError
from imagelora_dist.models.registry import ModelSpec, resolve_model
from imagelora_dist.selection import HeadSelection

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
ADAPTER_TYPE = "image_lora"
FORMAT_VERSION = 1
# Geometry that must match between the saved adapter and the model it is loaded into.
_MATCH_FIELDS = (
    "family",
    "num_layers",
    "num_kv_heads",
    "head_dim",
    "hidden_size",
    "image_token_id",
    "video_token_id",
)


def adapter_state_dict(handle: ImageLoRAHandle) -> dict[str, torch.Tensor]:
    """The adapter's tensors keyed by (layer, head), full-size and on CPU.

    Under ZeRO-3 the parameters are gathered in one collective: every rank must call this (and
    `save_adapter`), not only rank 0.
    """
    params = list(handle.parameters())
    gather = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed  # only reachable when DeepSpeed already partitioned the parameters

        gather = deepspeed.zero.GatheredParameters(params)
    out: dict[str, torch.Tensor] = {}
    with gather:
        for layer, module in handle.modules.items():
            out[f"layers.{layer}.A"] = module.A.detach().to("cpu", copy=True).contiguous()
            out[f"layers.{layer}.gamma"] = module.gamma.detach().to("cpu", copy=True).contiguous()
            b = module.B.detach().to("cpu", copy=True)
            for i, head in enumerate(module.heads.tolist()):
                out[f"layers.{layer}.heads.{head}.B"] = b[i].contiguous()
    return out


def _spec_fields(spec: ModelSpec) -> dict[str, Any]:
    return {
        "family": spec.family,
        "model_type": spec.model_type,
        "base_model_name_or_path": spec.name_or_path,
        "num_layers": spec.num_layers,
        "num_kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "hidden_size": spec.hidden_size,
        "image_token_id": spec.image_token_id,
        "video_token_id": spec.video_token_id,
        "visual_token_ids": list(spec.visual_token_ids),
    }


def save_adapter(
    path: str | os.PathLike, handle: ImageLoRAHandle, extra: dict[str, Any] | None = None
) -> Path:
    """Write the adapter of `handle` to directory `path`; each file goes to a temp name, then is renamed."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = adapter_state_dict(handle)
    for name, t in tensors.items():
        expected = _expected_shape(name, handle.spec, handle.rank)
        if t.numel() == 0:
            raise ImageLoRAError(f"refusing to save empty tensor {name} (ZeRO-3 parameter not gathered?)")
        if tuple(t.shape) != expected:
            raise ImageLoRAError(f"adapter tensor {name} has shape {tuple(t.shape)}, expected {expected}")
    config = {
        "adapter_type": ADAPTER_TYPE,
        "format_version": FORMAT_VERSION,
        "rank": handle.rank,
        "alpha": handle.alpha,
        "dtype": str(next(iter(tensors.values())).dtype).removeprefix("torch."),
        **_spec_fields(handle.spec),
        "selection": handle.selection.to_dict(),
        **(extra or {}),
    }
    tmp_weights = path / f".{WEIGHTS_NAME}.tmp-{os.getpid()}"
    tmp_config = path / f".{CONFIG_NAME}.tmp-{os.getpid()}"
    save_file(tensors, str(tmp_weights), metadata={"format": "pt", "adapter_type": ADAPTER_TYPE})
    tmp_config.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp_weights, path / WEIGHTS_NAME)
    os.replace(tmp_config, path / CONFIG_NAME)
    return path


def _expected_shape(name: str, spec: ModelSpec, rank: int) -> tuple[int, ...]:
    if name.endswith(".A"):
        return (spec.hidden_size, rank)
    if name.endswith(".B"):
        return (rank, spec.head_dim)
    return (1,)


def read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check `adapter_config.json` in `path`, with errors naming the file and field."""
    cfg_path = Path(path) / CONFIG_NAME
    try:
        config = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise AdapterFormatError(f"{cfg_path}: not found (is {path} an adapter directory?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterFormatError(f"{cfg_path}: corrupt JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("adapter_type") != ADAPTER_TYPE:
        raise AdapterFormatError(f"{cfg_path}: adapter_type is not {ADAPTER_TYPE!r}")
    for key in ("rank", "alpha", "selection", *_MATCH_FIELDS):
        if key not in config:
            raise AdapterFormatError(f"{cfg_path}: missing field {key!r}")
    return config


def load_adapter(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    freeze_base: bool = True,
    beside_partitioned: bool = False,
) -> ImageLoRAHandle:
    """Attach the adapter saved in `path` to `model`, refusing a model it was not made for. A model ZeRO-3 has
    partitioned is refused unless `beside_partitioned` (inference: the adapter stays whole on every rank)."""
    path = Path(path)
    config = read_adapter_config(path)
    spec = resolve_model(model)
    model_fields = _spec_fields(spec)
    for key in _MATCH_FIELDS:
        if config[key] != model_fields[key]:
            raise AdapterFormatError(
                f"{path / CONFIG_NAME}: {key} is {config[key]!r} but the model has {model_fields[key]!r}"
            )
    saved_name, model_name = config.get("base_model_name_or_path") or "", spec.name_or_path
    if saved_name and model_name and Path(saved_name).name != Path(model_name).name:
        warnings.warn(
            f"{path}: adapter was trained on {saved_name!r}, loading into {model_name!r} (same geometry)",
            stacklevel=2,
        )
    # Training must register the adapter before the engine partitions it; inference beside a ZeRO-3 base
    # (eval's zero3 backend) wants it whole and local on every rank, as the ZeRO-3 probe attaches its own.
    if not beside_partitioned and any(p.numel() == 0 and hasattr(p, "ds_id") for p in model.parameters()):
        raise AdapterFormatError(
            f"{path}: load the adapter before deepspeed.initialize (ZeRO-3 partitioned the model)"
        )
    selection = HeadSelection.from_dict(config["selection"], source=str(path / CONFIG_NAME))
    weights_path = path / WEIGHTS_NAME
    try:
        tensors = load_file(str(weights_path))
    except FileNotFoundError:
        raise AdapterFormatError(f"{weights_path}: not found") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFormatError(f"{weights_path}: corrupt safetensors file ({exc})") from None
    rank = int(config["rank"])
    expected = {
        name: _expected_shape(name, spec, rank)
        for layer in selection.layers
        for name in (
            f"layers.{layer}.A",
            f"layers.{layer}.gamma",
            *(f"layers.{layer}.heads.{h}.B" for h in selection.kv_indices[layer]),
        )
    }
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterFormatError(
            f"{weights_path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise AdapterFormatError(
                f"{weights_path}: {name} has shape {tuple(tensors[name].shape)}, expected {shape}"
            )
    dtype = tensors[f"layers.{selection.layers[0]}.A"].dtype
    handle = attach_image_lora(
        model, selection, rank, float(config["alpha"]), dtype=dtype, freeze_base=freeze_base
    )
    with torch.no_grad():
        for layer, module in handle.modules.items():
            module.A.copy_(tensors[f"layers.{layer}.A"])
            module.gamma.copy_(tensors[f"layers.{layer}.gamma"])
            b = torch.stack([tensors[f"layers.{layer}.heads.{h}.B"] for h in module.heads.tolist()])
            module.B.copy_(b)
    return handle
