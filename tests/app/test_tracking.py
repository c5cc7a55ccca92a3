"""MLflow tracking on a temp sqlite store: run tree, params, metrics, artifacts, failures, heatmap."""

from __future__ import annotations

import os

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import json  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from imagelora_dist.config import RunConfig, TrackingConfig, load_config  # noqa: E402
from imagelora_dist.errors import ImageLoRAError  # noqa: E402
from imagelora_dist.selection import HeadSelection, select_heads  # noqa: E402
from imagelora_dist.tracking import (  # noqa: E402
    Tracker,
    TrackingUnavailable,
    experiment_artifact_location,
    flatten,
    resolve_tracking_uri,
    selection_heatmap,
)

pytest.importorskip("mlflow")


def make_cfg(tmp_path: Path, **tracking) -> RunConfig:
    base = {"uri": f"sqlite:///{tmp_path}/mlruns.db", "artifact_root": str(tmp_path / "mlartifacts")}
    base.update(tracking)
    return RunConfig.model_validate({"name": "unit-run", "tracking": base})


def client_for(tracker: Tracker):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracker.uri)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(TrackingConfig()) == f"sqlite:///{tmp_path.resolve()}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert resolve_tracking_uri(TrackingConfig()) == "http://mlflow.example:5000"
    # cfg.uri wins over the environment; a relative sqlite path is pinned to the current directory.
    got = resolve_tracking_uri(TrackingConfig(uri="sqlite:///sub/x.db?timeout=5"))
    assert got == f"sqlite:///{tmp_path.resolve()}/sub/x.db?timeout=5"
    assert resolve_tracking_uri(TrackingConfig(uri="sqlite:////abs/x.db")) == "sqlite:////abs/x.db"


def test_artifact_root_is_a_local_path_or_s3(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sqlite, server = f"sqlite:///{tmp_path}/mlruns.db", "http://mlflow.example:5000"
    # s3:// roots hold the experiment's artifacts on any store (a trailing slash is not doubled).
    for root in ("s3://bucket/prefix", "s3://bucket/prefix/"):
        for uri in (sqlite, server):
            assert experiment_artifact_location(root, "exp", uri) == "s3://bucket/prefix/exp"
    # A local root: absolute, on a sqlite store only; a server keeps its own default (its proxied store).
    assert experiment_artifact_location("art", "exp", sqlite) == f"file://{tmp_path}/art/exp"
    assert (
        experiment_artifact_location(f"file://{tmp_path}/art", "exp", sqlite) == f"file://{tmp_path}/art/exp"
    )
    assert experiment_artifact_location("art", "exp", server) is None
    assert load_config(None, ["tracking.artifact_root= s3://b/p "]).tracking.artifact_root == "s3://b/p"
    for bad, needle in (("gs://b/p", "unsupported scheme 'gs://'"), ("s3://", "needs a bucket"),
                        ("s3:///p", "needs a bucket"), ("", "empty")):  # fmt: skip
        with pytest.raises(ImageLoRAError) as err:
            load_config(None, [f"tracking.artifact_root={bad}"])
        msg = str(err.value)
        assert "tracking.artifact_root" in msg and needle in msg and len(msg.splitlines()) == 1, msg


def test_an_s3_artifact_root_without_credentials_stops_before_any_work(tmp_path, monkeypatch):
    from imagelora_dist.tracking import check_artifact_credentials

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role lookup: nothing on the network
    tracker = Tracker(make_cfg(tmp_path, experiment="exp-creds", artifact_root="s3://b/p"))
    with pytest.raises(ImageLoRAError) as err:
        tracker.check_reachable()
    msg = str(err.value)
    assert msg.startswith("tracking.artifact_root: s3://b/p needs S3 credentials") and "\n" not in msg, msg
    check_artifact_credentials(str(tmp_path / "art"))  # a local root needs none
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    tracker.check_reachable()  # with them: no error


def test_flatten():
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": "x" * 7000, "f": (3,)})
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "d": "None", "e": "x" * 6000, "f": "[3]"}


