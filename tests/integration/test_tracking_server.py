"""The production tracking stack on one machine (issue 34 items 4 and 5): a real `mlflow server` (sqlite backend,
artifacts proxied to the moto S3 bucket, tests/mlflow_server.py) started once for the module.

* the pipeline's Tracker and the bounded MetricRelay write through the server: params, metrics (every step,
  in order), files, dicts, tables; the artifacts are in the bucket, byte for byte, and on no local disk;
* `tracking.artifact_root: s3://...` gives new experiments a bucket location on a sqlite store and on the
  server alike (clients then write the bucket themselves);
* an adapter is fetched by run id on a fresh machine: a new process with an empty HOME and working
  directory, given only MLFLOW_TRACKING_URI and the bucket's AWS_* variables, runs
  `infer --adapter mlflow://RUN_ID` and answers as the adapter loaded from its local directory does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow_server import mlflow_server

from imagelora_dist.config import load_config
from imagelora_dist.tracking import EXPERIMENT_KIND_TAG, MetricRelay, Tracker

pytestmark = pytest.mark.integration  # Ray clusters, DeepSpeed runs, servers: not in make test-fast

BUCKET = "mnode"  # conftest's s3_server
PROXIED = "proxied"  # the server's --artifacts-destination prefix
MAX_NEW = 6


@pytest.fixture(scope="module")
def server(s3_server, tmp_path_factory):
    """The tracking server for the module, its artifacts in s3://mnode/proxied."""
    with mlflow_server(
        tmp_path_factory.mktemp("mlflow-server"), s3_server, f"s3://{BUCKET}/{PROXIED}"
    ) as srv:
        yield srv


