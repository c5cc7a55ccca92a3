"""imagelora_dist: distributed Image-LoRA fine-tuning of vision-language models.

The public API (see DESIGN §4). The pure-torch core imported here never imports Ray, DeepSpeed or MLflow.
"""

from imagelora_dist.adapter.accounting import (
    count_tokens,
    image_lora_num_parameters,
    image_lora_train_flops,
    lora_num_parameters,
    lora_train_flops,
)
from imagelora_dist.adapter.image_lora import ImageLoRAHandle, ImageLoRALayer, attach_image_lora
from imagelora_dist.adapter.io import load_adapter, save_adapter
from imagelora_dist.errors import AdapterFormatError, ImageLoRAError, SelectionError, UnsupportedModelError
from imagelora_dist.models import TINY_FAMILIES, build_tiny_vlm, load_vlm, resolve_model
from imagelora_dist.probe.scores import HeadProbe, probe_head_scores
from imagelora_dist.selection import HeadSelection, select_heads

__version__ = "0.1.0"

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