def test_pipeline_and_stage_runs(tmp_path):
    from mlflow.entities import RunStatus

    cfg = make_cfg(tmp_path, experiment="exp-unit")
    tracker = Tracker(cfg)
    src = tmp_path / "note.txt"
    src.write_text("hello")
    with tracker.pipeline_run(params={"extra": {"k": 1}}, tags={"imagelora.method": "image_lora"}) as pid:
        tracker.log_metrics({"adapter_train_flops": 1.5e9})
        with tracker.stage_run("probe") as sid:
            assert tracker.run_id == sid
            for step in range(3):
                tracker.log_metrics({"probe_loss": 1.0 / (step + 1)}, step=step)
            tracker.log_artifact(src, artifact_path="notes")
            tracker.log_dict({"a": 1}, "probe/summary.json")
        assert tracker.run_id == pid
        tracker.set_tags({"imagelora.output_dir": "runs/x"})
        tracker.log_params({"late": 7})
    assert tracker.run_id is None

    client = client_for(tracker)
    exp = client.get_experiment_by_name("exp-unit")
    # Artifacts of experiments created on a sqlite store go under artifact_root/<experiment>, absolute.
    assert exp.artifact_location == (tmp_path / "mlartifacts" / "exp-unit").resolve().as_uri()
    parent = client.get_run(pid)
    assert parent.info.run_name == f"unit-run-{cfg.train.method}"  # the method visible in the runs list
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
    assert parent.info.status == RunStatus.to_string(RunStatus.FINISHED)
    assert parent.data.params["model.family"] == cfg.model.family
    assert parent.data.params["selection.budget"] == str(cfg.selection.budget)
    assert parent.data.params["data.synth.tasks"] == json.dumps(list(cfg.data.synth.tasks))
    assert parent.data.params["extra.k"] == "1" and parent.data.params["late"] == "7"
    assert parent.data.tags["imagelora.method"] == "image_lora"
    assert parent.data.tags["imagelora.output_dir"] == "runs/x"
    assert parent.data.metrics["adapter_train_flops"] == 1.5e9
    assert "mlflow.parentRunId" not in parent.data.tags

    child = client.get_run(sid)
    assert child.info.run_name == "probe"
    assert child.data.tags["mlflow.parentRunId"] == pid
    assert child.data.tags["imagelora.stage"] == "probe"
    assert child.info.status == "FINISHED"
    history = client.get_metric_history(sid, "probe_loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert {a.path for a in client.list_artifacts(sid)} == {"notes", "probe"}
    assert [a.path for a in client.list_artifacts(sid, "notes")] == ["notes/note.txt"]
    assert [a.path for a in client.list_artifacts(sid, "probe")] == ["probe/summary.json"]
    assert (tmp_path / "mlartifacts" / "exp-unit").is_dir()
    assert not (tmp_path / "mlruns").exists()


def test_failure_marks_runs_failed(tmp_path):
    tracker = Tracker(make_cfg(tmp_path))
    ids = {}
    with pytest.raises(ZeroDivisionError):
        with tracker.pipeline_run(params={}, tags={}) as pid:
            ids["parent"] = pid
            with tracker.stage_run("train") as sid:
                ids["stage"] = sid
                _ = 1 / 0
    client = client_for(tracker)
    for run_id in ids.values():
        run = client.get_run(run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags["imagelora.error"].startswith("ZeroDivisionError")
    # The experiment defaults to the config's name.
    assert (
        client.get_run(ids["parent"]).info.experiment_id
        == client.get_experiment_by_name("unit-run").experiment_id
    )
    # The tracker is usable again after a failure.
    with tracker.pipeline_run({}, {}) as pid:
        pass
    assert client.get_run(pid).info.status == "FINISHED"


def test_misuse_is_reported(tmp_path):
    tracker = Tracker(make_cfg(tmp_path))
    with pytest.raises(RuntimeError, match="pipeline_run"):
        with tracker.stage_run("probe"):
            pass
    with pytest.raises(RuntimeError, match="no open MLflow run"):
        tracker.log_metrics({"x": 1.0})


def test_disabled_tracker_is_a_noop(tmp_path):
    cfg = make_cfg(tmp_path, enabled=False, uri=f"http://127.0.0.1:{free_port()}")
    tracker = Tracker(cfg)
    tracker.check_reachable()
    with tracker.pipeline_run({"a": 1}, {"b": "c"}) as pid:
        assert pid is None
        with tracker.stage_run("probe") as sid:
            assert sid is None
            tracker.log_metrics({"x": 1.0}, step=1)
            tracker.log_params({"p": 1})
            tracker.set_tags({"t": 1})
            tracker.log_artifact(tmp_path / "missing.txt")
            tracker.log_dict({"a": 1}, "a.json")
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_fails_fast(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    tracker = Tracker(make_cfg(tmp_path, uri=uri))
    start = time.monotonic()
    with pytest.raises(
        TrackingUnavailable, match=r"MLflow tracking server at http://127\.0\.0\.1:\d+ is unreachable"
    ):
        tracker.check_reachable(timeout=2.0)
    with pytest.raises(TrackingUnavailable, match="start it or set tracking.uri"):
        with tracker.pipeline_run({}, {}):
            pytest.fail("body must not run")
    assert time.monotonic() - start < 5.0


def test_silent_server_times_out(tmp_path):
    # A socket that accepts connections but never answers: the check must give up at its timeout.
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        tracker = Tracker(make_cfg(tmp_path, uri=f"http://127.0.0.1:{srv.getsockname()[1]}"))
        start = time.monotonic()
        with pytest.raises(TrackingUnavailable, match="unreachable"):
            tracker.check_reachable(timeout=0.5)
        assert time.monotonic() - start < 3.0


def test_file_store_uri_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    tracker = Tracker(make_cfg(tmp_path, uri=str(tmp_path / "mlruns")))
    with pytest.raises(TrackingUnavailable, match="sqlite"):
        tracker.check_reachable()


def test_deleted_experiment_is_a_clear_error(tmp_path):
    tracker = Tracker(make_cfg(tmp_path, experiment="gone"))
    client = client_for(tracker)
    client.delete_experiment(client.create_experiment("gone"))
    with pytest.raises(ImageLoRAError, match="'gone' is deleted"):
        with tracker.pipeline_run({}, {}):
            pass


def read_png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def test_selection_heatmap(tmp_path):
    scores = [[10.0 ** (layer - head) for head in range(4)] for layer in range(6)]  # range 1e8 -> log
    sel = select_heads(scores, 8, tau=1.0, family="qwen2_5_vl", probe_method="rank1")
    out = selection_heatmap(sel, tmp_path / "plots" / "heads.png")
    assert out == tmp_path / "plots" / "heads.png"
    w, h = read_png_size(out)
    assert w > 200 and h > 200 and out.stat().st_size > 5000
    assert [p.name for p in out.parent.iterdir()] == ["heads.png"]  # no temp file left

    flat = select_heads([[1.0, 2.0], [3.0, 4.0]], 2, tau=0.0)  # linear colour, no family
    assert read_png_size(selection_heatmap(flat, tmp_path / "flat.png"))[0] > 100

    mask_only = HeadSelection(kv_indices={0: [1], 2: [0, 1]}, hkv=2, num_layers=3)
    path = selection_heatmap(mask_only, tmp_path / "mask.png")
    assert read_png_size(path)[0] > 100 and path.stat().st_size > 2000
