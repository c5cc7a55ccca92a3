"""MLflow tracking for the pipeline driver (rank 0 only): one parent run per pipeline, one nested run per stage.

Everything goes through an explicit `MlflowClient` bound to one tracking URI, never mlflow's global fluent
state, so several trackers (and tests with temp stores) do not leak into each other. mlflow and matplotlib
are imported lazily: importing this module, or using a disabled tracker, costs nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagelora_dist.config import RunConfig, TrackingConfig
from imagelora_dist.errors import ImageLoRAError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from imagelora_dist.selection import HeadSelection

# MLflow's server-side limits (mlflow.utils.validation); values beyond them are rejected, not truncated.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
MAX_PER_BATCH = 100

STAGE_TAG = "imagelora.stage"
ERROR_TAG = "imagelora.error"
PARENT_TAG = "mlflow.parentRunId"


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached or used; the CLI reports it in one line (exit 1)."""


def _absolute_sqlite(uri: str) -> str:
    # sqlite:///rel.db is relative to the working directory, which `ray job submit` changes; pin it now.
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    rest = uri[len(prefix) :]
    path, sep, query = rest.partition("?")
    if not path or path == ":memory:" or path.startswith("/"):
        return uri
    return prefix + str(Path(path).expanduser().resolve()) + sep + query


def sqlite_path(uri: str) -> Path | None:
    """The database file of a file-backed sqlite URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].partition("?")[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """cfg.uri, else $MLFLOW_TRACKING_URI, else sqlite:///<abs cwd>/mlruns.db; sqlite paths made absolute."""
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri.strip():
        return "sqlite:///" + str(Path("mlruns.db").resolve())
    return _absolute_sqlite(uri.strip())


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast with TrackingUnavailable if the store behind `uri` cannot be used."""
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        _check_http(uri, timeout)
    elif scheme == "sqlite":
        path = sqlite_path(uri)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TrackingUnavailable(
                    f"MLflow sqlite store {path} cannot be created ({exc}); set tracking.uri"
                ) from None
    elif scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        # MLflow 3.17 refuses the file store deep inside the first call; say so before any work.
        raise TrackingUnavailable(
            f"MLflow tracking URI {uri!r} is a file store, which MLflow 3.17 no longer accepts; "
            "use sqlite:///path/mlruns.db (or set MLFLOW_ALLOW_FILE_STORE=true)"
        )


def _check_http(uri: str, timeout: float) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http(s) only)
            resp.read(64)
        return
    except urllib.error.HTTPError as exc:
        # Any answer below 500 (e.g. 401 from an auth proxy) means a server is there; 5xx is a dead backend.
        if exc.code < 500:
            return
        reason = f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        reason = str(exc.reason)
    except TimeoutError:
        reason = f"no answer within {timeout:g} s"
    except (OSError, ValueError) as exc:
        reason = str(exc)
    raise TrackingUnavailable(
        f"MLflow tracking server at {uri} is unreachable ({reason}); start it or set tracking.uri"
    )


def experiment_artifact_location(artifact_root: str, experiment: str, tracking_uri: str) -> str | None:
    """Where a new experiment's artifacts go: <root>/<experiment> for an s3:// root on any store or a local
    root on a sqlite store; None (the server's own default, e.g. its proxied store) otherwise."""
    root = artifact_root.strip()
    if root.lower().startswith("s3://"):
        return f"{root.rstrip('/')}/{experiment}"
    if sqlite_path(tracking_uri) is None:
        return None
    # MLflow's default for a sqlite store is ./mlruns/<id> relative to the cwd of whoever created it; keep
    # artifacts in one absolute place instead.
    local = Path(urllib.parse.urlparse(root).path) if root.lower().startswith("file://") else Path(root)
    return (local.expanduser().resolve() / experiment).as_uri()


def check_artifact_credentials(artifact_root: str) -> None:
    """One error line when an s3:// artifact root has no credentials for this process to write with."""
    root = artifact_root.strip()
    if not root.lower().startswith("s3://"):
        return
    import boto3

    # boto3's own chain: AWS_* variables, AWS_PROFILE / ~/.aws, web identity (IRSA), the instance's role.
    if boto3.Session().get_credentials() is None:
        raise ImageLoRAError(
            f"tracking.artifact_root: {root} needs S3 credentials and this process has none: set "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a non-AWS store), "
            "AWS_PROFILE, or give the node a role; or log through a tracking server with --serve-artifacts"
        )


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {dotted.key: str}; lists as JSON; values cut to MLflow's param limit."""
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=f"{name}."))
            continue
        if isinstance(value, list | tuple):
            text = json.dumps(list(value), default=str)
        elif value is None:
            text = "None"
        else:
            text = str(value)
        out[name] = text[:MAX_PARAM_LENGTH]
    return out


