"""The adapters a run can train: Image-LoRA from a head selection, Image-LoRA on every KV head, or
standard LoRA through peft on the text decoder (the paper's baseline). All freeze the base model.

`full` is not an adapter: every parameter trains (the vision tower too, unless `freeze_vision`), and
saving writes a normal transformers checkpoint directory plus the processor. The fidelity study's
`fidelity.pretrain` (experiments/fidelity) uses it to pre-train a small base model with the same trainer."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imagelora_dist.adapter.accounting import decoder_lora_targets
from imagelora_dist.adapter.image_lora import ImageLoRAHandle, attach_image_lora
from imagelora_dist.adapter.io import save_adapter
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models.grad_scope import vision_tower
from imagelora_dist.models.registry import resolve_model
from imagelora_dist.selection import HeadSelection

METHODS = ("image_lora", "image_lora_all", "lora", "full")


@dataclass
class Adapted:
    """A model with its adapter attached: the module to train, its trainable parameters, and how to save it."""

    model: nn.Module
    method: str
    parameters: list[nn.Parameter]
    handle: ImageLoRAHandle | None = None  # Image-LoRA
    peft_model: Any = None  # LoRA
    processor: Any = None  # full: saved beside the weights

    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write the adapter only (safetensors + config), or for `full` the whole model + processor as a
        transformers checkpoint directory; under ZeRO-3 every rank must call this."""
        if self.handle is not None:
            return save_adapter(path, self.handle, extra)
        path = Path(path)
        params = list(self.model.parameters()) if self.method == "full" else self.parameters
        gather = contextlib.nullcontext()
        if any(hasattr(p, "ds_id") for p in params):
            import deepspeed  # ZeRO-3 partitioned the weights: gather them (a collective) to save

            gather = deepspeed.zero.GatheredParameters(params)
        with gather:
            if self.method == "full":
                self.model.save_pretrained(str(path), safe_serialization=True)
            else:
                self.peft_model.save_pretrained(str(path), safe_serialization=True)
        if self.method == "full" and self.processor is not None:
            self.processor.save_pretrained(str(path))
        return path

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Adapter tensors by name, on CPU (for comparisons and tests)."""
        if self.handle is not None:
            from imagelora_dist.adapter.io import adapter_state_dict

            return adapter_state_dict(self.handle)
        module = self.model if self.method == "full" else self.peft_model
        return {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}


def attach_method(
    model: nn.Module,
    method: str,
    *,
    rank: int,
    alpha: float,
    selection: HeadSelection | None = None,
    lora_targets: list[str] | str = ("v_proj",),
    seed: int = 0,
    processor: Any = None,
    freeze_vision: bool = False,
) -> Adapted:
    """Freeze `model` and attach the adapter of `method` (`full`: unfreeze it all); returns what the
    trainer needs. `processor` and `freeze_vision` matter for `full` only."""
    if method not in METHODS:
        raise ImageLoRAError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "full":
        model.requires_grad_(True)
        tower = vision_tower(model)
        if freeze_vision and tower is not None:
            tower.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        return Adapted(model, method, params, processor=processor)
    if method == "image_lora":
        if selection is None:
            raise ImageLoRAError("method image_lora needs a head selection (run the probe stage first)")
        handle = attach_image_lora(model, selection, rank, alpha, seed=seed)
        return Adapted(model, method, list(handle.parameters()), handle=handle)
    if method == "image_lora_all":
        handle = attach_image_lora(
            model, HeadSelection.all_heads(resolve_model(model)), rank, alpha, seed=seed
        )
        return Adapted(model, method, list(handle.parameters()), handle=handle)
    import peft

    targets = decoder_lora_targets(
        model, list(lora_targets) if not isinstance(lora_targets, str) else lora_targets
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # peft's kaiming init of lora_A draws from the global generator
        peft_model = peft.get_peft_model(
            model, peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets)
        )
    params = [p for p in peft_model.parameters() if p.requires_grad]
    return Adapted(peft_model, method, params, peft_model=peft_model)
