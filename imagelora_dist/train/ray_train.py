"""Ray Train glue: a TorchTrainer whose workers run `train_worker` under DeepSpeed, with restarts.

Checkpoints go to a directory every worker can reach (the run's storage: a local dir on one machine, a
shared filesystem or an object-store URI mounted by Ray's storage across nodes). After a worker failure
Ray restarts the group (FailureConfig) and every worker resumes from the latest checkpoint there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train import Checkpoint, FailureConfig, ScalingConfig
from ray.train import RunConfig as RayRunConfig
from ray.train.torch import TorchConfig, TorchTrainer

from imagelora_dist.config import RunConfig
from imagelora_dist.faults import FAULT_MARKER_ENV
from imagelora_dist.train.loop import (
    FAULT_ENV,
    WorkerContext,
    load_deepspeed_template,
    train_worker,
)


def train_storage(cfg: RunConfig) -> Path:
    """Where checkpoints and Ray Train's run directory live."""
    return Path(cfg.train.storage or Path(cfg.output_dir) / "train").absolute()


def _worker_entry(config: dict[str, Any]) -> None:
    """train_loop_per_worker: run the loop; rank 0 logs each step to the MLflow `train` run."""
    import torch

    cfg = RunConfig.model_validate(config["cfg"])
    os.environ.update(config.get("fault_env") or {})  # fault-injection drills reach the workers
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(config["threads"])))
    restarted = ray.train.get_checkpoint() is not None
    mlflow_client = None
    if rank == 0 and config.get("mlflow_run_id"):
        from mlflow import MlflowClient

        mlflow_client = MlflowClient(config["mlflow_uri"])

    def report(metrics: dict[str, float], tag: str | None) -> None:
        if mlflow_client is not None:
            from mlflow.entities import Metric

            step = int(metrics["step"])
            now = int(__import__("time").time() * 1000)
            mlflow_client.log_batch(
                config["mlflow_run_id"], metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
            )
        checkpoint = None
        if tag is not None and rank == 0:
            checkpoint = Checkpoint.from_directory(str(Path(config["ckpt_dir"]) / tag))
        ray.train.report(metrics, checkpoint=checkpoint)

    adapted, _ = train_worker(
        cfg,
        WorkerContext(rank, world, device),
        config["shards"],
        ckpt_dir=Path(config["ckpt_dir"]),
        resume=config["resume"] or restarted,
        report=report,
        ds_template=config["deepspeed"],
    )
    # Every rank calls save (ZeRO-3 gathers collectively); only rank 0's files are kept.
    final = Path(config["adapter_dir"])
    tmp = final.with_name(f".{final.name}.rank{rank}")
    adapted.save(tmp, {"method": cfg.train.method})
    if rank == 0:
        if final.exists():
            import shutil

            shutil.rmtree(final)
        os.replace(tmp, final)
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def run_training(
    cfg: RunConfig,
    shards: str,
    *,
    resume: bool = False,
    mlflow_uri: str | None = None,
    mlflow_run_id: str | None = None,
) -> Any:
    """Run a TorchTrainer with `train.workers` workers; returns Ray Train's Result."""
    storage = train_storage(cfg)
    ckpt_dir = storage / "ckpt"
    if not resume and ckpt_dir.exists():
        import shutil

        shutil.rmtree(ckpt_dir)  # a fresh run must not pick up another run's checkpoints
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    gpus = cfg.train.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    resources = {"CPU": cfg.train.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "shards": str(Path(shards).absolute()) if "://" not in shards else shards,
            "ckpt_dir": str(ckpt_dir),
            "adapter_dir": str(Path(cfg.output_dir).absolute() / "adapter"),
            "resume": resume,
            "deepspeed": load_deepspeed_template(cfg),
            "threads": int(cfg.train.cpus_per_worker),
            "mlflow_uri": mlflow_uri,
            "mlflow_run_id": mlflow_run_id,
            "fault_env": {k: os.environ[k] for k in (FAULT_ENV, FAULT_MARKER_ENV) if k in os.environ},
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.train.workers, use_gpu=gpus > 0, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        run_config=RayRunConfig(
            name=f"{cfg.name}-train",
            storage_path=str(storage / "ray"),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
        ),
    )
    return trainer.fit()
