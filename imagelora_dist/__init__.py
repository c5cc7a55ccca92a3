"""imagelora_dist: distributed Image-LoRA fine-tuning of vision-language models.

The public API (see DESIGN §4). The pure-torch core imported here never imports Ray, DeepSpeed or MLflow.
Names load on first use (PEP 562): `import imagelora_dist` alone stays cheap, so the CLI's `--help`, a bad
config's exit 2 and Ray's helper processes that import one small module never pay for torch and
transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagelora_dist.lazy_import import lazy_exports

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "count_tokens": "imagelora_dist.adapter.accounting",
    "image_lora_num_parameters": "imagelora_dist.adapter.accounting",
    "image_lora_train_flops": "imagelora_dist.adapter.accounting",
    "lora_num_parameters": "imagelora_dist.adapter.accounting",
    "lora_train_flops": "imagelora_dist.adapter.accounting",
    "ImageLoRAHandle": "imagelora_dist.adapter.image_lora",
    "ImageLoRALayer": "imagelora_dist.adapter.image_lora",
    "attach_image_lora": "imagelora_dist.adapter.image_lora",
    "load_adapter": "imagelora_dist.adapter.io",
    "save_adapter": "imagelora_dist.adapter.io",
    "AdapterFormatError": "imagelora_dist.errors",
    "ImageLoRAError": "imagelora_dist.errors",
    "SelectionError": "imagelora_dist.errors",
    "UnsupportedModelError": "imagelora_dist.errors",
    "TINY_FAMILIES": "imagelora_dist.models",
    "build_tiny_vlm": "imagelora_dist.models",
    "load_vlm": "imagelora_dist.models",
    "resolve_model": "imagelora_dist.models",
    "HeadProbe": "imagelora_dist.probe.scores",
    "probe_head_scores": "imagelora_dist.probe.scores",
    "HeadSelection": "imagelora_dist.selection",
    "select_heads": "imagelora_dist.selection",
}

__all__ = [
    "AdapterFormatError",
    "HeadProbe",
    "HeadSelection",
    "ImageLoRAError",
    "ImageLoRAHandle",
    "ImageLoRALayer",
    "SelectionError",
    "TINY_FAMILIES",
    "UnsupportedModelError",
    "attach_image_lora",
    "build_tiny_vlm",
    "count_tokens",
    "image_lora_num_parameters",
    "image_lora_train_flops",
    "load_adapter",
    "load_vlm",
    "lora_num_parameters",
    "lora_train_flops",
    "probe_head_scores",
    "resolve_model",
    "save_adapter",
    "select_heads",
]

if TYPE_CHECKING:  # what static analysis and IDEs see
    from imagelora_dist.adapter.accounting import (
        count_tokens,
        image_lora_num_parameters,
        image_lora_train_flops,
        lora_num_parameters,
        lora_train_flops,
    )
    from imagelora_dist.adapter.image_lora import ImageLoRAHandle, ImageLoRALayer, attach_image_lora
    from imagelora_dist.adapter.io import load_adapter, save_adapter
    from imagelora_dist.errors import (
        AdapterFormatError,
        ImageLoRAError,
        SelectionError,
        UnsupportedModelError,
    )
    from imagelora_dist.models import TINY_FAMILIES, build_tiny_vlm, load_vlm, resolve_model
    from imagelora_dist.probe.scores import HeadProbe, probe_head_scores
    from imagelora_dist.selection import HeadSelection, select_heads


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
