"""Building the base model under ZeRO-3 straight into each rank's partition (training, the ZeRO-3 probe and eval)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imagelora_dist.config import ModelConfig
from imagelora_dist.errors import ImageLoRAError


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


def build_rank_model(model_cfg: ModelConfig, ds_config: dict[str, Any]) -> tuple[nn.Module, Any, bool]:
    """This rank's configured model: (model, processor, whether ZeRO-3 partitioned it while building).

    Stage 3 and a checkpoint (`model.path`): load_partitioned, each rank reading only its partitions' bytes.
    Stage 3 and a tiny model: its constructor runs inside zero.Init, which partitions each module as soon as
    it is built; transformers' weight init, which runs after, then sees empty tensors, so each module's init
    runs on its gathered weights (one module at a time, rank 0's values kept): the same seeded weights, bit
    for bit, as a whole build. Otherwise (or a tiny family in WHOLE_TINY_FAMILIES) the model is built whole.
    `model_cfg.dtype` is the base's dtype here (`auto` resolved as build_model does)."""
    from imagelora_dist.models.build import build_model, resolved_dtype

    if int(ds_config["zero_optimization"]["stage"]) != 3 or (
        not model_cfg.path and model_cfg.family in WHOLE_TINY_FAMILIES
    ):
        model, processor = build_model(model_cfg)
        return model, processor, False
    if model_cfg.path:
        model, processor = load_partitioned(model_cfg, ds_config)
        return model, processor, True
    with (
        _gathered_weight_init(),
        import_deepspeed().zero.Init(
            config_dict_or_path=_loading_config(ds_config, resolved_dtype(model_cfg))
        ),
    ):
        model, processor = build_model(model_cfg)
    return model, processor, True


def _loading_config(ds_config: dict[str, Any], dtype: str) -> dict[str, Any]:
    loading = json.loads(json.dumps(ds_config))
    if dtype == "bfloat16":  # zero.Init casts what it partitions to the config's dtype: keep the base bf16
        loading["bf16"] = {"enabled": True}
    return loading


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


def load_partitioned(model_cfg: ModelConfig, ds_config: dict[str, Any]) -> tuple[nn.Module, Any]:
    """The checkpoint at `model_cfg.path` (local or `s3://`) as a ZeRO-3 model: (model, processor).

    Call inside an initialized torch.distributed group (deepspeed.init_distributed), on every rank of the
    ZeRO-3 group, with the stage-3 DeepSpeed config the model will run under. The skeleton is built under
    zero.Init without weight init; then each parameter's partition (`ds_tensor`) is filled from the bytes of
    that partition in the safetensors files, tensor by tensor, cast to the model's dtype (`model_cfg.dtype`,
    `auto` resolved). No rank ever reads, or holds, a whole tensor beyond the one module zero.Init builds at a
    time; buffers are small and read whole. The weights are bit for bit what from_pretrained loads."""
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config
    from transformers.models.auto.auto_factory import _get_model_class

    from imagelora_dist.models.build import apply_attn_implementation, local_metadata_dir, resolved_dtype
    from imagelora_dist.models.safetensors_ranges import CheckpointTensors
    from imagelora_dist.models.tiny import load_processor

    dtype_name = resolved_dtype(model_cfg)
    dtype = getattr(torch, dtype_name)
    loading = _loading_config(ds_config, dtype_name)
    meta_dir = local_metadata_dir(str(model_cfg.path))
    config = AutoConfig.from_pretrained(meta_dir, local_files_only=True)
    cls = _get_model_class(config, AutoModelForImageTextToText._model_mapping)
    config.dtype = dtype
    for sub in config.sub_configs:
        if getattr(config, sub, None) is not None:
            getattr(config, sub).dtype = dtype
    tensors = CheckpointTensors(str(model_cfg.path))
    keep = HfDeepSpeedConfig(loading)  # registered while referenced: get_init_context adds zero.Init
    try:
        with contextlib.ExitStack() as stack:
            for context in cls.get_init_context(dtype, False, False, None, config):
                stack.enter_context(context)
            stack.enter_context(_no_init_broadcast())
            model = cls(config)
        _fill_partitions(model, tensors)
        model.tie_weights()
    finally:
        tensors.close()
        del keep
        unset_hf_deepspeed_config()
    model.eval()
    try:
        if (Path(meta_dir) / "generation_config.json").is_file() and model.can_generate():
            model.generation_config = GenerationConfig.from_pretrained(meta_dir, local_files_only=True)
        processor = load_processor(meta_dir, config.model_type)
    finally:
        if meta_dir != str(model_cfg.path):  # the temp copy of a remote checkpoint's small files
            shutil.rmtree(meta_dir, ignore_errors=True)
    apply_attn_implementation(model, model_cfg)
    return model, processor


@contextlib.contextmanager
def _no_init_broadcast() -> Iterator[None]:
    """While open, zero.Init partitions each new parameter without first broadcasting it whole from rank 0:
    every partition is overwritten from the checkpoint, and the broadcast costs each rank a full copy of
    every tensor in transit (and the time of sending the whole model)."""
    from deepspeed.runtime.zero.partition_parameters import Init

    original = Init._zero_init_param

    def partition_only(self: Any, param: nn.Parameter) -> None:
        self._convert_to_deepspeed_param(param)
        param.partition()

    Init._zero_init_param = partition_only
    try:
        yield
    finally:
        Init._zero_init_param = original


def _checkpoint_keys(model: nn.Module, keys: list[str]) -> dict[str, str]:
    """Model state-dict key -> checkpoint key, with the renames from_pretrained applies (legacy layouts)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    expected = {k: True for k in model.state_dict()}
    out: dict[str, str] = {}
    for key in keys:
        renamed, converter = rename_source_key(
            key, renamings, converters, base_model_prefix=model.base_model_prefix, meta_state_dict=expected
        )
        if converter is not None:  # fused or split tensors: a partition would need several source tensors
            raise ImageLoRAError(
                f"{type(model).__name__}: checkpoint tensor {key} needs a weight conversion ({converter}); "
                "partitioned loading reads tensors as stored (convert the checkpoint with save_pretrained)"
            )
        if renamed in expected:
            out.setdefault(renamed, key)
    return out


def _fill_partitions(model: nn.Module, tensors: Any) -> None:
    """Copy each ZeRO-3 parameter's own flat range, and each persistent buffer whole, from the checkpoint."""
    import torch.distributed as dist

    source = _checkpoint_keys(model, list(tensors.entries))
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            key = source.get(name)
            if key is None:
                if name not in tied:
                    missing.append(name)
                continue
            entry = tensors.entries[key]
            shape = tuple(param.ds_shape) if hasattr(param, "ds_tensor") else tuple(param.shape)
            if entry.shape != shape:
                raise ImageLoRAError(f"{tensors.root}: {key} has shape {list(entry.shape)}, the model's "
                                     f"{name} {list(shape)}")  # fmt: skip
            if not hasattr(param, "ds_tensor"):  # ZeRO-3 keeps this one whole (not partitioned)
                param.copy_(tensors.read(key))
                continue
            part = param.ds_tensor.ds_numel
            start = part * dist.get_rank(group=param.ds_process_group)
            stop = min(start + part, param.ds_numel)
            held = max(0, stop - start)
            if held:
                param.ds_tensor[:held].copy_(tensors.read_flat(key, start, stop))
            param.ds_tensor[held:].zero_()  # the last partition's padding
        names = dict(model.named_parameters())
        for name, buffer in model.state_dict(keep_vars=True).items():
            if name in names or buffer is None or name not in source:
                continue
            buffer.copy_(tensors.read(source[name]).view(buffer.shape))
    if missing:
        raise ImageLoRAError(
            f"{tensors.root}: {len(missing)} weight(s) of the model are not in the checkpoint, e.g. {missing[:3]}"
        )
