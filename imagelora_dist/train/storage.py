"""Where a training run's checkpoints live, and whose they are.

Ray Train keeps them under `<train.storage>/<name>-train/step-NNNNNN` (a local dir, a shared filesystem or
an object-store URI, read through pyarrow). Beside them `imagelora_run.json` records the train hash of the
config that wrote them, so that a resubmitted run decides on any storage, before a worker starts: the same
config continues from its newest checkpoint, another config stops with one line, and only `--restart`
deletes stored work (`plan_storage`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow.fs as pafs

from imagelora_dist.config import RunConfig
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.selection import config_hash
from imagelora_dist.train.loop import load_selection


def train_storage(cfg: RunConfig) -> str:
    """Ray Train's storage for this run: an absolute local path or an object-store URI."""
    storage = cfg.train.storage
    if storage and "://" in storage:
        return storage.rstrip("/")
    return str(Path(storage or Path(cfg.output_dir) / "train").absolute())


def run_name(cfg: RunConfig) -> str:
    """Ray Train's run name: the directory under the storage that holds the checkpoints."""
    return f"{cfg.name}-train"


def storage_filesystem(storage: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    if "://" not in storage:
        return pafs.LocalFileSystem(), storage
    try:
        return pafs.FileSystem.from_uri(storage)
    except (OSError, ValueError) as exc:  # unknown scheme, missing bucket name, no S3 support ...
        raise ImageLoRAError(f"train.storage: cannot open {storage!r}: {exc}") from None


def stored_steps(storage: str, name: str) -> list[str]:
    """The `step-N` checkpoint directories of run `name` in the storage (paths in its filesystem), newest
    first."""
    fs, root = storage_filesystem(storage)
    found = fs.get_file_info(pafs.FileSelector(f"{root}/{name}", allow_not_found=True))
    return sorted((i.path for i in found if i.type == pafs.FileType.Directory and i.base_name.startswith("step-")),
                  reverse=True)  # fmt: skip


def clear_run(storage: str, name: str) -> None:
    """Delete a previous run's checkpoints (only on `--restart`, or where no checkpoint is stored)."""
    fs, root = storage_filesystem(storage)
    path = f"{root.rstrip('/')}/{name}"
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


# Beside the checkpoints, in Ray's run directory: the identity of the config that wrote them.
RUN_RECORD = "imagelora_run.json"
# Train settings a resume may change (the checkpoint's portable state carries the run over to another
# layout) or that do not change what is trained: left out of the identity stored checkpoints are matched on.
RESUMABLE_KEYS = frozenset({
    "workers", "min_workers", "micro_batch_size", "grad_accum", "deepspeed", "checkpoint_every",
    "cpus_per_worker", "gpus_per_worker", "max_failures", "storage", "keep_checkpoints", "gradient_checkpointing",
})  # fmt: skip


def run_identity(cfg: RunConfig, data_id: str) -> str:
    """The train hash stored checkpoints are matched on: model, adapter, the train settings that change
    what is trained, the data (`data_id`: the pipeline's content hash, else the shard location) and the
    head selection's content."""
    selection = load_selection(cfg)
    return config_hash({
        "model": cfg.model.model_dump(), "adapter": cfg.adapter.model_dump(),
        "train": cfg.train.model_dump(exclude=set(RESUMABLE_KEYS)), "data": data_id,
        "selection": selection.to_dict() if selection is not None else None,
    })  # fmt: skip


def stored_identity(storage: str, name: str) -> str | None:
    """The train hash recorded with run `name`'s checkpoints (None: none recorded, or unreadable)."""
    fs, root = storage_filesystem(storage)
    try:
        with fs.open_input_stream(f"{root.rstrip('/')}/{name}/{RUN_RECORD}") as f:
            return str(json.loads(f.read())["train_hash"])
    except (FileNotFoundError, OSError, json.JSONDecodeError, KeyError, TypeError):
        return None


def record_identity(storage: str, name: str, identity: str) -> None:
    """Write RUN_RECORD beside the checkpoints: to a temp name, then moved (on S3 the PUT is atomic)."""
    fs, root = storage_filesystem(storage)
    folder = f"{root.rstrip('/')}/{name}"
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/.{RUN_RECORD}.{os.getpid()}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps({"train_hash": identity, "written": time.time()}).encode())
    fs.move(tmp, f"{folder}/{RUN_RECORD}")


def plan_storage(
    cfg: RunConfig, identity: str, *, resume: bool = False, restart: bool = False
) -> tuple[str, str | None]:
    """What a run does with the checkpoints stored under its name, decided before any worker starts:
    ('restart' | 'fresh' | 'resume', the newest stored step). Stored work is never deleted implicitly:
    checkpoints of this config are resumed, those of another config stop the run (ImageLoRAError) unless
    `restart` deletes them."""
    storage, name = train_storage(cfg), run_name(cfg)
    if resume and restart:
        raise ImageLoRAError(
            "--resume and --restart exclude each other: continue the stored run, or delete it"
        )
    steps = stored_steps(storage, name)
    newest = Path(steps[0]).name if steps else None
    if restart:
        return "restart", newest
    if not steps:
        return "fresh", None
    stored = stored_identity(storage, name)
    if stored == identity or (stored is None and resume):  # None: written before identities were recorded
        return "resume", newest
    if stored is None:
        what = "a config it did not record (an older version): --resume continues from them,"
    else:
        what = f"another config (train hash {stored}, this run {identity})" + (
            "; --resume continues only the same config" if resume else ""
        )
        what += ":"
    raise ImageLoRAError(
        f"train.storage: {storage}/{name} holds checkpoints (newest {newest}) of {what} "
        "--restart deletes them and starts over, or give this run another name= or train.storage="
    )
