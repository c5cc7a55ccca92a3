"""Reading runs back from MLflow: the queries `compare`, the study report and `infer` share.

The pipeline writes runs through imagelora_dist.tracking; everything that reads them (which runs an
experiment holds, a pipeline run's nested stage runs, a metric from the parent or its stages) is here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.tracking import PARENT_TAG, check_tracking_uri, sqlite_path

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient


def open_client(tracking_uri: str) -> MlflowClient:
    """An MLflow client of an existing store: a missing sqlite file or an unreachable server is an error."""
    path = sqlite_path(tracking_uri)
    if path is not None and not path.is_file():
        # Opening a missing sqlite file would create an empty store and then report "unknown experiment".
        raise ImageLoRAError(
            f"no MLflow store at {path} (tracking URI {tracking_uri}); "
            "run the pipeline first or pass the tracking URI"
        )
    check_tracking_uri(tracking_uri)  # an unreachable server: TrackingUnavailable
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(client: MlflowClient, experiment: str) -> str:
    """The id of the active experiment named `experiment`; an unknown name lists the ones there are."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments())
        raise ImageLoRAError(
            f"unknown MLflow experiment {experiment!r}; experiments: {', '.join(names) or '(none)'}"
        )
    return exp.experiment_id


def all_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Every run of the experiment, newest first (all result pages)."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], max_results=1000, order_by=["attributes.start_time DESC"], page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def children_by_parent(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Nested runs grouped under their parent's run id."""
    children: dict[str, list[Run]] = {}
    for run in runs:
        parent_id = run.data.tags.get(PARENT_TAG)
        if parent_id:
            children.setdefault(parent_id, []).append(run)
    return children


def descendants(run_id: str, children: dict[str, list[Run]]) -> list[Run]:
    """All runs nested (at any depth) under `run_id`, the most recently started first."""
    out: list[Run] = []
    todo = list(children.get(run_id, []))
    while todo:
        run = todo.pop()
        out.append(run)
        todo.extend(children.get(run.info.run_id, []))
    # Newest stage first, so "the latest value" is the one from the most recently started stage.
    out.sort(key=lambda r: r.info.start_time or 0, reverse=True)
    return out


def first_metric(names: Sequence[str], parent: Run, stages: Sequence[Run]) -> float | None:
    """The first of `names` logged by the parent run, else by its stages (newest first); None if none is."""
    for name in names:
        for run in (parent, *stages):
            if name in run.data.metrics:
                return run.data.metrics[name]
    return None
