"""The configured model: a tiny random VLM of a family, or a local checkpoint (`model.path`).

Every stage builds its model here (probe actors, training ranks, evaluation, inference), so a config
means the same weights, dtype and attention kernel wherever it runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from imagelora_dist.config import ModelConfig
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models.registry import family_for_model_type
from imagelora_dist.models.tiny import build_tiny_vlm, load_processor, load_vlm


def resolved_dtype(model_cfg: ModelConfig) -> str:
    """model.dtype with `auto` resolved: bf16 on GPU, fp32 on CPU."""
    if model_cfg.dtype != "auto":
        return model_cfg.dtype
    return "bfloat16" if torch.cuda.is_available() else "float32"


def training_dtype(model_cfg: ModelConfig, precision: str) -> str:
    """The frozen base's dtype while training: train.precision, with `auto` following model.dtype."""
    if precision == "auto":
        return resolved_dtype(model_cfg)
    return {"bf16": "bfloat16", "fp32": "float32"}[precision]


def _tiny(model_cfg: ModelConfig) -> tuple[torch.nn.Module, object]:
    return build_tiny_vlm(
        model_cfg.family,
        seed=model_cfg.seed,
        size=model_cfg.tiny_size(),
        split_digits=model_cfg.split_digits,
    )


def build_model(
    model_cfg: ModelConfig, device_map: str | dict | None = None
) -> tuple[torch.nn.Module, object]:
    """The configured model and processor: a local checkpoint if `model.path` is set, else a tiny one.
    `device_map` (a checkpoint only) places its weights over devices while loading (eval's device_map)."""
    dtype = getattr(torch, resolved_dtype(model_cfg))
    if device_map is not None and not model_cfg.path:
        raise ImageLoRAError("a device map needs a checkpoint (model.path); a tiny model loads on one device")
    if model_cfg.path:
        model, processor = load_vlm(model_cfg.path, dtype=dtype, device_map=device_map)
    else:
        model, processor = _tiny(model_cfg)
        model = model.to(dtype)
    apply_attn_implementation(model, model_cfg)
    return model, processor


def apply_attn_implementation(model: torch.nn.Module, model_cfg: ModelConfig) -> None:
    """Switch the model to `model.attn_implementation` unless it is `auto`; one error line if unavailable."""
    if model_cfg.attn_implementation == "auto":
        return
    try:
        model.set_attn_implementation(model_cfg.attn_implementation)
    except (ImportError, ValueError) as exc:
        raise ImageLoRAError(
            f"model.attn_implementation {model_cfg.attn_implementation!r} is not available here: "
            f"{str(exc).strip().splitlines()[0][:200]}"
        ) from None


def local_metadata_dir(path: str) -> str:
    """A local directory holding the checkpoint's small files (config, processor, generation config): the
    checkpoint itself when local; for a URI (`s3://...`) a temp copy of every file but the weights, whose
    bytes are read by range where they lie (models/safetensors_ranges.py)."""
    if "://" not in path:
        check_checkpoint_dir(path)
        return path
    import tempfile

    import pyarrow.fs as pafs

    try:
        fs, base = pafs.FileSystem.from_uri(path.rstrip("/"))
        infos = fs.get_file_info(pafs.FileSelector(base))
    except (OSError, ValueError) as exc:
        raise ImageLoRAError(f"model.path {path}: cannot list it ({exc})") from None
    local = Path(tempfile.mkdtemp(prefix="imagelora-ckpt-meta-"))
    for info in infos:
        if info.type == pafs.FileType.File and not info.base_name.endswith((".safetensors", ".bin", ".pt")):
            with fs.open_input_stream(info.path) as f:
                (local / info.base_name).write_bytes(f.read())
    check_checkpoint_dir(str(local))
    return str(local)


def skeleton_model(model_cfg: ModelConfig) -> tuple[torch.nn.Module, object]:
    """Model skeleton and processor for a process that only collates and counts: a real checkpoint is
    built on the meta device (no weights loaded); the tiny model is cheap to build for real."""
    if not model_cfg.path:
        return _tiny(model_cfg)
    from transformers import AutoConfig, AutoModelForImageTextToText

    check_checkpoint_dir(model_cfg.path)
    config = AutoConfig.from_pretrained(model_cfg.path, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return model, load_processor(model_cfg.path, config.model_type)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json")


def checkpoint_identity(path: str) -> str:
    """Names the weights in a checkpoint directory: config.json's content and the name, size and mtime of
    every weight and index file, so new weights at the same path never pass for the old (no GBs hashed)."""
    root = Path(path)
    h = hashlib.sha256()
    config = root / "config.json"
    h.update(config.read_bytes() if config.is_file() else b"no config")
    for file in sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
        stat = file.stat()
        h.update(f"\0{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def check_checkpoint_dir(path: str) -> None:
    """Fail in one line if `path` is not a local checkpoint of a supported family."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise ImageLoRAError(f"model.path {path}: not a model directory (no config.json)")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type", "")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise ImageLoRAError(f"{cfg_file}: unreadable ({exc})") from None
    family_for_model_type(str(model_type))
