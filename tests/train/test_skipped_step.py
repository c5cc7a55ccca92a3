"""A step with no usable sample moves nothing: DeepSpeed's AdamW (momentum, weight decay) is not called,
so the adapter and optimizer state after it equal those before it bit for bit, no loss is logged, and the
step is counted; with the default `data.max_dropped_fraction` (0) the same data stops the run in one line.

Runs `train_worker` (the real loop and DeepSpeed engine, one rank) in a subprocess, as tests/models/
test_speed.py does: DeepSpeed's process group must not outlive the test in pytest's own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from imagelora_dist.config import load_config
from imagelora_dist.data.reader import ShardReader
from imagelora_dist.data.shards import IMAGE_EXTENSIONS, read_shard_raw, write_shard

pytestmark = pytest.mark.integration  # DeepSpeed

SCRIPT = r"""
import json, os, socket, sys
os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); os.environ["MASTER_PORT"] = str(s.getsockname()[1])
from pathlib import Path
from safetensors import safe_open
from imagelora_dist.config import load_config
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.train.loop import WorkerContext, train_worker
out, shards = Path(sys.argv[1]), sys.argv[2]
base = [f"output_dir={out}", f"data.train={shards}", "data.shuffle_buffer=0", "train.method=image_lora_all",
        "train.steps=2", "train.checkpoint_every=1", "train.micro_batch_size=2", "train.lr=0.01",
        "tracking.enabled=false"]
reports, lines = [], []
cfg = load_config(None, [*base, "data.max_dropped_fraction=0.5"])
train_worker(cfg, WorkerContext(), shards, ckpt_dir=out / "allowed", log=lines.append,
             report=lambda m, tag: reports.append(m))
states = []
for tag in ("step-000001", "step-000002"):
    with safe_open(str(out / "allowed" / tag / "portable_state.safetensors"), framework="pt") as f:
        states.append(({k: f.get_tensor(k) for k in f.keys() if not k.startswith("rng/")}, f.metadata()))
(before, meta1), (after, meta2) = states
identical = {k: bool(before[k].equal(after[k])) for k in before}
try:
    train_worker(load_config(None, base), WorkerContext(), shards, ckpt_dir=out / "default", log=lambda m: None)
    error = None
except ImageLoRAError as exc:
    error = f"{type(exc).__name__}: {exc}"
print("RESULT", json.dumps({"reports": reports, "lines": lines, "identical": identical, "keys": sorted(before),
                            "optimizer_steps": [meta1["optimizer_step"], meta2["optimizer_step"]],
                            "cursor": json.loads(meta2["cursor"]), "error": error}))
"""


def test_a_step_without_usable_samples_leaves_adapter_and_optimizer_bit_identical(tmp_path):
    from imagelora_dist.pipeline import ensure_train_shards

    cfg = load_config(None, [f"output_dir={tmp_path}", "data.synth.num_samples=4", "data.synth.samples_per_shard=2",
                             "data.synth.workers=1"])  # fmt: skip
    shards = ensure_train_shards(cfg, log=lambda m: None)
    # Epoch 0 reads the shards in this order, one micro-batch of 2 each: break every image of the second.
    reader = ShardReader.from_path(shards, 2, seed=cfg.data.seed, shuffle_buffer=0)
    broken = reader.urls[reader.shard_order(0)[1]]
    samples = read_shard_raw(broken)
    for s in samples:
        (ext,) = [k for k in s if k in IMAGE_EXTENSIONS]
        s[ext] = b"\x89PNG\r\n\x1a\n not an image"
        s["json"] = json.loads(s["json"])
    write_shard(broken, samples)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), shards], capture_output=True, text=True,
                          timeout=600, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.split("RESULT", 1)[1])

    first, skipped = got["reports"]
    assert "loss" in first and first["step_skipped"] == 0.0 and first["dropped_undecodable"] == 0.0
    assert "loss" not in skipped and "grad_norm" not in skipped  # nothing was trained: nothing to log
    assert skipped["step"] == 2.0 and skipped["step_skipped"] == 1.0 and skipped["dropped_undecodable"] == 2.0
    assert skipped["dropped_fraction"] == 0.5
    assert "[train] step 2/2 skipped: no usable sample on any rank, dropped undecodable 2" in got["lines"]
    # Adapter weights and both Adam moments, whole: equal bit for bit before and after the skipped step.
    assert any(k.startswith("param/") for k in got["keys"]) and any(
        k.startswith("exp_avg/") for k in got["keys"]
    )
    assert got["identical"] and all(got["identical"].values()), got["identical"]
    assert got["optimizer_steps"] == ["1", "1"]  # DeepSpeed never stepped AdamW for step 2
    assert (got["cursor"]["run_read"], got["cursor"]["run_dropped"]) == (4, 2)
    # Default data.max_dropped_fraction=0: the same data stops the run at step 2, in one line.
    assert got["error"] == (
        "DataLossError: train step 2: 2 of the 4 samples read so far were dropped (undecodable 2); that is 50.0%, "
        "more than data.max_dropped_fraction=0 allows (raise it to accept the loss)"
    )