def _chunks(items: list[Any], size: int = MAX_PER_BATCH) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# The MLflow UI opens an experiment on its runs (not the GenAI traces view) when it is tagged as model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def run_display_name(cfg: RunConfig) -> str:
    """The pipeline run's name: the config's name, with the method when the name does not say it already (two
    runs of one config with different train.method are told apart in the runs list)."""
    method = cfg.train.method
    said = method.replace("_", "-") in cfg.name.replace("_", "-")
    return cfg.name if said else f"{cfg.name}-{method}"


class Tracker:
    """MLflow runs for one pipeline; with tracking disabled every method is a no-op."""

    def __init__(self, cfg: RunConfig) -> None:
        """Bind to the config's tracking store; nothing is contacted until a run starts."""
        self.cfg = cfg
        self.enabled = cfg.tracking.enabled
        self.uri = resolve_tracking_uri(cfg.tracking)
        self.experiment_name = cfg.tracking.experiment or cfg.name
        self.experiment_id: str | None = None
        self._client: MlflowClient | None = None
        # Innermost last: metrics and artifacts go to the stage run while one is open.
        self._stack: list[str] = []

    @property
    def run_id(self) -> str | None:
        """The innermost open run (stage, else pipeline), or None."""
        return self._stack[-1] if self._stack else None

    @property
    def client(self) -> MlflowClient:
        """The MlflowClient bound to this tracker's URI (created on first use)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def check_reachable(self, timeout: float = 5.0) -> None:
        """Raise TrackingUnavailable within about `timeout` s if the tracking store cannot be used; an
        s3:// artifact root without credentials raises ImageLoRAError (before any work, not at the first
        upload after the probe)."""
        if self.enabled:
            check_tracking_uri(self.uri, timeout)
            check_artifact_credentials(self.cfg.tracking.artifact_root)

    def _ensure_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        client = self.client
        exp = client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            location = experiment_artifact_location(
                self.cfg.tracking.artifact_root, self.experiment_name, self.uri
            )
            try:
                exp_id = client.create_experiment(self.experiment_name, artifact_location=location)
                client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
                return exp_id
            except MlflowException:
                # Another driver may have created it between our lookup and create.
                exp = client.get_experiment_by_name(self.experiment_name)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            raise ImageLoRAError(
                f"MLflow experiment {self.experiment_name!r} is deleted; restore it "
                f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or set tracking.experiment"
            )
        if EXPERIMENT_KIND_TAG not in (exp.tags or {}):  # an experiment made elsewhere: a user's kind wins
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        return exp.experiment_id

    def _start(self, name: str, tags: Mapping[str, str], parent: str | None) -> str:
        from mlflow.tracking.context.registry import resolve_tags

        all_tags = {k: str(v)[:MAX_TAG_LENGTH] for k, v in tags.items()}
        if parent is not None:
            all_tags[PARENT_TAG] = parent
        # Same default tags (user, source) as mlflow.start_run, so the UI shows the runs alike.
        run = self.client.create_run(self.experiment_id, tags=resolve_tags(all_tags), run_name=name)
        return run.info.run_id

    @contextlib.contextmanager
    def _run(self, name: str, tags: Mapping[str, str], parent: str | None) -> Iterator[str]:
        run_id = self._start(name, tags, parent)
        self._stack.append(run_id)
        status = "FINISHED"
        try:
            yield run_id
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            with contextlib.suppress(Exception):
                self.client.set_tag(run_id, ERROR_TAG, f"{type(exc).__name__}: {exc}"[:MAX_TAG_LENGTH])
            raise
        finally:
            self._stack.remove(run_id)
            if status == "FINISHED":
                self.client.set_terminated(run_id, status=status)
            else:
                # The body's exception is the one to report, not a store that went away with it.
                with contextlib.suppress(Exception):
                    self.client.set_terminated(run_id, status=status)

    @contextlib.contextmanager
    def pipeline_run(
        self, params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None
    ) -> Iterator[str | None]:
        """Parent run named by `run_display_name` with the flattened config + `params` as params; FAILED on
        exception."""
        if not self.enabled:
            yield None
            return
        if self._stack:
            raise RuntimeError(f"a pipeline run ({self._stack[0]}) is already open on this tracker")
        self.check_reachable()
        self.experiment_id = self._ensure_experiment()
        with self._run(run_display_name(self.cfg), dict(tags or {}), parent=None) as run_id:
            merged = flatten(self.cfg.model_dump(mode="json"))
            merged.update(flatten(dict(params or {})))
            self.log_params(merged)
            yield run_id

    @contextlib.contextmanager
    def stage_run(self, stage: str) -> Iterator[str | None]:
        """Nested run named `stage` (tag imagelora.stage) under the open pipeline run."""
        if not self.enabled:
            yield None
            return
        if not self._stack:
            raise RuntimeError(f"stage_run({stage!r}) needs an open pipeline_run")
        with self._run(stage, {STAGE_TAG: stage}, parent=self._stack[0]) as run_id:
            yield run_id

    def _active(self) -> str | None:
        if not self.enabled:
            return None
        if not self._stack:
            raise RuntimeError("no open MLflow run: call inside Tracker.pipeline_run()")
        return self._stack[-1]

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metrics to the innermost open run (NaN/inf are kept; MLflow stores them)."""
        run_id = self._active()
        if run_id is None or not metrics:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()]
        for chunk in _chunks(entries, 1000):
            self.client.log_batch(run_id, metrics=chunk, synchronous=True)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (nested dicts flattened, values cut to 6000 chars) to the innermost open run."""
        run_id = self._active()
        if run_id is None or not params:
            return
        from mlflow.entities import Param

        entries = [Param(k, v) for k, v in flatten(params).items()]
        for chunk in _chunks(entries):
            self.client.log_batch(run_id, params=chunk, synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values as strings) on the innermost open run."""
        run_id = self._active()
        if run_id is None or not tags:
            return
        from mlflow.entities import RunTag

        entries = [RunTag(k, str(v)[:MAX_TAG_LENGTH]) for k, v in tags.items()]
        for chunk in _chunks(entries):
            self.client.log_batch(run_id, tags=chunk, synchronous=True)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy a file or directory into the innermost open run's artifacts."""
        run_id = self._active()
        if run_id is None:
            return
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path=artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)

    def log_dict(self, d: Mapping[str, Any], artifact_file: str) -> None:
        """Write a dict as a JSON/YAML artifact (by extension) of the innermost open run."""
        run_id = self._active()
        if run_id is None:
            return
        self.client.log_dict(run_id, dict(d), artifact_file)

    def log_table(self, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
        """A table artifact (MLflow's own format: the UI shows it as a table) of the innermost open run."""
        run_id = self._active()
        if run_id is None:
            return
        self.client.log_table(run_id, dict(columns), artifact_file)


# The step-metric relay (rank 0 -> MLflow): values held while the store is slow or down (~1 h of steps at
# 1 step/s and 5 metrics a step), and how long the end of training waits for the rest to be written.
RELAY_BACKLOG = 20_000
RELAY_CLOSE_S = 15.0
RELAY_MAX_BACKOFF_S = 30.0


def _permanent(exc: BaseException) -> bool:
    # A 4xx answer (bad value, deleted run) fails the same way on every try; 5xx, timeouts, refused
    # connections may pass later.
    status = getattr(exc, "get_http_status_code", lambda: 500)()
    return isinstance(status, int) and 400 <= status < 500


class MetricRelay:
    """Step metrics on their way to one MLflow run, bounded in memory and time: `put` never waits (a fixed
    backlog, the oldest values dropped first when full), a thread writes them in batches (log_batch, up to
    `batch` values a call) and backs off while the store fails, and `close` gives up after its timeout
    even when a call hangs. Every value not written is counted; `summary` says so in one line."""

    def __init__(
        self,
        client: Any,
        run_id: str,
        backlog: int = RELAY_BACKLOG,
        batch: int = 1000,
        backoff_s: float = 1.0,
    ) -> None:
        """Start the writer thread for `run_id` on `client` (an MlflowClient)."""
        self.client, self.run_id, self.backlog, self.batch, self.backoff_s = (
            client,
            run_id,
            backlog,
            batch,
            backoff_s,
        )
        self._queue: deque[Any] = deque()
        self._inflight = 0
        self._cond = threading.Condition()
        self._closing = self._abandoned = False
        self.received = self.sent = self.calls = 0
        self.dropped_full = self.dropped_rejected = self.unsent = 0
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="mlflow-metric-relay", daemon=True)
        self._thread.start()

    def put(self, step: int, timestamp_ms: int, metrics: Mapping[str, float]) -> None:
        """Queue one step's values; never blocks on the store."""
        from mlflow.entities import Metric

        with self._cond:
            if self._closing:
                return
            for key, value in metrics.items():
                self._queue.append(Metric(key, float(value), int(timestamp_ms), int(step)))
            self.received += len(metrics)
            while len(self._queue) > self.backlog:
                self._queue.popleft()
                self.dropped_full += 1
            self._cond.notify()

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._abandoned or not self._queue:
                    return
                chunk = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
                self._inflight = len(chunk)
            try:
                self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)
                ok, permanent = True, False
            except Exception as exc:  # noqa: BLE001 - counted and reported once; training goes on
                ok, permanent = False, _permanent(exc)
                self.error = self.error or f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            with self._cond:
                self._inflight = 0
                self.calls += 1
                if ok:
                    self.sent += len(chunk)
                    failures = 0
                    continue
                if permanent:
                    self.dropped_rejected += len(chunk)
                    continue
                if self._abandoned:
                    return
                # Put the values back in front (still oldest-first for the backlog's bound) and back off.
                self._queue.extendleft(reversed(chunk))
                while len(self._queue) > self.backlog:
                    self._queue.popleft()
                    self.dropped_full += 1
                failures += 1
                self._cond.wait(min(self.backoff_s * 2 ** (failures - 1), RELAY_MAX_BACKOFF_S))

    def close(self, timeout: float = RELAY_CLOSE_S) -> None:
        """Write what is queued for at most `timeout` s, then count the rest as unsent and stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            self._abandoned = True  # a call that hangs past the timeout: its values count as unsent
            self.unsent = len(self._queue) + self._inflight
            self._queue.clear()
            self._cond.notify_all()

    def summary(self) -> str | None:
        """One line on what did not reach MLflow (None when everything did)."""
        lost = self.dropped_full + self.dropped_rejected + self.unsent
        if not lost and not self.error:
            return None
        return (
            f"{lost} of {self.received} step metric values did not reach MLflow ({self.dropped_full} dropped "
            f"oldest-first from a full backlog of {self.backlog}, {self.dropped_rejected} rejected, "
            f"{self.unsent} unsent when training ended); first error: {self.error or 'none'}"
        )


def selection_heatmap(selection: HeadSelection, path: str | os.PathLike) -> Path:
    """PNG of probe scores (layers x KV heads) with the selected heads boxed; written atomically."""
    # Figure + Agg canvas directly instead of pyplot: no global backend state, safe in any thread.
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    layers, hkv = selection.num_layers, selection.hkv
    mask = np.zeros((layers, hkv), dtype=bool)
    for layer, heads in selection.kv_indices.items():
        mask[layer, heads] = True

    fig = Figure(figsize=(min(2.5 + 0.45 * hkv, 24.0), min(1.6 + 0.28 * layers, 40.0)), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if selection.scores is not None:
        data = np.asarray(selection.scores, dtype=np.float64).reshape(layers, hkv)
        finite = data[np.isfinite(data)]
        positive = finite[finite > 0]
        label = "probe score"
        norm: Normalize
        if positive.size and positive.max() / positive.min() > 100:
            # Squared-gradient scores span orders of magnitude; linear colour would show one hot cell.
            lo = float(positive.min())
            data = np.where(np.isfinite(data), np.maximum(data, lo), lo)
            norm = LogNorm(vmin=lo, vmax=float(positive.max()))
            label += " (log scale)"
        else:
            hi = float(finite.max()) if finite.size else 1.0
            lo = float(finite.min()) if finite.size else 0.0
            norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)
        image = ax.imshow(data, aspect="auto", cmap="viridis", norm=norm, interpolation="nearest")
        fig.colorbar(image, ax=ax, label=label)
        for layer, head in zip(*np.nonzero(mask), strict=True):
            # Black under white keeps the box visible on both ends of the colour map.
            for color, width in (("black", 2.6), ("white", 1.3)):
                ax.add_patch(
                    Rectangle(
                        (head - 0.42, layer - 0.42), 0.84, 0.84, fill=False, edgecolor=color, linewidth=width
                    )
                )
    else:
        ax.imshow(mask.astype(float), aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel("KV head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(hkv) if hkv <= 32 else range(0, hkv, max(1, hkv // 16)))
    ax.set_yticks(range(layers) if layers <= 48 else range(0, layers, max(1, layers // 24)))
    tau = "?" if selection.tau is None else f"{selection.tau:g}"
    ax.set_title(
        f"{selection.family or 'unknown family'} | probe {selection.probe_method or '?'} | "
        f"{selection.total_heads}/{layers * hkv} heads | tau={tau}",
        fontsize=9,
    )
    fig.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = [
    "MetricRelay",
    "TrackingUnavailable",
    "Tracker",
    "check_tracking_uri",
    "experiment_artifact_location",
    "flatten",
    "resolve_tracking_uri",
    "selection_heatmap",
    "sqlite_path",
]
