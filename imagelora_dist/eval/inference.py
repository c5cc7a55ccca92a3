"""The one inference layer: a model with its adapter loaded on a backend, ready to generate.

Eval (every backend, every worker), `imagelora-dist infer` and batch inference all load through
`load_inference_model`, so a config answers the same wherever it runs. What is loaded:

    adapter dir with adapter_config.json, adapter_type image_lora   Image-LoRA hooks on the base
    adapter dir with adapter_config.json, peft_type LORA            a peft LoRA on the base
    a full checkpoint (config.json, train.method full)              the fine-tuned model itself
    no adapter (train.method none)                                  the base model (zero-shot)

`LoadedModel.disabled()` is the adapter switched off, for text preservation: Image-LoRA's own switch,
peft's `disable_adapter`, nothing for the base model, and for a full checkpoint the base weights swapped
in for the block (kept on the host: a full fine-tune doubles host memory for the comparison).

Placement: `device` ("auto": the first GPU, else the CPU) moves the whole model to one device; with
`device_map` (eval.backend device_map) transformers/accelerate spread one replica over the GPUs a worker
holds. The ZeRO-3 backend builds the model partitioned inside its group (eval/zero3.py) and attaches the
adapter with `attach_adapter` here.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imagelora_dist.adapter.io import ADAPTER_TYPE, CONFIG_NAME, load_adapter
from imagelora_dist.config import ModelConfig
from imagelora_dist.errors import AdapterFormatError, ImageLoRAError

IMAGE_LORA = "image_lora"
PEFT_LORA = "lora"
FULL = "full"
NONE = "none"


@dataclass
class LoadedModel:
    """A model ready to generate, its processor, what was loaded and how to switch the adapter off."""

    model: nn.Module
    processor: Any
    kind: str
    disabled: Callable[[], contextlib.AbstractContextManager]


def adapter_kind(path: str | Path) -> str:
    """`image_lora`, `lora` (peft) or `full` (a whole fine-tuned checkpoint), read from the directory."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterFormatError(
            f"adapter not found: {path} (give an adapter directory, runs:/<run_id>/<path> or "
            "mlflow-run:<run_id>)"
        )
    cfg_path = path / CONFIG_NAME
    if not cfg_path.exists() and (path / "config.json").is_file():
        return FULL
    try:
        config = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise AdapterFormatError(f"{path}: not an adapter directory (no {CONFIG_NAME})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterFormatError(f"{cfg_path}: unreadable ({exc})") from None
    if isinstance(config, dict) and config.get("adapter_type") == ADAPTER_TYPE:
        return IMAGE_LORA
    if isinstance(config, dict) and str(config.get("peft_type", "")).upper() == "LORA":
        return PEFT_LORA
    raise AdapterFormatError(
        f"{cfg_path}: neither an Image-LoRA adapter (adapter_type {ADAPTER_TYPE!r}) "
        "nor a peft LoRA adapter (peft_type 'LORA')"
    )


def attach_adapter(model: nn.Module, path: str | Path) -> tuple[nn.Module, str]:
    """Attach the adapter in `path` to `model`: (the model to generate with, the adapter kind)."""
    path = Path(path)
    kind = adapter_kind(path)
    if kind == FULL:
        raise AdapterFormatError(f"{path}: a full checkpoint, not an adapter (load it as the model)")
    if kind == IMAGE_LORA:
        load_adapter(model, path)  # hooks on `model` itself; refuses a model it was not made for
        return model, kind
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(path), is_trainable=False), kind
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise AdapterFormatError(
            f"{path}: cannot load this peft LoRA adapter into the model ({_first_line(exc)})"
        ) from None


def inference_device(device: str = "auto") -> torch.device:
    """`auto`: the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ImageLoRAError(f"device {device!r}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ImageLoRAError(f"device {device}: no CUDA device here")
    return dev


def _build(model_cfg: ModelConfig, device: str, device_map: str | dict | None) -> tuple[nn.Module, Any]:
    from imagelora_dist.models.build import build_model

    if device_map is not None:
        return build_model(model_cfg, device_map=device_map)
    model, processor = build_model(model_cfg)
    return model.to(inference_device(device)), processor


@contextlib.contextmanager
def _weights_swapped(model: nn.Module, base_state: dict[str, torch.Tensor]) -> Iterator[None]:
    """The base weights in `model` for the block, the fine-tuned ones back after it."""
    params = dict(model.named_parameters())
    tuned = {n: params[n].detach().to("cpu", copy=True) for n in base_state}
    try:
        with torch.no_grad():
            for name, value in base_state.items():
                params[name].copy_(value.to(params[name].device))
        yield
    finally:
        with torch.no_grad():
            for name, value in tuned.items():
                params[name].copy_(value.to(params[name].device))


def load_inference_model(
    model_cfg: ModelConfig,
    adapter: str | Path | None,
    *,
    device: str = "auto",
    device_map: str | dict | None = None,
) -> LoadedModel:
    """The configured base with the adapter in `adapter` (None: the base alone), on `device` or spread by
    `device_map`; a full checkpoint in `adapter` is loaded as the model itself."""
    kind = NONE if adapter is None else adapter_kind(adapter)
    if kind == FULL:
        base, _ = _build(model_cfg, "cpu", None)
        base_state = {n: p.detach().clone() for n, p in base.named_parameters()}
        del base
        tuned_cfg = model_cfg.model_copy(update={"path": str(adapter), "size": None, "split_digits": False})
        model, processor = _build(tuned_cfg, device, device_map)
        return LoadedModel(model, processor, kind, lambda: _weights_swapped(model, base_state))
    model, processor = _build(model_cfg, device, device_map)
    if kind == NONE:
        return LoadedModel(model, processor, kind, contextlib.nullcontext)
    if kind == IMAGE_LORA:
        handle = load_adapter(model, adapter)  # hooks on `model` itself; refuses a model it was not made for
        return LoadedModel(model, processor, kind, handle.disabled)
    peft_model, kind = attach_adapter(model, adapter)  # type: ignore[arg-type]
    return LoadedModel(peft_model, processor, kind, lambda: peft_model.disable_adapter())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
