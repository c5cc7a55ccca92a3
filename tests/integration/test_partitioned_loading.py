"""ZeRO-3 loads a checkpoint (`model.path`), or builds a tiny model, straight into each rank's partition:
with 2 ranks each holds about half the parameter bytes one rank does (measured per rank, logged as
metrics), and the adapter trained is the one an unpartitioned run trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from imagelora_dist.config import load_config
from imagelora_dist.models import build_tiny_vlm
from imagelora_dist.models.tiny import TinySize
from imagelora_dist.pipeline import ensure_train_shards
from imagelora_dist.plan import PlanRequest, make_plan
from imagelora_dist.train.ray_train import run_training

pytestmark = pytest.mark.integration  # Ray Train + DeepSpeed runs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A Qwen2.5-VL checkpoint directory of ~140 MB (fp32), loaded the way a real one is."""
    path = tmp_path_factory.mktemp("ckpt") / "model"
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0, size=TinySize(layers=6, hidden=768))
    model.save_pretrained(str(path))
    processor.save_pretrained(str(path))
    return path, sum(p.numel() * p.element_size() for p in model.parameters())


def _run(out: Path, ckpt: Path | None, **overrides):
    items = {
        "output_dir": str(out), **({"model.path": str(ckpt)} if ckpt else {}), "data.synth.num_samples": 4,
        "data.synth.samples_per_shard": 2, "data.synth.workers": 1, "data.shuffle_buffer": 0,
        "train.method": "image_lora_all", "train.steps": 2, "train.checkpoint_every": 2, "train.lr": 0.01,
        "train.micro_batch_size": 2, "tracking.enabled": False, **overrides,
    }  # fmt: skip
    cfg = load_config(None, [f"{k}={v}" for k, v in items.items()])
    result = run_training(cfg, ensure_train_shards(cfg, log=lambda m: None))
    assert result.error is None, result.error
    return result.metrics, load_file(str(out / "adapter" / "adapter_model.safetensors"))


def test_zero3_ranks_load_their_partition_and_train_the_same_adapter(local_ray, checkpoint, tmp_path):
    ckpt, whole_bytes = checkpoint
    one, one_adapter = _run(tmp_path / "one", ckpt, **{"train.workers": 1, "train.grad_accum": 2,
                                                        "train.deepspeed": "zero3"})  # fmt: skip
    two, two_adapter = _run(tmp_path / "two", ckpt, **{"train.workers": 2, "train.deepspeed": "zero3"})
    # One rank holds everything: the unpartitioned figure (and run) the two ranks are compared with.
    assert one["param_memory_gb"] == pytest.approx(whole_bytes / 2**30, rel=0.01)
    # Two ranks: each holds its half (ZeRO-3 pads partitions a little), never the whole model.
    assert 0.45 < two["param_memory_gb_max"] / one["param_memory_gb"] < 0.55
    assert two["param_memory_gb"] <= two["param_memory_gb_max"]
    # `imagelora-dist plan` predicts these figures from the checkpoint's config.json alone.
    config = json.loads((ckpt / "config.json").read_text())
    for gpus, measured in ((1, one["param_memory_gb"]), (2, two["param_memory_gb_max"])):
        plan = make_plan(
            PlanRequest(config=config, name="ckpt", gpus_per_node=gpus, zero=3, precision="fp32")
        )
        assert plan.train["base weights"] == pytest.approx(measured, rel=0.05), gpus
    assert two_adapter.keys() == one_adapter.keys()
    for key in two_adapter:
        assert torch.allclose(two_adapter[key], one_adapter[key], rtol=1e-3, atol=1e-5), key
    assert any(t.abs().sum() > 0 for k, t in one_adapter.items() if k.endswith(".B"))


def test_a_tiny_model_is_built_into_each_ranks_partition_with_the_same_weights(local_ray, tmp_path):
    # ZeRO-2 on one worker builds the tiny model whole: the unpartitioned reference. Under ZeRO-3 its
    # constructor runs inside zero.Init with the seeded weight init on gathered modules: each of 2 ranks
    # holds half, and training from those weights gives the reference's adapter.
    whole, whole_adapter = _run(tmp_path / "whole", None, **{"train.workers": 1, "train.grad_accum": 2,
                                                              "train.deepspeed": "zero2"})  # fmt: skip
    two, two_adapter = _run(tmp_path / "two", None, **{"train.workers": 2, "train.deepspeed": "zero3"})
    assert 0.45 < two["param_memory_gb_max"] / whole["param_memory_gb"] < 0.55
    assert two_adapter.keys() == whole_adapter.keys()
    for key in two_adapter:
        assert torch.allclose(two_adapter[key], whole_adapter[key], rtol=1e-3, atol=1e-5), key
