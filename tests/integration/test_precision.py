"""train.precision bf16 on CPU (the GPU path): a bf16 base, fp32 adapter masters trained and exported as
such, for Image-LoRA and the peft LoRA baseline under ZeRO-2 and ZeRO-3, then loaded and used."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from vlm_batches import image_batch

from imagelora_dist.config import load_config
from imagelora_dist.infer import attach_adapter
from imagelora_dist.models.build import build_model
from imagelora_dist.pipeline import ensure_train_shards
from imagelora_dist.train.in_process import train_in_process
from imagelora_dist.train.loop import deepspeed_config

pytestmark = pytest.mark.integration  # DeepSpeed runs


def _cfg(tmp_path, method: str, stage: int, precision: str = "bf16"):
    return load_config(None, [
        f"output_dir={tmp_path}", "data.synth.num_samples=8", "data.synth.samples_per_shard=4",
        "data.synth.workers=1", "train.workers=1", f"train.method={method}", f"train.deepspeed=zero{stage}",
        f"train.precision={precision}", "train.steps=2", "train.checkpoint_every=2", "train.micro_batch_size=2",
        "tracking.enabled=false",
    ])  # fmt: skip


def _tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()


def _spy_on_engine(monkeypatch) -> dict:
    """What the DeepSpeed engine's module holds of the frozen base on this rank, right after
    deepspeed.initialize: bytes (ZeRO-3: this rank's partition, `ds_tensor`) and dtypes."""
    import deepspeed

    held: dict = {}
    real = deepspeed.initialize

    def initialize(*args, **kwargs):
        out = real(*args, **kwargs)
        frozen = [p for p in out[0].module.parameters() if not p.requires_grad]
        local = [getattr(p, "ds_tensor", p) for p in frozen]
        held["frozen_bytes"] = sum(t.numel() * t.element_size() for t in local)
        held["frozen_dtypes"] = {t.dtype for t in local}
        return out

    monkeypatch.setattr(deepspeed, "initialize", initialize)
    return held


@pytest.mark.parametrize(
    "method, stage", [("image_lora_all", 3), ("image_lora_all", 2), ("lora", 2), ("lora", 3)]
)
def test_bf16_training_keeps_fp32_adapter_masters_and_exports_them(tmp_path, method, stage, monkeypatch):
    cfg = _cfg(tmp_path, method, stage)
    shards = ensure_train_shards(cfg, log=lambda m: None)
    dest = tmp_path / "adapter"
    held = _spy_on_engine(monkeypatch)
    metrics = train_in_process(cfg, shards, dest=dest, log=lambda m: None)
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    saved = _tensors(dest / "adapter_model.safetensors")
    assert saved and all(t.dtype == torch.float32 for t in saved.values()), {
        k: t.dtype for k, t in saved.items()
    }
    # Trained in fp32: the values are not bf16 roundings (DeepSpeed's bf16 mode would have cast them).
    moved = [t for t in saved.values() if t.abs().sum() > 0]
    assert any(not torch.equal(t, t.to(torch.bfloat16).float()) for t in moved)
    if method == "image_lora_all":
        gammas = [t for k, t in saved.items() if k.endswith("gamma")]
        assert gammas and all(g.item() != 0.01 and g.item() != 0.010009765625 for g in gammas)
    # Loaded into a bf16 base (as training ran it), the adapter changes image logits and keeps its fp32.
    model, processor = build_model(cfg.model.model_copy(update={"dtype": "bfloat16"}))
    # The frozen base as the engine held it while training, on this (only) rank: 2 bytes a parameter,
    # counted on this independently built model (fp32 would be 4: train.precision ignored).
    base_parameters = sum(p.numel() for p in model.parameters())
    assert held == {"frozen_bytes": 2 * base_parameters, "frozen_dtypes": {torch.bfloat16}}
    batch = image_batch(processor)
    batch = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in batch.items()}
    with torch.no_grad():
        base = model(**batch).logits.clone()
        adapted_model, _ = attach_adapter(model, dest)
        adapted = adapted_model(**batch).logits
    assert torch.isfinite(adapted).all() and not torch.equal(adapted, base)
    trainable = [
        p for n, p in adapted_model.named_parameters() if "lora" in n.lower() or n.endswith(".gamma")
    ]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)


def test_only_full_fine_tuning_uses_deepspeeds_bf16_mode(tmp_path):
    # DeepSpeed's bf16 mode casts the module to bf16 (keeping fp32 masters in the optimizer): right for
    # every parameter training, wrong for fp32 adapters beside a frozen bf16 base.
    for method, expected in (("image_lora", False), ("lora", False), ("full", True)):
        cfg = _cfg(tmp_path, method, 2)
        assert ("bf16" in deepspeed_config(cfg, 1, "bfloat16")) is expected, method
        assert "bf16" not in deepspeed_config(cfg, 1, "float32")