def _s3(env: dict[str, str]):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def _objects(env: dict[str, str], prefix: str) -> dict[str, bytes]:
    client = _s3(env)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return {k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def no_local_creds(monkeypatch, tmp_path):
    """This process with no MLFLOW_*/AWS_* variables and an empty working directory (returned)."""
    for key in list(os.environ):
        if key.startswith(("MLFLOW_", "AWS_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_tracker_and_relay_log_through_the_server_into_the_bucket(
    server, s3_server, no_local_creds, tmp_path
):
    cfg = load_config(
        None, [f"tracking.uri={server.uri}", "tracking.experiment=proxied", "train.method=lora"]
    )
    tracker = Tracker(cfg)
    files = tmp_path / "files"
    (files / "adapter").mkdir(parents=True)
    (files / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(3000))
    (files / "adapter" / "adapter_config.json").write_text('{"r": 4}')
    (files / "report.json").write_text('{"accuracy": 0.5}')
    n_steps = 37
    with tracker.pipeline_run(params={"extra": 1}) as parent_id:
        with tracker.stage_run("train") as train_id:
            relay = MetricRelay(tracker.client, train_id, batch=10)  # several log_batch calls
            for step in range(1, n_steps + 1):
                relay.put(step, 1_000 + step, {"loss": 1.0 / step, "lr": 1e-3 * step})
            relay.close()
            tracker.log_artifact(files / "adapter", "adapter")
        with tracker.stage_run("eval"):
            tracker.log_metrics({"accuracy": 0.5})
            tracker.log_artifact(files / "report.json", "eval")
            tracker.log_table({"id": [1, 2], "ok": [True, False]}, "eval/samples.json")
    assert relay.summary() is None and relay.sent == 2 * n_steps and relay.calls >= 8

    client = tracker.client
    exp = client.get_experiment_by_name("proxied")
    assert exp.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location
    parent = client.get_run(parent_id)
    assert parent.info.run_name == "tiny-default-lora" and parent.data.params["train.method"] == "lora"
    assert parent.data.params["extra"] == "1"
    history = client.get_metric_history(train_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (s, 1.0 / s) for s in range(1, n_steps + 1)
    ]

    # In the bucket, under the server's destination, byte for byte; readable back through the server.
    stored = _objects(s3_server, f"{PROXIED}/")
    by_name = {k.rsplit("/", 1)[-1]: v for k, v in stored.items()}
    for path in (files / "adapter" / "adapter_model.safetensors", files / "report.json"):
        assert by_name[path.name] == path.read_bytes(), sorted(stored)
    assert any(k.endswith(f"{train_id}/artifacts/adapter/adapter_config.json") for k in stored), sorted(
        stored
    )
    assert "samples.json" in by_name
    back = Path(client.download_artifacts(train_id, "adapter", str(tmp_path / "back")))
    assert (back / "adapter_model.safetensors").read_bytes() == by_name["adapter_model.safetensors"]
    # On no local disk: not where the client ran, not beside the server's database.
    assert _files(no_local_creds) == []
    assert _files(server.workdir) == ["mlflow.db", "server.log"], _files(server.workdir)


def test_s3_artifact_root_gives_new_experiments_a_bucket_location(
    server, s3_server, no_local_creds, monkeypatch
):
    for key, value in s3_server.items():  # the client writes the bucket itself now
        monkeypatch.setenv(key, value)
    for uri, experiment in (
        (f"sqlite:///{no_local_creds}/mlruns.db", "direct-sqlite"),
        (server.uri, "direct"),
    ):
        cfg = load_config(None, [f"tracking.uri={uri}", f"tracking.experiment={experiment}",
                                 f"tracking.artifact_root=s3://{BUCKET}/direct/"])  # fmt: skip
        tracker = Tracker(cfg)
        note = no_local_creds.parent / "note.txt"
        note.write_text(experiment)
        with tracker.pipeline_run() as run_id:
            tracker.log_artifact(note, "notes")
        note.unlink()
        exp = tracker.client.get_experiment_by_name(experiment)
        assert exp.artifact_location == f"s3://{BUCKET}/direct/{experiment}"
        stored = _objects(s3_server, f"direct/{experiment}/")
        assert stored == {f"direct/{experiment}/{run_id}/artifacts/notes/note.txt": experiment.encode()}
    assert _files(no_local_creds) == ["mlruns.db"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A tiny Image-LoRA adapter that changes answers, a screenshot, its instruction, and eval's greedy answer
    with the adapter loaded from its directory (the reference) and without it."""
    from PIL import Image

    from imagelora_dist.adapter.image_lora import attach_image_lora
    from imagelora_dist.adapter.io import load_adapter, save_adapter
    from imagelora_dist.config import RunConfig
    from imagelora_dist.data.screens import make_screen
    from imagelora_dist.eval import generate_answers
    from imagelora_dist.models import build_tiny_vlm, resolve_model

    root = tmp_path_factory.mktemp("adapter")
    screen = make_screen(7)
    image = root / "shot.png"
    screen.image.save(image)
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    handle = attach_image_lora(model, {1: [0, 2], resolve_model(model).num_layers - 1: [1]}, rank=4, alpha=8)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in handle.modules.values():
            m.B.copy_(torch.randn(m.B.shape, generator=gen))
            m.gamma.fill_(1.0)
    path = save_adapter(root / "adapter", handle, {"method": "image_lora"})
    handle.detach()
    decoded = [{"image": Image.open(image).convert("RGB"), "record": {"instruction": screen.instruction}}]
    kw = dict(max_new_tokens=MAX_NEW, max_pixels=RunConfig().data.max_pixels, batch_size=1)
    base = generate_answers(model, processor, decoded, **kw)[0]
    fresh, fresh_processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    load_adapter(fresh, path)
    expected = generate_answers(fresh, fresh_processor, decoded, **kw)[0]
    assert expected != base, "the adapter must change the answer"
    return {"dir": path, "image": image, "instruction": screen.instruction, "expected": expected}


def test_infer_fetches_an_adapter_by_run_id_on_a_fresh_machine(
    server, s3_server, adapter, tmp_path, monkeypatch
):
    # The run as the pipeline leaves it (adapter in the nested train run), in an experiment whose artifacts
    # live in the bucket itself, so the fresh process needs the object store's credentials too.
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    cfg = load_config(None, [f"tracking.uri={server.uri}", "tracking.experiment=fetch",
                             f"tracking.artifact_root=s3://{BUCKET}/direct"])  # fmt: skip
    tracker = Tracker(cfg)
    with tracker.pipeline_run() as parent_id:
        with tracker.stage_run("train"):
            tracker.log_artifact(adapter["dir"], "adapter")
    assert tracker.client.get_run(parent_id).info.artifact_uri.startswith(f"s3://{BUCKET}/direct/fetch/")

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "MLFLOW_TRACKING_URI": server.uri,
           **s3_server}  # fmt: skip
    cmd = [sys.executable, "-m", "imagelora_dist", "infer", "--adapter", f"mlflow://{parent_id}",
           "--image", str(adapter["image"]), "--instruction", adapter["instruction"],
           "--max-new-tokens", str(MAX_NEW)]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == adapter["expected"] + "\n", (done.stdout, done.stderr)
    assert "image_lora adapter" in done.stderr
    assert _files(cwd) == [], "the downloaded adapter is not left behind"
