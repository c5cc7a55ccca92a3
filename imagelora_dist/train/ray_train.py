"""Ray Train glue: a TorchTrainer whose workers run `train_worker` under DeepSpeed, with restarts.

Ray's storage is the only place checkpoints live: a local dir, a shared filesystem or an object-store
URI (s3://, gs://, abfs://, anything pyarrow opens; credentials from the usual environment variables).
Each worker writes its DeepSpeed files (rank 0 the adapter weights, every rank its optimizer shard)
to a node-local scratch dir and reports them under one checkpoint name; Ray merges them into
`<storage>/<name>-train/step-NNNNNN`. After a worker failure Ray restarts the group (FailureConfig),
every worker downloads the latest checkpoint and resumes. The run directory records the train hash
of the config that wrote it (`RUN_RECORD`): the same run submitted again continues from its checkpoints,
another config is refused, and only `--restart` deletes them (`plan_storage`).
The final checkpoint holds the adapter in its inference format, which the driver copies to
`<output_dir>/adapter`.

Nothing a worker needs comes from the driver's disk: the head selection travels in the train loop's
config, and rank 0 sends its metrics to an actor on the driver's node that logs them to MLflow, so the
workers may run on nodes that share no filesystem with the driver (shards and storage then on an object
store).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray
import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, ScalingConfig
from ray.train import RunConfig as RayRunConfig
from ray.train.torch import TorchTrainer

from imagelora_dist.config import RunConfig
from imagelora_dist.data.drops import DataLossError
from imagelora_dist.errors import ImageLoRAError, TrainingFailed
from imagelora_dist.faults import FAULT_MARKER_ENV
from imagelora_dist.tracking import RELAY_BACKLOG, RELAY_CLOSE_S, MetricRelay
from imagelora_dist.train.collective import collective_torch_config
from imagelora_dist.train.loop import (
    CURSOR_FILE,
    FAULT_ENV,
    NAN_FAULT_ENV,
    TrainingDiverged,
    WorkerContext,
    check_resume_layout,
    load_deepspeed_template,
    load_selection,
    train_worker,
)
from imagelora_dist.train.portable_state import PORTABLE_FILE
from imagelora_dist.train.storage import (  # noqa: F401 - re-exported: tests and the probe import them here
    RUN_RECORD,
    clear_run,
    plan_storage,
    record_identity,
    run_identity,
    run_name,
    storage_filesystem,
    stored_steps,
    train_storage,
)

# Recovery drill: every rank pauses SECONDS right after reporting the checkpoint of step S, given
# "S:SECONDS" (a test kills a node in that window, once Ray has registered the checkpoint). A resumed
# group does not report that step again, so it pauses once. At a step with no checkpoint the pause comes
# after rank 0's metrics were sent, in a group that did not resume (the partition drill's redone steps).
PAUSE_ENV = "IMAGELORA_FAULT_TRAIN_PAUSE"
# Ray Train's wait for a worker group's resources, per try (its default, 60 s, where unset).
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
# MLflow's own per-call retries in the relay actor (the relay backs off and retries by itself).
RELAY_MLFLOW_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
# How long a restart's line waits for a lost node to be declared dead (Ray's default: ~15 s).
NODE_DEATH_WAIT_S = 30.0


@ray.remote(num_cpus=0)
class _Outcome:
    """The driver's side of a training run, pinned to the driver's node (`driver_side`): where a worker
    leaves why it ended early (Ray Train's result only carries checkpointed reports), and where rank 0
    sends its per-step metrics, which this actor logs to MLflow. Rank 0 may run on another node, which
    cannot reach a tracking store local to the driver (a `sqlite:///` file); this actor can. It also
    records on which node each rank of each worker group ran, so that a restart (or a failure) can say
    which node was lost, and holds the lines the driver logs about it."""

    def __init__(
        self,
        mlflow_uri: str | None = None,
        mlflow_run_id: str | None = None,
        where: str = "",
        backlog: int = RELAY_BACKLOG,
    ) -> None:
        self.message: str | None = None
        self.data_loss: str | None = None  # a rank's DataLossError line: ends the run, not retried
        self.relay: MetricRelay | None = None
        self.logged_through: int | None = None  # the last step whose metrics went to the relay
        if mlflow_uri and mlflow_run_id:
            from mlflow import MlflowClient

            # This actor's own process: MLflow's per-call retries (7, minutes of backoff by default) kept
            # short, the relay retries itself; a user's setting wins.
            for key, value in RELAY_MLFLOW_ENV.items():
                os.environ.setdefault(key, value)
            self.relay = MetricRelay(MlflowClient(mlflow_uri), mlflow_run_id, backlog=backlog)
        self.where = where  # the run's checkpoint directory in the storage
        self.groups: list[dict[int, str]] = []  # per worker-group start: rank -> node id
        self.first_restored: str | None = None  # the checkpoint the run's first group started from
        # Restarts not yet told: (deadline, the previous group, the checkpoint resumed from, new world size).
        self.restarts: list[tuple[float, dict[int, str], str | None, int]] = []

    def joined(self, rank: int, node_id: str, restored: str | None, world: int) -> None:
        """Record where `rank` runs. A rank seen again means Ray restarted the group: the driver will log
        what was lost and where the run resumed (`take_lines`)."""
        if not self.groups:
            self.first_restored = restored
        if not self.groups or rank in self.groups[-1]:
            self.groups.append({})
            if len(self.groups) > 1:
                # Ray may restart the group before the GCS has declared a lost node dead (5 missed health
                # checks): a restart is told once a node of the previous group is gone, or after this wait.
                self.restarts.append((time.monotonic() + NODE_DEATH_WAIT_S, self.groups[-2], restored, world))
        self.groups[-1][rank] = node_id

    @staticmethod
    def _lost(group: dict[int, str]) -> str:
        """'lost node <id8> (rank r)' for each node of `group` that is no longer alive ('' for none)."""
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        gone: dict[str, list[int]] = {}
        for rank, node in sorted(group.items()):
            if node not in alive:
                gone.setdefault(node, []).append(rank)
        return ", ".join(
            f"lost node {node[:8]} (rank{'s' * (len(r) > 1)} {', '.join(map(str, r))})"
            for node, r in gone.items()
        )

    def lost_now(self) -> tuple[str, int]:
        """(the lost nodes of the latest group, '' for none; how many restarts Ray made)."""
        return (self._lost(self.groups[-1]) if self.groups else ""), max(0, len(self.groups) - 1)

    def take_lines(self, final: bool = False) -> list[str]:
        """One line per restart not yet logged by the driver: what was lost and where the run resumed."""
        lines, waiting = [], []
        for deadline, group, restored, world in self.restarts:
            lost = self._lost(group)
            if not (lost or final or time.monotonic() > deadline):
                waiting.append((deadline, group, restored, world))
                continue
            cause = lost or "a worker failed (no node lost)"
            where = (
                f"resumed from {restored} in {self.where}"
                if restored
                else "restarted from step 0 (no checkpoint yet)"
            )
            lines.append(f"[train] {cause}; {where} on {world} worker{'s' * (world > 1)}")
        self.restarts = waiting
        return lines

    def resumed_from(self) -> str | None:
        """The checkpoint tag the run's first worker group resumed from (None: it started at step 0)."""
        return self.first_restored

    def diverged(self, message: str) -> None:
        self.message = self.message or message

    def lost_data(self, message: str | None = None) -> str | None:
        """Record a rank's data-loss line (the first counts); the line recorded so far."""
        self.data_loss = self.data_loss or message
        return self.data_loss

    def log_metrics(self, step: int, timestamp_ms: int, metrics: dict[str, float]) -> None:
        """Queue one step of rank 0's metrics for the MLflow `train` run: returns at once (the relay's
        thread writes them in batches), so the worker's calls never pile up behind a slow store."""
        if self.relay is None or (self.logged_through is not None and step <= self.logged_through):
            return  # a step redone after a restart from a checkpoint: its values were logged the first time
        self.logged_through = step
        self.relay.put(step, timestamp_ms, metrics)

    def get(self) -> str | None:
        return self.message

    def close_relay(self, timeout: float = RELAY_CLOSE_S) -> str | None:
        """Write the queued metrics for at most `timeout` s; one line on what did not reach MLflow, if any."""
        if self.relay is None:
            return None
        self.relay.close(timeout)
        return self.relay.summary()


def driver_side(
    mlflow_uri: str | None, mlflow_run_id: str | None, where: str = "", backlog: int = RELAY_BACKLOG
) -> Any:
    """An `_Outcome` actor on this driver's node: it must outlive any worker node, and only the driver's
    node surely reaches a tracking store that is local to it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    strategy = NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    return _Outcome.options(scheduling_strategy=strategy).remote(mlflow_uri, mlflow_run_id, where, backlog)


def _relay(outcome: Any, log: Callable[[str], None], stop: threading.Event) -> None:
    """Log the driver-side actor's lines as they come (a restart's line while training goes on): a
    worker's own output reaches the driver only where Ray forwards worker logs (log_to_driver)."""
    while True:
        stopping = stop.wait(1.0)
        with contextlib.suppress(ray.exceptions.RayError):
            for line in ray.get(outcome.take_lines.remote(final=stopping), timeout=30):
                log(line)
        if stopping:
            return


