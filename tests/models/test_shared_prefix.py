"""Shared-prefix packing is exact: a packed batch gives the unpacked batch's loss, logits and adapter gradients.

The reference is the unpacked batch (right-padded, each target its own row) through the same model with
the same Image-LoRA adapter: it never touches the packing code. fp32, every tiny family.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from vlm_batches import visual_mask

from imagelora_dist.adapter.image_lora import attach_image_lora
from imagelora_dist.data.collate import Sample, collate, image_content_digest
from imagelora_dist.data.packing import pack_batch, screen_groups
from imagelora_dist.data.screens import make_screen
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models.registry import resolve_model
from imagelora_dist.models.shared_prefix import SEGMENTS, attach_shared_prefix, check_shared_prefix_support
from imagelora_dist.models.tiny import TINY_FAMILIES, build_tiny_vlm

IGNORE = -100


def _samples() -> list[Sample]:
    a, b = make_screen(1), make_screen(2)
    return [
        Sample("Click the OK button", "(1, 2)", [a.image]),
        # the same question with another answer: the prefix must stop before the first answer token
        Sample("Click the OK button", "(640, 20)", [a.image]),
        Sample(b.instruction, b.answer, [b.image]),
        Sample("Open file", "(7, 7)", [b.image]),
        Sample("Where is the menu of this window?", "(5, 900)", [b.image]),
    ]


def _adapted(family: str, attn: str | None = None):
    model, processor = build_tiny_vlm(family)
    if attn is not None:
        model.set_attn_implementation(attn)
    spec = resolve_model(model)
    handle = attach_image_lora(model, None, rank=4, alpha=8)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B = 0 at init would leave A without gradient
        for module in handle.modules.values():
            module.B.normal_(0.0, 0.5, generator=gen)
            module.gamma.fill_(1.0)
    processor.tokenizer.padding_side = "right"  # positions of a right-padded row are its own
    return model, processor, spec, handle


def _batches(processor, spec, samples):
    unpacked = collate(processor, samples)
    keys = [image_content_digest(s.images[0]) for s in samples]
    packed, kept = pack_batch(
        unpacked, screen_groups(keys, 6), [1] * len(samples), torch.tensor(spec.visual_token_ids)
    )
    return unpacked, packed, kept


def _run(model, handle, inputs):
    """Loss, the logits that predict a label (row-major order), and the adapter's gradients."""
    model.zero_grad()
    out = model(**inputs)
    out.loss.backward()
    predicts = torch.zeros_like(inputs["labels"], dtype=torch.bool)
    predicts[:, :-1] = inputs["labels"][:, 1:] != IGNORE
    grads = [p.grad.clone() for p in handle.parameters()]
    return out.loss.detach(), out.logits.detach()[predicts], grads


def _assert_same(family, attn=None, sliding_window=None):
    model, processor, spec, handle = _adapted(family, attn)
    if sliding_window is not None:
        model.config.get_text_config().sliding_window = sliding_window
    model.eval()  # no dropout; gradients flow all the same
    unpacked, packed, _ = _batches(processor, spec, _samples())
    assert packed["input_ids"].shape[0] == 2  # two screens
    loss, logits, grads = _run(model, handle, unpacked)
    detach = attach_shared_prefix(model)
    try:
        p_loss, p_logits, p_grads = _run(model, handle, packed)
    finally:
        detach()
    torch.testing.assert_close(p_loss, loss, rtol=1e-5, atol=1e-5)
    assert logits.shape == p_logits.shape and logits.shape[0] == int((unpacked["labels"] != IGNORE).sum())
    torch.testing.assert_close(p_logits, logits, rtol=1e-4, atol=1e-4)
    assert all(float(g.abs().sum()) > 0 for g in grads)
    for g, p in zip(grads, p_grads, strict=True):
        torch.testing.assert_close(p, g, rtol=1e-4, atol=1e-4 * float(g.abs().max()))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_packed_loss_logits_and_adapter_grads_equal_unpacked(family):
    _assert_same(family)


def test_packed_equals_unpacked_with_eager_attention_and_sliding_layers():
    _assert_same("gemma3", "eager", sliding_window=48)  # narrower than the sequence


