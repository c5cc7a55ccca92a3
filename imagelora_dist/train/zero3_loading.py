"""Building the base model under ZeRO-3 straight into each rank's partition (training and the ZeRO-3 probe)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from imagelora_dist.config import RunConfig


def import_deepspeed() -> Any:
    """deepspeed, imported for this machine (the CPU accelerator without a GPU, no shm op build)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import deepspeed.comm.torch  # noqa: F401 - the module object is patched below

    # The CPU accelerator JIT-compiles a shared-memory comm op in init_distributed (~40 s, needs a
    # compiler); gloo does not use it. `import deepspeed.comm.torch as m` would bind torch itself.
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    return deepspeed


# Tiny families whose builder changes a weight after construction (build_tiny_vlm): built whole.
WHOLE_TINY_FAMILIES = ("gemma3",)


@contextlib.contextmanager
def partitioned_loading(cfg: RunConfig, ds_config: dict[str, Any], dtype: str) -> Iterator[bool]:
    """Under ZeRO-3, build the model straight into this rank's partition; yields whether it is on.

    A checkpoint (`model.path`): transformers' from_pretrained runs the model's construction inside
    DeepSpeed's zero.Init while a HfDeepSpeedConfig is alive, so no rank ever holds the whole model. A tiny
    model: its constructor runs inside zero.Init, which partitions each module as soon as it is built;
    transformers' weight init, which runs after, then sees empty tensors, so each module's init runs on
    its gathered weights (one module at a time, rank 0's values kept): the same seeded weights, bit for
    bit, as a whole build."""
    if int(ds_config["zero_optimization"]["stage"]) != 3 or (
        not cfg.model.path and cfg.model.family in WHOLE_TINY_FAMILIES
    ):
        yield False
        return
    loading = json.loads(json.dumps(ds_config))
    if dtype == "bfloat16":  # zero.Init casts what it partitions to the config's dtype: keep the base bf16
        loading["bf16"] = {"enabled": True}
    if not cfg.model.path:
        with _gathered_weight_init(), import_deepspeed().zero.Init(config_dict_or_path=loading):
            yield True
        return
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    keep = HfDeepSpeedConfig(loading)  # registered while referenced
    try:
        yield True
    finally:
        del keep
        unset_hf_deepspeed_config()


@contextlib.contextmanager
def _gathered_weight_init() -> Iterator[None]:
    """While open, transformers initializes each module's weights on their ZeRO-3 gathered full tensors."""
    import deepspeed
    from transformers.modeling_utils import PreTrainedModel

    init = PreTrainedModel._initialize_weights

    def gathered(self: Any, module: nn.Module, is_custom_code: bool = False) -> None:
        with deepspeed.zero.GatheredParameters(list(module.parameters(recurse=False)), modifier_rank=0):
            init(self, module, is_custom_code)

    PreTrainedModel._initialize_weights = gathered
    try:
        yield
    finally:
        PreTrainedModel._initialize_weights = init


def local_parameter_bytes(model: nn.Module) -> int:
    """Bytes of the parameters this rank holds (its ZeRO-3 partitions, or whole tensors)."""
    total = 0
    for p in model.parameters():
        held = p.ds_tensor if hasattr(p, "ds_tensor") else p
        total += held.numel() * held.element_size()
    return total
