"""The trainer without Ray: one DeepSpeed worker in this process, for a single GPU (or CPU) machine.

The same `train_worker` that Ray Train runs on every rank, at world size 1, with its checkpoints in a
scratch directory; at the end the final checkpoint's `adapter/` (for method `full`: the whole model plus
processor) is copied to `dest` atomically. For machines where a Ray cluster is not wanted or not installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from imagelora_dist.config import RunConfig
from imagelora_dist.errors import ImageLoRAError, TrainingFailed
from imagelora_dist.train.loop import WorkerContext, latest_checkpoint, train_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train_in_process(
    cfg: RunConfig,
    shards: str,
    *,
    dest: Path,
    log: Callable[[str], None] = print,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Train `cfg` on `shards` in this process (world size 1); the final adapter or model goes to `dest`.

    `on_step(metrics)` gets every optimizer step's metrics (e.g. to log them to MLflow)."""
    if cfg.train.workers != 1:
        raise ImageLoRAError(f"train.workers={cfg.train.workers}: training without Ray runs exactly 1 worker")
    # DeepSpeed's init_distributed reads the rendezvous from the environment: a one-rank group on loopback,
    # set only for this call (child processes started later must not inherit a port this process holds).
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "LOCAL_RANK": "0",
                  "WORLD_SIZE": "1"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in rendezvous}
    os.environ.update(rendezvous)
    had_group = torch.distributed.is_available() and torch.distributed.is_initialized()
    try:
        return _train(cfg, shards, dest=dest, log=log, on_step=on_step)
    finally:
        if not had_group and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # the group DeepSpeed made for this call: its port is freed
            _forget_deepspeed_groups()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _train(
    cfg: RunConfig,
    shards: str,
    *,
    dest: Path,
    log: Callable[[str], None],
    on_step: Callable[[dict[str, float]], None] | None,
) -> dict[str, float]:
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="imagelora-train-") as scratch:
        report = None if on_step is None else (lambda metrics, _tag: on_step(metrics))
        _, metrics = train_worker(cfg, WorkerContext(0, 1, device), shards, ckpt_dir=Path(scratch), log=log,
                                  report=report)  # fmt: skip
        tag = latest_checkpoint(Path(scratch))
        source = Path(scratch) / tag / "adapter" if tag else None
        if source is None or not source.is_dir():
            raise TrainingFailed(f"training finished without a final adapter in {scratch}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    return metrics


def _forget_deepspeed_groups() -> None:
    """Drop DeepSpeed's cached process groups once the group they were cloned from is destroyed.

    DeepSpeed keeps a clone of the world group (and the groups derived from it) in module globals; a
    second training in this process would reuse them and fail ("Group ... is not registered").
    """
    import sys

    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is None:
        return
    for name in ("_WORLD_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP", "_DATA_PARALLEL_GROUP",
                 "_MODEL_PARALLEL_GROUP", "_TENSOR_MODEL_PARALLEL_GROUP"):  # fmt: skip
        if hasattr(groups, name):
            setattr(groups, name, None)