def test_vision_tower_runs_once_per_screen_and_visual_tokens_are_prefix_only():
    model, processor, spec, _ = _adapted("qwen2_vl")
    unpacked, packed, kept = _batches(processor, spec, _samples())
    assert kept == [0, 2]
    seen: list[int] = []
    model.model.visual.register_forward_hook(
        lambda m, a, kw, out: seen.append(len(kw["grid_thw"])), with_kwargs=True
    )
    attach_shared_prefix(model)
    with torch.no_grad():
        model(**packed)
        model(**unpacked)
    assert seen == [2, 5]
    visual = visual_mask(packed, spec)
    assert bool((packed[SEGMENTS][visual] == 0).all())
    per_screen = int(visual_mask(unpacked, spec)[0].sum())
    assert visual.sum(1).tolist() == [per_screen, per_screen]


def test_a_kernel_without_block_masks_is_refused_with_the_alternatives():
    config = SimpleNamespace(_attn_implementation="flash_attention_2", get_text_config=lambda: config)
    with pytest.raises(ImageLoRAError, match="eager.*targets_per_sample: 1"):
        check_shared_prefix_support(SimpleNamespace(config=config))


TRAIN_SCRIPT = r"""
import json, os, socket, sys
os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); os.environ["MASTER_PORT"] = str(s.getsockname()[1])
from pathlib import Path
from imagelora_dist.config import load_config
from imagelora_dist.data import collate
from imagelora_dist.selection import HeadSelection
from imagelora_dist.train.loop import WorkerContext, train_worker
out, shards = Path(sys.argv[1]), sys.argv[2]
HeadSelection({3: [0, 1], 5: [2]}, hkv=4, num_layers=6).to_json(out / "head_selection.json")
rows, pack = [], collate.pack_batch
def counting(batch, *a):
    packed, kept = pack(batch, *a)
    rows.append([len(batch["input_ids"]), len(packed["input_ids"])])
    return packed, kept
collate.pack_batch = counting
states, losses = {}, {}
for k in (1, 2):
    cfg = load_config(None, [f"output_dir={out}", f"data.train={shards}", "data.shuffle_buffer=0", "train.steps=3",
         "train.micro_batch_size=4", "train.checkpoint_every=100", "train.lr=0.01", "tracking.enabled=false",
         f"data.targets_per_sample={k}"])
    seen = []
    adapted, _ = train_worker(cfg, WorkerContext(), shards, ckpt_dir=out / f"k{k}", log=lambda m: None,
                              report=lambda m, tag: seen.append(m["loss"]))
    states[k], losses[k] = adapted.adapter_state(), seen
maxdiff = max(float((states[1][n] - states[2][n]).abs().max()) for n in states[1])
scale = max(float(states[1][n].abs().max()) for n in states[1])
print("RESULT", json.dumps({"maxdiff": maxdiff, "scale": scale, "losses": losses, "rows": rows}))
"""


@pytest.mark.integration  # DeepSpeed, in a subprocess as tests/models/test_speed.py runs it
def test_training_with_packed_targets_reaches_the_unpacked_adapter(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from imagelora_dist.config import load_config
    from imagelora_dist.data.shards import IMAGE_EXTENSIONS, read_shard_raw, write_shard
    from imagelora_dist.pipeline import ensure_train_shards

    cfg = load_config(None, [f"output_dir={tmp_path}", "data.synth.num_samples=4", "data.synth.samples_per_shard=2",
                             "data.synth.workers=1"])  # fmt: skip
    shards = ensure_train_shards(cfg, log=lambda m: None)
    for shard in sorted(Path(shards).glob("*.tar")):  # both targets of a shard on its first screenshot
        samples = read_shard_raw(shard)
        (ext,) = [k for k in samples[0] if k in IMAGE_EXTENSIONS]
        samples[1][ext] = samples[0][ext]
        for s in samples:
            s["json"] = json.loads(s["json"])
        write_shard(shard, samples)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(tmp_path), shards], capture_output=True,
                          text=True, timeout=600, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert got["rows"] == [[4, 2]] * 3  # packing ran (k=2 only), two screens per micro-batch
    assert got["losses"]["1"] == pytest.approx(got["losses"]["2"], rel=1e-5)
    assert got["maxdiff"] <= 1e-5 * got["scale"], got
