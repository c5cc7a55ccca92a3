"""Ray Train glue: a TorchTrainer whose workers run `train_worker` under DeepSpeed, with restarts.

Ray's storage is the only place checkpoints live: a local dir, a shared filesystem or an object-store
URI (s3://, gs://, abfs://, anything pyarrow opens; credentials from the usual environment variables).
Each worker writes its DeepSpeed files (rank 0 the adapter weights, every rank its optimizer shard)
to a node-local scratch dir and reports them under one checkpoint name; Ray merges them into
`<storage>/<name>-train/step-NNNNNN`. After a worker failure Ray restarts the group (FailureConfig),
every worker downloads the latest checkpoint and resumes; `--resume` reuses the same run directory.
The final checkpoint holds the adapter in its inference format, which the driver copies to
`<output_dir>/adapter`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray
import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, ScalingConfig
from ray.train import RunConfig as RayRunConfig
from ray.train.torch import TorchConfig, TorchTrainer

from imagelora_dist.config import RunConfig
from imagelora_dist.errors import ImageLoRAError, TrainingFailed
from imagelora_dist.faults import FAULT_MARKER_ENV
from imagelora_dist.train.loop import (
    CURSOR_FILE,
    FAULT_ENV,
    NAN_FAULT_ENV,
    TrainingDiverged,
    WorkerContext,
    check_resume_layout,
    load_deepspeed_template,
    train_worker,
)
from imagelora_dist.train.portable_state import PORTABLE_FILE


@ray.remote(num_cpus=0)
class _Outcome:
    """Where a worker leaves why it ended early (Ray Train's result only carries checkpointed reports)."""

    def __init__(self) -> None:
        self.message: str | None = None

    def diverged(self, message: str) -> None:
        self.message = self.message or message

    def get(self) -> str | None:
        return self.message


def train_storage(cfg: RunConfig) -> str:
    """Ray Train's storage for this run: an absolute local path or an object-store URI."""
    storage = cfg.train.storage
    if storage and "://" in storage:
        return storage.rstrip("/")
    return str(Path(storage or Path(cfg.output_dir) / "train").absolute())


def worker_range(cfg: RunConfig) -> int | tuple[int, int]:
    """Ray Train's `num_workers`: `train.workers`, or (min, max) for an elastic run (`train.min_workers`)."""
    t = cfg.train
    return t.workers if t.min_workers in (None, t.workers) else (t.min_workers, t.workers)


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


def check_stored_layout(cfg: RunConfig, storage: str, name: str, log: Callable[[str], None] = print) -> None:
    """Before any worker starts: a resume on another data layout needs the newest stored checkpoint's
    world-size-independent state (else every worker would fail on it, after Ray had retried the group
    train.max_failures times)."""
    fs, root = storage_filesystem(storage)
    found = fs.get_file_info(pafs.FileSelector(f"{root}/{name}", allow_not_found=True))
    steps = sorted((i.path for i in found if i.type == pafs.FileType.Directory and i.base_name.startswith("step-")),
                   reverse=True)  # fmt: skip
    for step in steps:
        try:
            with fs.open_input_stream(f"{step}/{CURSOR_FILE}") as f:
                saved = json.loads(f.read())
        except (FileNotFoundError, OSError, json.JSONDecodeError):
            continue  # written before cursor files, or incomplete: the workers check it themselves
        portable = fs.get_file_info(f"{step}/{PORTABLE_FILE}").type == pafs.FileType.File
        changes = check_resume_layout(saved, cfg, f"the checkpoint {step}", portable=portable)
        if changes:
            log(f"[train] resuming {Path(step).name} on another layout ({', '.join(changes)}): "
                f"from its {PORTABLE_FILE}")  # fmt: skip
        return


def clear_run(storage: str, name: str) -> None:
    """Delete a previous run's checkpoints (a fresh run must never resume from another run's state)."""
    fs, root = storage_filesystem(storage)
    path = f"{root.rstrip('/')}/{name}"
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def fetch_final_adapter(checkpoint: Checkpoint | None, dest: Path) -> Path:
    """Copy `<checkpoint>/adapter` from Ray's storage to `dest`, atomically (temp dir, then rename)."""
    if checkpoint is None:
        raise TrainingFailed("training finished without a checkpoint; no adapter to fetch")
    source = f"{checkpoint.path.rstrip('/')}/adapter"
    if checkpoint.filesystem.get_file_info(source).type != pafs.FileType.Directory:
        raise TrainingFailed(
            f"the final checkpoint {checkpoint.path} has no adapter/ (was the run cut short?)"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()  # pyarrow copies files into an existing local directory only
    pafs.copy_files(source, str(tmp), source_filesystem=checkpoint.filesystem,
                    destination_filesystem=pafs.LocalFileSystem())  # fmt: skip
    if not any(f.stat().st_size > 0 for f in tmp.glob("*.safetensors")):
        shutil.rmtree(tmp, ignore_errors=True)
        raise TrainingFailed(f"the adapter in {checkpoint.path} is empty")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def _restore(checkpoint: Checkpoint, scratch: Path) -> None:
    """Download Ray's latest checkpoint (every rank's files) into scratch and mark it as DeepSpeed's latest."""
    tag = Path(checkpoint.path.rstrip("/")).name
    checkpoint.to_directory(str(scratch / tag))
    if not any((scratch / tag).iterdir()):
        raise TrainingFailed(f"checkpoint {checkpoint.path} is empty; cannot resume from it")
    (scratch / "latest").write_text(tag)


def _worker_entry(config: dict[str, Any]) -> None:
    """train_loop_per_worker: run the loop; rank 0 logs each step to the MLflow `train` run."""
    import torch

    cfg = RunConfig.model_validate(config["cfg"])
    os.environ.update(config.get("fault_env") or {})  # fault-injection drills reach the workers
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(config["threads"])))
    # Node-local: on a cluster the ranks need not share a filesystem; Ray's storage is what they share.
    scratch = Path(tempfile.mkdtemp(prefix=f"imagelora-ckpt-r{rank}-"))
    restored = ray.train.get_checkpoint()
    if restored is not None:
        _restore(restored, scratch)
    mlflow_client = None
    if rank == 0 and config.get("mlflow_run_id"):
        from mlflow import MlflowClient

        mlflow_client = MlflowClient(config["mlflow_uri"])

    def report(metrics: dict[str, float], tag: str | None) -> None:
        if mlflow_client is not None:
            from mlflow.entities import Metric

            step, now = int(metrics["step"]), int(time.time() * 1000)
            mlflow_client.log_batch(
                config["mlflow_run_id"], metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
            )
        if tag is None:
            # Only checkpoints go through Ray: Ray Train drains each worker's result queue (one slot) once
            # per controller poll (2 s), so a report per step held every step to that pace (measured with
            # `pretrain-base`: ~2 s/step, 0.75 s without). Every rank skips the same steps; MLflow still
            # gets every step from rank 0.
            return
        # Every rank reports its own files under the same name; Ray merges them in the storage.
        ray.train.report(
            metrics, checkpoint=Checkpoint.from_directory(str(scratch / tag)), checkpoint_dir_name=tag
        )
        for old in scratch.glob("step-*"):  # uploaded: keep only the newest local copy
            if old.name != tag:
                shutil.rmtree(old, ignore_errors=True)

    try:
        train_worker(
            cfg,
            WorkerContext(rank, world, device),
            config["shards"],
            ckpt_dir=scratch,
            resume=restored is not None,
            report=report,
            ds_template=config["deepspeed"],
        )
    except TrainingDiverged as exc:
        # Every rank gets here at the same step (the finiteness check is global). Ending the worker
        # normally, with the reason as its last result, keeps Ray from spending train.max_failures on
        # restarts that would diverge again; run_training raises it.
        ray.get(config["outcome"].diverged.remote(str(exc)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_training(
    cfg: RunConfig,
    shards: str,
    *,
    resume: bool = False,
    mlflow_uri: str | None = None,
    mlflow_run_id: str | None = None,
    dest: Path | None = None,
) -> Any:
    """Run a TorchTrainer with `train.workers` workers, then copy the final adapter (for method `full`:
    the whole model) to `dest`, default `<output_dir>/adapter`; returns Ray Train's Result, raises
    TrainingFailed (one line per rank)."""
    storage, name = train_storage(cfg), run_name(cfg)
    if not resume:
        clear_run(storage, name)
    else:
        check_stored_layout(cfg, storage, name)
        if "://" not in storage:
            Path(storage).mkdir(parents=True, exist_ok=True)
    gpus = cfg.train.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    resources = {"CPU": cfg.train.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    outcome = _Outcome.remote()
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "shards": str(Path(shards).absolute()) if "://" not in shards else shards,
            "deepspeed": load_deepspeed_template(cfg),
            "threads": int(cfg.train.cpus_per_worker),
            "mlflow_uri": mlflow_uri,
            "mlflow_run_id": mlflow_run_id,
            "outcome": outcome,
            "fault_env": {
                k: os.environ[k] for k in (FAULT_ENV, NAN_FAULT_ENV, FAULT_MARKER_ENV) if k in os.environ
            },
        },
        scaling_config=ScalingConfig(
            num_workers=worker_range(cfg), use_gpu=gpus > 0, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        run_config=RayRunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise TrainingFailed(f"training failed: {failure_summary(exc)}") from exc
    finally:
        diverged = ray.get(outcome.get.remote())
        ray.kill(outcome)
    if diverged:
        raise TrainingDiverged(diverged)
    fetch_final_adapter(result.checkpoint, Path(dest or Path(cfg.output_dir) / "adapter").absolute())
    return result


def failure_summary(exc: BaseException) -> str:
    """One line per failed rank: the last line of its error (the exception type and message)."""

    def last_line(e: BaseException) -> str:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        return (lines[-1] if lines else type(e).__name__)[:300]

    failures = getattr(exc, "worker_failures", None)
    if failures:
        return "; ".join(f"rank {rank}: {last_line(e)}" for rank, e in sorted(failures.items()))
    return last_line(getattr(exc, "controller_failure", exc))
