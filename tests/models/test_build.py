"""models/build.py: a local checkpoint is named by its weights, not its path (caches and stage hashes)."""

from __future__ import annotations

import os

import torch

from imagelora_dist.config import load_config
from imagelora_dist.models import build_tiny_vlm
from imagelora_dist.models.build import checkpoint_identity, training_dtype
from imagelora_dist.speed import model_fingerprint


def test_new_weights_at_the_same_path_are_a_new_checkpoint(tmp_path):
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    path = tmp_path / "ckpt"
    model.save_pretrained(str(path))
    processor.save_pretrained(str(path))
    cfg = load_config(None, [f"model.path={path}"])
    first = checkpoint_identity(str(path))
    assert checkpoint_identity(str(path)) == first  # stable while nothing changes
    before = model_fingerprint(cfg, "float32")
    # Other weights written in place: same path, same config.json, same file name.
    build_tiny_vlm("qwen2_5_vl", seed=1)[0].save_pretrained(str(path))
    weights = path / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a coarse-clock filesystem
    assert checkpoint_identity(str(path)) != first
    assert model_fingerprint(cfg, "float32") != before  # the vision/prefix caches see a new model
    # Tiny models are named by family, seed, size and dtype: nothing on disk to look at.
    tiny = load_config(None, [])
    assert model_fingerprint(tiny, "float32") != model_fingerprint(tiny, "bfloat16")


def test_training_dtype_follows_precision_and_auto_follows_the_model_dtype():
    cfg = load_config(None, [])
    assert training_dtype(cfg.model, "bf16") == "bfloat16" and training_dtype(cfg.model, "fp32") == "float32"
    assert training_dtype(cfg.model, "auto") == ("bfloat16" if torch.cuda.is_available() else "float32")
    bf16_model = load_config(None, ["model.dtype=bfloat16"]).model
    assert training_dtype(bf16_model, "auto") == "bfloat16"
    assert "precision" not in cfg.train.model_dump()  # left out at auto: stage hashes stay as they were