def start_retries(cfg: RunConfig, failures: int | None = None) -> int:
    """Ray Train's `controller_failure_limit`: how often a worker group that could not be placed within
    RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s) is tried again. Ray's default is forever (fixed workers
    after a lost node with no spare wait until one joins); here `failures` (default train.max_failures)
    tries, plus enough to cover ray.autoscale_wait_s on an autoscaling cluster."""
    timeout = float(os.environ.get(START_TIMEOUT_ENV) or 60)
    failures = cfg.train.max_failures if failures is None else failures
    return failures + math.ceil(cfg.ray.autoscale_wait_s / max(timeout, 1.0))


def placement_timed_out(exc: BaseException) -> bool:
    """True when Ray Train gave up placing a worker group (the cluster had no room within the tries)."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    return isinstance(getattr(exc, "controller_failure", None), WorkerGroupStartupTimeoutError)


def worker_range(cfg: RunConfig) -> int | tuple[int, int]:
    """Ray Train's `num_workers`: `train.workers`, or (min, max) for an elastic run (`train.min_workers`)."""
    t = cfg.train
    return t.workers if t.min_workers in (None, t.workers) else (t.min_workers, t.workers)


def check_stored_layout(cfg: RunConfig, storage: str, name: str, log: Callable[[str], None] = print) -> None:
    """Before any worker starts: a resume on another data layout needs the newest stored checkpoint's
    world-size-independent state (else every worker would fail on it, after Ray had retried the group
    train.max_failures times)."""
    fs, _ = storage_filesystem(storage)
    for step in stored_steps(storage, name):
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
    # Where this rank runs, for the driver's line when a node is lost (awaited: it must precede any failure).
    resumed = Path(restored.path.rstrip("/")).name if restored is not None else None
    node = ray.get_runtime_context().get_node_id()
    ray.get(config["outcome"].joined.remote(rank, node, resumed, world))
    pause_step, _, pause_s = os.environ.get(PAUSE_ENV, "").partition(":")
    # Rank 0's metrics go to the driver-side actor, which logs them to MLflow: this node may not reach the
    # tracking store (a sqlite file on the driver's disk). Not awaited: a step never waits for tracking.
    to_mlflow = rank == 0 and bool(config.get("mlflow_run_id"))
    sent: list[Any] = []  # the last metrics call: waited for before this worker ends (its calls run in order)

    def report(metrics: dict[str, float], tag: str | None) -> None:
        if to_mlflow:
            values = {k: float(v) for k, v in metrics.items()}
            sent[:] = [
                config["outcome"].log_metrics.remote(int(metrics["step"]), int(time.time() * 1000), values)
            ]
        if tag is None:
            if pause_step and int(metrics["step"]) == int(pause_step) and resumed is None:
                time.sleep(float(pause_s or 0))  # a drill's window after a step with no checkpoint (once)
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
        if pause_step and int(metrics["step"]) == int(pause_step):
            time.sleep(float(pause_s or 0))

    try:
        train_worker(
            cfg,
            WorkerContext(rank, world, device, selection=config.get("selection")),
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
    except DataLossError as exc:
        # Every rank stops at the same step (the drop counts are summed over ranks): a restart would read
        # the same shards and lose the same samples, so the line goes to the driver instead (exit 2).
        ray.get(config["outcome"].lost_data.remote(str(exc)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if sent:  # a worker that exits first could drop its calls still on the way
            with contextlib.suppress(ray.exceptions.RayError):
                ray.get(sent[-1])


def run_training(
    cfg: RunConfig,
    shards: str,
    *,
    resume: bool = False,
    restart: bool = False,
    identity: str | None = None,
    mlflow_uri: str | None = None,
    mlflow_run_id: str | None = None,
    dest: Path | None = None,
    log: Callable[[str], None] = print,
) -> Any:
    """Run a TorchTrainer with `train.workers` workers, then copy the final adapter (for method `full`:
    the whole model) to `dest`, default `<output_dir>/adapter`; returns Ray Train's Result (with
    `resumed_step`: the step this run started from), raises TrainingFailed (one line per rank).

    Checkpoints stored under the run's name are continued when they were written by the same config
    (`identity`, default `run_identity(cfg, shards)`); `restart` deletes them; see `plan_storage`."""
    storage, name = train_storage(cfg), run_name(cfg)
    identity = identity or run_identity(cfg, shards)
    how, newest = plan_storage(cfg, identity, resume=resume, restart=restart)
    if how == "resume":
        log(
            f"[train] {storage}/{name} holds checkpoints of this config ({identity}, newest {newest}): "
            "continuing from the latest Ray registered"
        )
        check_stored_layout(cfg, storage, name)
    else:
        if newest:
            log(f"[train] --restart: deleting the checkpoints in {storage}/{name} (newest {newest})")
        clear_run(storage, name)
    record_identity(storage, name, identity)
    gpus = cfg.train.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    resources = {"CPU": cfg.train.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    if "://" not in storage and sum(1 for n in ray.nodes() if n.get("Alive")) > 1:
        log(f"[train] train.storage {storage} is a local path on a multi-node cluster: every node must "
            "see it as the same shared filesystem (else use an object store, s3://...)")  # fmt: skip
    # Validated here, before any worker starts, and sent as content: workers on other nodes cannot read
    # the driver's output_dir.
    selection = load_selection(cfg)
    outcome = driver_side(mlflow_uri, mlflow_run_id, f"{storage}/{name}")
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "shards": str(Path(shards).absolute()) if "://" not in shards else shards,
            "deepspeed": load_deepspeed_template(cfg),
            "threads": int(cfg.train.cpus_per_worker),
            "mlflow_run_id": mlflow_run_id,
            "selection": selection.to_dict() if selection is not None else None,
            "outcome": outcome,
            "fault_env": {
                k: os.environ[k]
                for k in (FAULT_ENV, NAN_FAULT_ENV, FAULT_MARKER_ENV, PAUSE_ENV)
                if k in os.environ
            },
        },
        scaling_config=ScalingConfig(
            num_workers=worker_range(cfg), use_gpu=gpus > 0, resources_per_worker=resources
        ),
        torch_config=collective_torch_config(gpus),
        run_config=RayRunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(
                max_failures=cfg.train.max_failures, controller_failure_limit=start_retries(cfg)
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        ),
    )
    stop = threading.Event()
    relay = threading.Thread(target=_relay, args=(outcome, log, stop), daemon=True)
    relay.start()
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        lost, restarts = ray.get(outcome.lost_now.remote())
        raise TrainingFailed(
            f"training failed: {failure_cause(exc, cfg, lost, restarts)}; {kept_checkpoint(storage, name)}"
        ) from exc
    finally:
        stop.set()
        relay.join()
        diverged = ray.get(outcome.get.remote())
        data_loss = ray.get(outcome.lost_data.remote())
        # Bounded: the relay gives up after RELAY_CLOSE_S even when the tracking store hangs.
        tracking_lost = ray.get(outcome.close_relay.remote(RELAY_CLOSE_S), timeout=RELAY_CLOSE_S + 60)
        resumed = ray.get(outcome.resumed_from.remote())
        ray.kill(outcome)
    if tracking_lost:
        log(f"[train] WARNING: {tracking_lost}")
    if data_loss:
        raise DataLossError(data_loss)
    if diverged:
        raise TrainingDiverged(diverged)
    fetch_final_adapter(result.checkpoint, Path(dest or Path(cfg.output_dir) / "adapter").absolute())
    # Throughput counts only the steps this run trained (Result is a plain dataclass: one more field).
    result.resumed_step = int(resumed.rpartition("-")[2]) if resumed else 0
    return result


def failure_cause(exc: BaseException, cfg: RunConfig, lost: str, restarts: int) -> str:
    """Why a run failed, in words: the node lost with no restart left, the workers that could not be
    placed, else the last line of each failed rank's error."""
    limit = f"train.max_failures={cfg.train.max_failures}, {restarts} used"
    if placement_timed_out(exc):
        timeout = float(os.environ.get(START_TIMEOUT_ENV) or 60)
        return (f"the cluster has no room for {cfg.train.workers} training workers (waited {timeout:g} s, "
                f"{start_retries(cfg) + 1} times; a node lost with no spare? train.min_workers lets the run go "
                "on with fewer)")  # fmt: skip
    if lost:
        return f"{lost}, no restart left ({limit})"
    return f"{failure_summary(exc)} ({limit})"


def kept_checkpoint(storage: str, name: str) -> str:
    """Where the newest checkpoint stays for `--resume`, or that there is none."""
    try:
        steps = stored_steps(storage, name)
    except (OSError, ImageLoRAError):
        steps = []
    if not steps:
        return f"no checkpoint in {storage}/{name}"
    return (
        f"the last checkpoint, {Path(steps[0]).name}, stays in {storage}/{name} (--resume continues from it)"
    )


def failure_summary(exc: BaseException) -> str:
    """One line per failed rank: the last line of its error (the exception type and message)."""

    def last_line(e: BaseException) -> str:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        return (lines[-1] if lines else type(e).__name__)[:300]

    failures = getattr(exc, "worker_failures", None)
    if failures:
        return "; ".join(f"rank {rank}: {last_line(e)}" for rank, e in sorted(failures.items()))
    return last_line(getattr(exc, "controller_failure", exc))
