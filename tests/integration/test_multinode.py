"""Several Ray nodes on one machine, sharing no disk: shards, checkpoints and MLflow artifacts in S3.

One cluster for the module (conftest's `ray_nodes`: a 0-CPU head and two 1-CPU worker raylets tagged
`node_w1` / `node_w2`, each with its own temp and scratch dir) and one moto S3 server (`s3_server`). The
worker nodes do not have the AWS_* variables in their environment: what reaches them comes through a job's
runtime env (launch/submit.sh passes the submitter's AWS_* on) or this driver's `ray.init` runtime env.

* the reader: 2 ranks on 2 nodes stream `s3://` shards (pyarrow's S3 filesystem, 2 loader processes each)
  and read every sample of the epoch exactly once between them;
* the pipeline under `ray job submit`: probe actors, Ray Train workers and the eval task land on the worker
  nodes (asserted by node id through Ray's State API); output_dir and the MLflow sqlite store are local to
  the driver (the head); the head selection, rank 0's metrics and the adapter travel through Ray, not a
  path; the adapter, eval report and MLflow runs end up on the driver's side, the checkpoints and artifacts
  in the bucket;
* node loss (worker node node_w2 killed by pid: raylet, workers, log_monitor): mid-training after a
  checkpoint the run resumes from the bucket on the node left and ends at the uninterrupted run's adapter,
  with one line saying so; with train.max_failures=0 it fails in one line and the checkpoint stays;
  mid-probe (the node of the straggling probe actor, told apart through the State API) the actor dies,
  its batch is re-run by the other actor and the selection bytes are those of an uninterrupted run;
* no shared disk (where `unshare -m` works, else those tests skip saying so): the worker nodes see
  neither the driver's /tmp and $HOME nor each other's;
* own addresses (where the test may make network namespaces, tests/netns_hosts.py; else the nodes are
  loopback nodes and these skip saying why): each worker node in its own namespace on a private bridge,
  token auth, moto on the bridge's address; nodes register at their addresses and pin the collective's
  interface, a join that cannot work fails in one line, and a worker's link cut mid-training (processes
  alive) costs a resume from the last checkpoint, no MLflow step twice, and the node comes back by itself.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import torch
from ray_cluster import LAUNCH, node_auth, wait_for_job
from ray_cluster import run as _run

pytestmark = pytest.mark.integration  # Ray clusters, DeepSpeed runs, servers: not in make test-fast

BUCKET = "mnode"  # conftest's s3_server
JOB_TIMEOUT_S = 300


def _s3(env: dict[str, str]):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def _keys(env: dict[str, str], prefix: str) -> list[str]:
    pages = _s3(env).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture(scope="module")
def s3_server(ray_nodes):
    """conftest's S3 server, on the bridge's address where the worker nodes have their own (the address they
    reach this machine at), else on 127.0.0.1."""
    from s3_server import moto_s3

    with moto_s3("mnode", host=ray_nodes.hosts.bridge_addr if ray_nodes.hosts else "127.0.0.1") as env:
        yield env


@pytest.fixture(scope="module")
def s3_shards(s3_server, tmp_path_factory) -> str:
    """A small synthetic training set (32 samples in 4 shards), uploaded to s3://mnode/train."""
    from imagelora_dist.config import load_config
    from imagelora_dist.pipeline import ensure_train_shards

    out = tmp_path_factory.mktemp("synth")
    cfg = load_config(None, [f"output_dir={out}", "data.synth.num_samples=32", "data.synth.samples_per_shard=8",
                             "data.synth.workers=1"])  # fmt: skip
    local = Path(ensure_train_shards(cfg, log=lambda m: None))
    client = _s3(s3_server)
    for f in sorted(local.iterdir()):
        client.upload_file(str(f), BUCKET, f"train/{f.name}")
    return f"s3://{BUCKET}/train"


@pytest.fixture(scope="module")
def driver(ray_nodes, s3_server):
    """This process as a Ray driver of the cluster; the S3 credentials reach its tasks via the runtime env."""
    import ray

    from imagelora_dist.ray_runtime import WORKER_ENV

    with node_auth(ray_nodes):  # the test cluster's auth (token on own addresses); the client reads it here
        ray.init(address=ray_nodes.gcs_address, runtime_env={"env_vars": {**WORKER_ENV, **s3_server}},
                 log_to_driver=False)  # fmt: skip
        try:
            yield ray
        finally:
            ray.shutdown()


def _node_ids(ray_nodes) -> dict[str, str]:
    """Custom resource (node_w1, node_w2, and `head`) -> node id, from Ray's State API."""
    from ray.util.state import list_nodes

    out = {}
    for node in list_nodes(address=ray_nodes.address, detail=True):
        if node.state != "ALIVE":
            continue
        if node.is_head_node:
            out["head"] = node.node_id
        for name in node.resources_total:
            if name.startswith("node_w"):
                out[name] = node.node_id
    assert set(out) == {"head", "node_w1", "node_w2"}, out
    assert len(set(out.values())) == 3, out
    return out


def test_ranks_on_two_nodes_read_s3_shards_exactly_once(driver, ray_nodes, s3_shards):
    def read_rank(url: str, rank: int, world: int, batch: int, loader_workers: int) -> tuple[str, list[str]]:
        """(node id, sample ids) of one rank's epoch 0, read as a training worker reads it (defined here:
        the workers cannot import this test module, so it travels by value)."""
        import ray

        from imagelora_dist.data.reader import ShardReader, make_loader

        reader = ShardReader.from_path(url, batch, seed=0, shuffle_buffer=8)
        loader = make_loader(reader, rank=rank, world_size=world, num_workers=loader_workers)
        ids = [s["record"]["id"] for b in loader for s in b["samples"]]
        return ray.get_runtime_context().get_node_id(), ids

    nodes = _node_ids(ray_nodes)
    task = driver.remote(read_rank)
    refs = [
        task.options(num_cpus=1, resources={f"node_w{r + 1}": 1}).remote(s3_shards, r, 2, 2, 2)
        for r in (0, 1)
    ]
    (node0, ids0), (node1, ids1) = driver.get(refs, timeout=120)
    assert (node0, node1) == (nodes["node_w1"], nodes["node_w2"])
    assert len(ids0) == len(ids1) == 16  # 32 samples, 2 ranks, batches of 2: nothing left out
    assert not set(ids0) & set(ids1)
    assert len(set(ids0) | set(ids1)) == 32


NO_NAMESPACES = "no mount namespaces here (unshare -m as root): the worker nodes share this machine's disk"


def _on_node(driver, node: str, fn, *args):
    """fn(*args) run as a task on worker node `node` (node_w1 / node_w2)."""
    return driver.get(driver.remote(fn).options(num_cpus=1, resources={node: 1}).remote(*args), timeout=120)


def test_worker_nodes_do_not_see_the_drivers_disk(driver, ray_nodes, tmp_path):
    import tempfile

    if not ray_nodes.hidden:
        pytest.skip(NO_NAMESPACES)
    (tmp_path / "mine.txt").write_text("driver side")
    # /tmp and $HOME are the driver's own too (pytest's tmp_path is under /tmp here or hidden by name).
    with tempfile.NamedTemporaryFile(dir=os.path.expanduser("~"), prefix=".imagelora-driver-") as home_file:

        def sees(paths: list[str]) -> list[bool]:
            return [os.path.exists(p) for p in paths]

        paths = [str(tmp_path / "mine.txt"), home_file.name]
        assert sees(paths) == [True, True]  # the driver's side sees both
        assert [_on_node(driver, n, sees, paths) for n in ("node_w1", "node_w2")] == [[False, False]] * 2


def test_one_worker_node_cannot_see_anothers_scratch(driver, ray_nodes):
    if not ray_nodes.hidden:
        pytest.skip(NO_NAMESPACES)

    def leave_files() -> list[str]:
        """A file in this node's scratch (TMPDIR), /tmp and $HOME, as a training rank leaves its checkpoint."""
        import tempfile

        out = []
        for folder in (tempfile.gettempdir(), "/tmp", os.path.expanduser("~")):
            fd, path = tempfile.mkstemp(dir=folder, prefix="imagelora-w1-")
            os.close(fd)
            out.append(path)
        return out

    def sees(paths: list[str]) -> list[bool]:
        return [os.path.exists(p) for p in paths]

    left = _on_node(driver, "node_w1", leave_files)
    assert _on_node(driver, "node_w1", sees, left) == [True, True, True]  # the node keeps its own files
    assert _on_node(driver, "node_w2", sees, left) == [False, False, False]
    assert sees(left) == [False, False, False]  # nor does the driver see them


@pytest.fixture(scope="module")
def tracking_server(ray_nodes, s3_server, tmp_path_factory):
    """The production tracking stack (tests/mlflow_server.py): an `mlflow server` on a sqlite file whose
    artifacts it proxies to s3://mnode/mlartifacts, listening where the S3 server does (the head's bridge
    address where the nodes have their own, else 127.0.0.1)."""
    from mlflow_server import mlflow_server

    host = ray_nodes.hosts.bridge_addr if ray_nodes.hosts else "127.0.0.1"
    workdir = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server(workdir, s3_server, f"s3://{BUCKET}/mlartifacts", host=host) as srv:
        yield srv


def test_pipeline_job_across_nodes_without_a_shared_disk(
    ray_nodes, s3_server, s3_shards, tracking_server, tmp_path, capsys
):
    if not ray_nodes.hidden:  # with a shared disk a path could stand in for what must travel through Ray
        pytest.skip(NO_NAMESPACES)
    from mlflow import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    from imagelora_dist.cli import main
    from imagelora_dist.compare import compare_runs

    out = tmp_path / "out"  # the driver's side: the head runs the job's driver
    out.mkdir()
    # MLflow as in production: a tracking server with a SQL store that proxies artifacts to the bucket; the
    # job gets only its URI (no artifact store credentials needed for MLflow).
    uri = tracking_server.uri
    mlflow = MlflowClient(tracking_uri=uri)
    submission_id = f"multinode-{os.getpid()}-{time.time_ns() % 10**9}"
    overrides = [
        f"output_dir={out}",
        f"tracking.uri={uri}",
        "tracking.experiment=multinode",
        f"data.train={s3_shards}",
        f"train.storage=s3://{BUCKET}/ckpt",
        "probe.num_examples=4",
        "ray.num_workers=2",  # one probe actor per worker node (1 CPU each)
        "train.workers=2",
        "train.steps=2",
        "train.checkpoint_every=2",
        "eval.synth_samples=4",
        "eval.text_task_problems=4",
        "data.synth.workers=1",
    ]
    cmd = [
        "bash",
        str(LAUNCH / "submit.sh"),
        "--address",
        ray_nodes.address,
        "--submission-id",
        submission_id,
    ]
    submitter = {**ray_nodes.env, **s3_server}  # submit.sh passes the AWS_* on in the job's runtime env
    submitted = _run([*cmd, "--no-wait", "--", *overrides], submitter, timeout=120)
    assert submitted.returncode == 0, f"submit.sh failed:\n{submitted.stdout}\n{submitted.stderr}"
    assert "AWS_ENDPOINT_URL" in submitted.stderr and "testing" not in submitted.stderr + submitted.stdout

    with node_auth(ray_nodes):
        client = JobSubmissionClient(ray_nodes.address)
        status = wait_for_job(client, submission_id, JOB_TIMEOUT_S)
        log = client.get_job_logs(submission_id)
        if status != JobStatus.SUCCEEDED:
            pytest.fail(f"job ended {status}: {client.get_job_info(submission_id).message}\n{log}")

        # Where everything ran, by node id.
        nodes = _node_ids(ray_nodes)
        workers = {nodes["node_w1"], nodes["node_w2"]}
        actors = list_actors(address=ray_nodes.address, detail=True, limit=1000)
        probe = [a.node_id for a in actors if a.class_name == "ProbeActor"]
        train = [a.node_id for a in actors if a.class_name == "RayTrainWorker"]
        outcome = [a.node_id for a in actors if a.class_name == "_Outcome"]
        evals = [a.node_id for a in actors if a.class_name == "EvalActor"]
    assert sorted(probe) == sorted(workers), (probe, nodes)  # one probe actor on each worker node
    assert sorted(train) == sorted(workers), (train, nodes)  # the two ranks on different nodes
    assert outcome == [nodes["head"]], (outcome, nodes)  # pinned to the driver's node
    assert sorted(evals) == sorted(workers), (evals, nodes)  # a replica on each worker node
    assert "[eval] sending the adapter" in log, log
    # launch/logs.sh reads the same log through the token-auth job API; the job's driver gave the train
    # workers WORKER_ENV (Ray Train's print patch off), so each line shows once.
    logs = _run(
        ["bash", str(LAUNCH / "logs.sh"), submission_id, "--address", ray_nodes.address], submitter, 60
    )
    assert logs.returncode == 0 and "[train] step 2/2" in logs.stdout, logs.stdout[-3000:] + logs.stderr
    assert logs.stdout.count("[train] step 2/2") == 1, logs.stdout
    assert any(
        line.startswith("[probe]") and "Ray workers ready" in line for line in logs.stdout.splitlines()
    )
    assert f"MLflow: {uri}\n" in log, log  # where to look: the server's own UI
    # The eval shards are on the driver's disk only: each worker got just its chunks' samples.
    assert "workers cannot read" in log and "inputs are sent with them" in log, log

    # The driver's side: selection, adapter, eval report, MLflow runs (rank 0's step metrics included).
    assert json.loads((out / "head_selection.json").read_text())["kv_indices"]
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    report = json.loads((out / "eval_report.json").read_text())
    assert report["eval_samples"] == 4
    exp = mlflow.get_experiment_by_name("multinode")
    runs = {r.data.tags.get("imagelora.stage"): r for r in mlflow.search_runs([exp.experiment_id])}
    assert {"probe", "train", "eval"} <= set(runs), set(runs)
    assert all(r.info.status == "FINISHED" for r in runs.values())
    steps = [m.step for m in mlflow.get_metric_history(runs["train"].info.run_id, "loss")]
    assert steps == [1, 2], steps  # from rank 0 on a worker node, through the driver-side actor
    # The bucket: both ranks' checkpoint files, and MLflow's artifacts.
    ckpt = _keys(s3_server, "ckpt/")
    assert any(k.endswith("zero_pp_rank_1_mp_rank_00_optim_states.pt") for k in ckpt), ckpt
    # MLflow's artifacts (selection, heatmap, adapter, eval report) went through the server into the bucket,
    # onto no local disk: not the driver's output_dir, not beside the server's database.
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location
    artifacts = _keys(s3_server, "mlartifacts/")
    for name in ("head_selection.json", "head_heatmap.png", "adapter_model.safetensors", "eval_report.json"):
        assert any(k.endswith(f"/{name}") for k in artifacts), (name, artifacts)
    assert not [p for p in out.rglob("*") if p.name in ("mlartifacts", "mlruns", "mlruns.db")]
    assert sorted(p.name for p in tracking_server.workdir.iterdir()) == ["mlflow.db", "server.log"]

    # `compare` reads the run back from the server (and logs its report there too).
    (row,) = compare_runs(uri, "multinode")
    assert row["status"] == "FINISHED" and row["method"] == "image_lora", row
    assert row["run"] == "tiny-default-image_lora" and row["trainable_params"] > 0, row
    assert row["accuracy"] == pytest.approx(report["grounding_accuracy"], nan_ok=True), (row, report)
    capsys.readouterr()
    cmp = ["compare", f"tracking.uri={uri}", "--experiment", "multinode", "--out", str(tmp_path / "cmp")]
    assert main(cmp) == 0
    assert "tiny-default-image_lora" in capsys.readouterr().out
    assert any(k.endswith("/compare.html") for k in _keys(s3_server, "mlartifacts/")), "compare's report"


def test_object_store_urls_read_through_pyarrow_with_clear_errors(s3_server, s3_shards, monkeypatch):
    from imagelora_dist.data.reader import open_url
    from imagelora_dist.data.shards import ShardIndex
    from imagelora_dist.errors import ImageLoRAError

    for key, value in s3_server.items():  # pyarrow's S3 client reads the standard variables
        monkeypatch.setenv(key, value)
    assert ShardIndex.read(s3_shards).total_samples == 32
    with open_url(f"{s3_shards}/train-000000.tar") as f:
        assert len(f.read()) > 0
    with pytest.raises(ImageLoRAError, match=r"s3://mnode/nothing/index.json: shard index not found"):
        ShardIndex.read(f"s3://{BUCKET}/nothing")
    with pytest.raises(ImageLoRAError, match=r"nosuch://x/index.json: no filesystem opens this URL"):
        ShardIndex.read("nosuch://x")


def test_submit_refuses_an_unset_env_name(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "IMAGELORA_UNSET"}
    done = _run(["bash", str(LAUNCH / "submit.sh"), "--env", "IMAGELORA_UNSET"], env, timeout=30)
    assert done.returncode == 2 and "--env IMAGELORA_UNSET: not set in this shell" in done.stderr


# Node loss (last in the module: each test kills worker node node_w2 by pid, raylet, workers and log_monitor
# alike, and starts a fresh node_w2 afterwards, so the module's cluster stays whole).


@pytest.fixture(scope="module")
def tiny_shards(s3_server, tmp_path_factory) -> str:
    """4 samples in 2 shards at s3://mnode/tiny, read without shuffling: 2 ranks x 1 micro-batch of 2 and
    1 rank x 2 micro-batches see the same 4 samples in every step (one step = one epoch)."""
    from imagelora_dist.config import load_config
    from imagelora_dist.pipeline import ensure_train_shards

    out = tmp_path_factory.mktemp("tiny")
    cfg = load_config(None, [f"output_dir={out}", "data.synth.num_samples=4", "data.synth.samples_per_shard=2",
                             "data.synth.workers=1"])  # fmt: skip
    local = Path(ensure_train_shards(cfg, log=lambda m: None))
    for f in sorted(local.iterdir()):
        _s3(s3_server).upload_file(str(f), BUCKET, f"tiny/{f.name}")
    return f"s3://{BUCKET}/tiny"


def _train_cfg(out: Path, shards: str, prefix: str, **overrides):
    from imagelora_dist.config import load_config

    items = {
        "output_dir": str(out),
        "data.train": shards,
        "data.shuffle_buffer": 0,
        "train.method": "image_lora_all",
        "train.workers": 2,
        "train.steps": 6,
        "train.checkpoint_every": 2,
        "train.lr": 0.01,
        "train.micro_batch_size": 2,
        "train.storage": f"s3://{BUCKET}/{prefix}",
        "tracking.enabled": False,
        **overrides,
    }
    return load_config(None, [f"{k}={v}" for k, v in items.items()])


def _wait_for_keys(env: dict[str, str], prefix: str, suffixes: tuple[str, ...], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        keys = _keys(env, prefix)
        if all(any(k.endswith(s) for k in keys) for s in suffixes):
            return
        time.sleep(0.5)
    raise AssertionError(f"{suffixes} never appeared under s3://{BUCKET}/{prefix}")


def _kill_w2_when(ray_nodes, ready) -> str:
    """Wait for `ready()`, then kill worker node node_w2 by pid; its node id."""
    from ray_cluster import kill_node, marker_node_ids

    assert ready() is not False, "the moment to kill the node never came"
    node = ray_nodes.workers[1]
    node_id = marker_node_ids(node.temp_dir)[0]
    assert kill_node(node.temp_dir)
    return node_id


CKPT_FILES = ("cursor.json", "portable_state.safetensors", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
              "zero_pp_rank_1_mp_rank_00_optim_states.pt")  # fmt: skip


def _train_and_kill(ray_nodes, s3_server, cfg, prefix: str, lines: list[str]) -> tuple[str, Exception | None]:
    """Train `cfg` with every rank pausing 20 s after checkpoint step-000002; kill node_w2 once it is in
    the bucket (and Ray has registered it); then a fresh node_w2. (killed node id, the run's error)."""
    from concurrent.futures import ThreadPoolExecutor

    from ray_cluster import replace_worker

    from imagelora_dist.train.ray_train import run_training

    step2 = f"{prefix}/{cfg.name}-train/step-000002/"

    def registered() -> None:
        _wait_for_keys(s3_server, step2, CKPT_FILES)
        time.sleep(2)  # Ray Train registers a checkpoint at its next poll of the workers (0.25 s apart)

    try:
        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(run_training, cfg, cfg.data.train, log=lines.append)
            killed = _kill_w2_when(ray_nodes, registered)
            error = run.exception(timeout=JOB_TIMEOUT_S)
    finally:
        replace_worker(ray_nodes, 1)
    return killed, error


@pytest.fixture(scope="module")
def clean_adapter(driver, s3_server, tiny_shards, tmp_path_factory) -> dict:
    """The adapter tensors of an uninterrupted run of `_train_cfg` (where a run that lost a node must end)."""
    from safetensors.torch import load_file

    from imagelora_dist.train.ray_train import run_training

    out = tmp_path_factory.mktemp("clean")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_server.items():  # the driver's S3 calls: clearing the run, fetching the adapter
            mp.setenv(key, value)
        run_training(_train_cfg(out, tiny_shards, "loss-clean"), tiny_shards, log=lambda m: None)
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def test_node_lost_mid_training_resumes_from_the_bucket(driver, ray_nodes, s3_server, tiny_shards, clean_adapter,
                                                        tmp_path, monkeypatch):  # fmt: skip
    from safetensors.torch import load_file

    from imagelora_dist.train.ray_train import PAUSE_ENV

    for key, value in s3_server.items():  # the driver's own S3 calls: clearing the run, fetching the adapter
        monkeypatch.setenv(key, value)
    clean = clean_adapter

    monkeypatch.setenv(PAUSE_ENV, "2:20")
    # Elastic: with no spare node the group goes on with 1 worker, which accumulates the 2 micro-batches
    # the 2 ranks had: the same samples per step, so the same adapter.
    cfg = _train_cfg(tmp_path / "killed", tiny_shards, "loss-killed", **{"train.min_workers": 1})
    lines: list[str] = []
    killed, error = _train_and_kill(ray_nodes, s3_server, cfg, "loss-killed", lines)
    assert error is None, f"{error}\n" + "\n".join(lines)
    said = [line for line in lines if "lost node" in line]
    where = f"s3://{BUCKET}/loss-killed/{cfg.name}-train"
    assert len(said) == 1 and re.fullmatch(
        rf"\[train\] lost node {killed[:8]} \(rank [01]\); resumed from step-000002 in {where} on 1 worker",
        said[0],
    ), lines
    got = load_file(str(tmp_path / "killed" / "adapter" / "adapter_model.safetensors"))
    assert got.keys() == clean.keys()
    for key in clean:  # the tolerance of test_train.py's killed-worker resume
        torch.testing.assert_close(got[key], clean[key], rtol=1e-5, atol=1e-7, msg=key)


def test_node_lost_with_no_restart_left_fails_in_one_line_and_keeps_the_checkpoint(
    driver, ray_nodes, s3_server, tiny_shards, tmp_path, monkeypatch
):
    from imagelora_dist.errors import TrainingFailed
    from imagelora_dist.train.ray_train import PAUSE_ENV

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(PAUSE_ENV, "2:20")
    cfg = _train_cfg(tmp_path, tiny_shards, "loss-fail", **{"train.max_failures": 0})
    killed, error = _train_and_kill(ray_nodes, s3_server, cfg, "loss-fail", [])
    assert isinstance(error, TrainingFailed), error
    where = f"s3://{BUCKET}/loss-fail/{cfg.name}-train"
    assert re.fullmatch(
        rf"training failed: lost node {killed[:8]} \(rank [01]\), no restart left \(train.max_failures=0, 0 used\); "
        rf"the last checkpoint, step-000002, stays in {where} \(--resume continues from it\)",
        str(error),
    ), str(error)
    kept = _keys(s3_server, f"loss-fail/{cfg.name}-train/step-000002/")
    assert all(any(k.endswith(f) for k in kept) for f in CKPT_FILES), kept
    assert not _keys(s3_server, f"loss-fail/{cfg.name}-train/step-000004/")


def test_node_lost_mid_probe_reruns_its_batch_elsewhere_with_the_same_selection_bytes(
    driver, ray_nodes, s3_server, s3_shards, tmp_path, monkeypatch
):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from ray.util.state import get_actor, list_actors, list_tasks
    from ray_cluster import kill_node, replace_worker

    from imagelora_dist.config import load_config
    from imagelora_dist.pipeline import run_probe_select
    from imagelora_dist.probe.distributed import SLOW_WORKER_ENV

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)

    def cfg(out: Path):
        items = {"output_dir": str(out), "data.train": s3_shards, "probe.num_examples": 32, "probe.batch_size": 1,
                 "selection.budget": 5, "ray.num_workers": 2, "tracking.enabled": False}  # fmt: skip
        return load_config(None, [f"{k}={v}" for k, v in items.items()])

    clean = run_probe_select(cfg(tmp_path / "clean"), log=lambda m: None, on_ray=lambda: None)
    # Worker 1 cannot finish a batch before its node is killed (30 s each); worker 0 has 31 batches of
    # 0.5 s, so it is still busy when Ray reports worker 1 lost (~5 s): the batch is requeued, not copied.
    monkeypatch.setenv(SLOW_WORKER_ENV, "0:0.5,1:30")
    lines: list[str] = []
    first = threading.Event()

    def log(line: str) -> None:
        lines.append(line)
        if "[probe] batches 1/" in line:
            first.set()

    def slow_actor():
        """The live probe actor with no finished batch once the other has one (worker 1), else None."""
        live = list_actors(address=ray_nodes.address, detail=True,
                           filters=[("class_name", "=", "ProbeActor"), ("state", "=", "ALIVE")])  # fmt: skip
        done = {t.actor_id for t in list_tasks(address=ray_nodes.address, detail=True, limit=10000,
                filters=[("name", "=", "ProbeActor.score"), ("state", "=", "FINISHED")])}  # fmt: skip
        idle = [a for a in live if a.actor_id not in done]
        return idle[0] if len(live) == 2 and len(idle) == 1 else None

    index = None
    try:
        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(run_probe_select, cfg(tmp_path / "killed"), log, lambda: None)
            assert first.wait(JOB_TIMEOUT_S), lines
            deadline, slow = time.monotonic() + 60, None
            while slow is None and time.monotonic() < deadline:
                slow = slow_actor()
                time.sleep(0.2)
            assert slow is not None, "the slow probe actor was never told apart"
            nodes = _node_ids(ray_nodes)
            index = [nodes[w.resource] for w in ray_nodes.workers].index(slow.node_id)
            assert kill_node(ray_nodes.workers[index].temp_dir)  # the straggler's node, mid-batch
            # The State API: Ray saw the actor die with its node (while the probe still ran: not its cleanup).
            while (state := get_actor(slow.actor_id, address=ray_nodes.address).state) == "ALIVE":
                assert time.monotonic() < deadline + 60, "the killed node's actor stayed ALIVE"
                time.sleep(0.2)
            assert state in ("RESTARTING", "DEAD") and not run.done(), state
            lost = run.result(timeout=JOB_TIMEOUT_S)
    finally:
        if index is not None:
            replace_worker(ray_nodes, index)
    # The dead actor's error was read and its batch went back in the queue; worker 0 scored every batch,
    # that one included; the sum is the uninterrupted run's, byte for byte.
    failed = [x for x in lines if re.fullmatch(r"\[probe\] worker 1 failed on batch \d+ \(.+\); it goes back in "
                                               r"the queue", x)]  # fmt: skip
    assert len(failed) == 1, lines
    assert "[probe] batches per worker: [32]" in lines, lines
    assert any(line.startswith("[probe] batches 32/32") for line in lines), lines
    assert lost.output.read_bytes() == clean.output.read_bytes()


def test_fixed_workers_with_no_room_fail_after_bounded_tries_in_one_line(monkeypatch):
    # Fixed workers after a lost node with no spare: Ray Train's default retries the group start forever
    # (one WorkerGroupStartupTimeoutError a minute); run_training bounds the tries and says why in one line.
    # That the bound reaches Ray Train: tests/integration/test_train_driver_side.py (a spy on the trainer).
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    from imagelora_dist.config import load_config
    from imagelora_dist.train.ray_train import START_TIMEOUT_ENV, failure_cause, start_retries

    monkeypatch.setenv(START_TIMEOUT_ENV, "30")
    cfg = load_config(None, ["train.workers=2", "train.max_failures=2", "ray.autoscale_wait_s=45"])
    assert start_retries(cfg) == 2 + 2  # 45 s of autoscaling wait needs 2 more tries of 30 s
    cause = failure_cause(ControllerError(WorkerGroupStartupTimeoutError(2)), cfg, lost="", restarts=0)
    assert cause == (
        "the cluster has no room for 2 training workers (waited 30 s, 5 times; a node lost with no spare? "
        "train.min_workers lets the run go on with fewer)"
    )


def test_node_lost_mid_eval_costs_only_its_chunks_and_a_rerun_reuses_the_bucket(
    driver, ray_nodes, s3_server, s3_shards, tmp_path, monkeypatch
):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from ray_cluster import replace_worker

    from imagelora_dist.config import load_config
    from imagelora_dist.eval.distributed import SLOW_WORKER_ENV
    from imagelora_dist.pipeline import run_eval

    for key, value in s3_server.items():  # the driver reads the shards' index and writes the chunk store
        monkeypatch.setenv(key, value)

    def cfg(out: Path, store: str):
        items = {"output_dir": str(out), "train.method": "none", "eval.shards": s3_shards, "eval.chunk_size": 4,
                 "eval.workers": 2, "eval.batch_size": 4, "eval.max_new_tokens": 4, "eval.text_task_problems": 0,
                 "eval.storage": f"s3://{BUCKET}/{store}", "tracking.enabled": False}  # fmt: skip
        return load_config(None, [f"{k}={v}" for k, v in items.items()])

    clean = run_eval(cfg(tmp_path / "clean", "eval-clean"), log=lambda m: None, on_ray=lambda: None)
    monkeypatch.setenv(SLOW_WORKER_ENV, "1:2")  # worker 1 takes 2 s more a chunk: the kill lands mid-eval
    lines: list[str] = []
    first = threading.Event()

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("[eval] chunks 1/"):
            first.set()

    killed_cfg = cfg(tmp_path / "killed", "eval-killed")
    try:
        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(run_eval, killed_cfg, log, lambda: None)
            _kill_w2_when(ray_nodes, lambda: first.wait(JOB_TIMEOUT_S))
            lost = run.result(timeout=JOB_TIMEOUT_S)
    finally:
        replace_worker(ray_nodes, 1)
    assert lost.output.read_bytes() == clean.output.read_bytes()  # every sample exactly once, same report
    stored = _keys(s3_server, "eval-killed/")
    assert sum(k.endswith(".json") and "/chunk-" in k for k in stored) == 8, stored  # 32 samples / 4
    again: list[str] = []
    run_eval(killed_cfg, again.append, lambda: None)
    assert any("reusing 8 finished chunks of 8" in x for x in again), again
    assert not any("workers (" in x for x in again), again  # nothing left to score: no worker started


# Hosts with their own addresses (tests/netns_hosts.py: worker node node_wI in network namespace wI on a private
# bridge, the head and this driver at the bridge's address), where the machine allows; else these skip saying
# why (the nodes are then loopback nodes of this machine).


def _own_addresses(ray_nodes) -> None:
    if not ray_nodes.hosts:
        pytest.skip(ray_nodes.net)


def test_nodes_register_at_their_own_addresses_and_pin_the_collective_interface(driver, ray_nodes):
    from ray.util.state import list_nodes

    from imagelora_dist.ray_runtime import pin_collective_interface

    _own_addresses(ray_nodes)
    hosts = ray_nodes.hosts
    with node_auth(ray_nodes):
        nodes = list_nodes(address=ray_nodes.address, detail=True)
    alive = {n.node_ip: n for n in nodes if n.state == "ALIVE"}
    assert sorted(alive) == sorted([hosts.bridge_addr, *hosts.addrs.values()]), ray_nodes.net
    assert all(alive[addr].resources_total.get(f"node_{host}") == 1 for host, addr in hosts.addrs.items())
    # What a Ray Train worker sets before its process group starts: the interface of its node's Ray address,
    # the namespace's eth0 (gloo alone took the hostname's 127.0.0.1 and the ranks never met).
    both = {"GLOO_SOCKET_IFNAME": "eth0", "NCCL_SOCKET_IFNAME": "eth0"}
    assert _on_node(driver, "node_w1", pin_collective_interface) == both


def test_a_join_that_cannot_work_fails_in_bounded_time_in_one_line(ray_nodes):
    import shutil
    import tempfile

    _own_addresses(ray_nodes)
    head, net = ray_nodes.hosts.bridge_addr, ray_nodes.hosts.subnet
    cases = [  # from host w1 (.2); nothing answers at .99
        (["--join", f"{net}.99:6379", "--join-timeout", "3"],
         rf"cannot reach the head's GCS at {net}\.99:6379 from {net}\.2 within 3 s: \S.*"),
        (["--join", ray_nodes.gcs_address, "--node-ip-address", "127.0.0.1"],
         rf"node address 127\.0\.0\.1 is loopback but the head is at {head}: the head could not reach this node; "
         r"pass --node-ip-address"),
        (["--join", ray_nodes.gcs_address, "--node-ip-address", f"{net}.50"],
         rf"cannot reach the head's GCS at {ray_nodes.gcs_address} from {net}\.50 within 60 s: "
         rf"{net}\.50 is not an address of this machine \(.+\)"),
    ]  # fmt: skip
    for args, said in cases:
        temp_dir = tempfile.mkdtemp(prefix="rx", dir="/var/tmp")
        try:  # the subprocess timeout is the bound: `ray start` alone retried an unreachable head forever
            cmd = ["bash", str(LAUNCH / "start_cluster.sh"), "--cpus", "1", "--temp-dir", temp_dir, *args]
            done = _run([*ray_nodes.hosts.run_in("w1"), *cmd], ray_nodes.env, timeout=60)
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert re.fullmatch(f"start_cluster.sh: {said}", lines[0]), lines[0]


def _wait(what: str, check, timeout: float):
    """check()'s first truthy value, polled every 0.5 s; fails saying `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.5)
    return got


def _w2_nodes(ray_nodes) -> dict[str, str]:
    """node id -> state of every node (dead ones included) that carries the resource node_w2."""
    from ray.util.state import list_nodes

    with node_auth(ray_nodes):
        found = list_nodes(address=ray_nodes.address, detail=True, limit=1000)
    return {n.node_id: n.state for n in found if "node_w2" in n.resources_total}


def test_partition_mid_training_finishes_on_the_rest_and_the_node_rejoins_by_itself(
    driver, ray_nodes, s3_server, tiny_shards, clean_adapter, tmp_path, monkeypatch
):
    from concurrent.futures import ThreadPoolExecutor

    from mlflow import MlflowClient
    from ray_cluster import marker_node_ids, replace_worker
    from safetensors.torch import load_file

    from imagelora_dist.train.ray_train import PAUSE_ENV, run_training

    _own_addresses(ray_nodes)
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    db = f"sqlite:///{tmp_path}/mlruns.db"
    mlflow = MlflowClient(tracking_uri=db)
    run_id = mlflow.create_run(mlflow.create_experiment("partition")).info.run_id
    # Every rank waits after step 3, whose loss rank 0 has sent to MLflow: the last checkpoint is step 2, so
    # step 3 is redone after the restart, and must not be logged twice.
    monkeypatch.setenv(PAUSE_ENV, "3:40")
    cfg = _train_cfg(tmp_path / "cut", tiny_shards, "cut", **{"train.min_workers": 1})
    old = marker_node_ids(ray_nodes.workers[1].temp_dir)[-1]
    lines: list[str] = []
    cut = rejoined = False
    try:
        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(
                run_training, cfg, cfg.data.train, log=lines.append, mlflow_uri=db, mlflow_run_id=run_id
            )
            _wait("step 3's loss in MLflow", lambda: run.done() or any(
                m.step == 3 for m in mlflow.get_metric_history(run_id, "loss")), JOB_TIMEOUT_S)  # fmt: skip
            assert not run.done(), run.exception()
            ray_nodes.hosts.cut("w2")  # node_w2's processes live on, unreachable
            cut = True
            t0 = time.monotonic()
            _wait("node_w2 declared dead", lambda: _w2_nodes(ray_nodes).get(old) == "DEAD", 60)
            detected = time.monotonic() - t0
            ray_nodes.hosts.heal("w2")
            cut = False
            error = run.exception(timeout=JOB_TIMEOUT_S)
        assert error is None, f"{error}\n" + "\n".join(lines)
        # The cut-off node's raylet exits once it hears it was declared dead; its supervisor starts it again.
        back = _wait("node_w2 back", lambda: [n for n, s in _w2_nodes(ray_nodes).items() if n != old and s == "ALIVE"],
                     120)  # fmt: skip
        rejoined = True
    finally:
        if cut:
            ray_nodes.hosts.heal("w2")
        if not rejoined:
            replace_worker(ray_nodes, 1)  # the cluster whole again for what runs next
    print(f"partition: node_w2 declared dead {detected:.1f} s after the cut; back as {back[0][:8]} "
          f"{time.monotonic() - t0:.1f} s after the cut")  # fmt: skip
    assert marker_node_ids(ray_nodes.workers[1].temp_dir)[-1] == back[0]  # restarted by start_cluster.sh
    where = f"s3://{BUCKET}/cut/{cfg.name}-train"
    said = [line for line in lines if "lost node" in line]
    assert len(said) == 1 and re.fullmatch(
        rf"\[train\] lost node {old[:8]} \(rank [01]\); resumed from step-000002 in {where} on [12] workers?",
        said[0],
    ), lines
    got = load_file(str(tmp_path / "cut" / "adapter" / "adapter_model.safetensors"))
    assert got.keys() == clean_adapter.keys()
    for key in clean_adapter:
        torch.testing.assert_close(got[key], clean_adapter[key], rtol=1e-5, atol=1e-7, msg=key)
    stored = _keys(s3_server, f"cut/{cfg.name}-train/")
    kept = sorted({k.split("/")[2] for k in stored if k.split("/")[2].startswith("step-")})
    assert kept and kept[-1] == "step-000006", stored
    for step in kept:  # every checkpoint kept is whole
        files = [k.rsplit("/", 1)[1] for k in stored if f"/{step}/" in k]
        assert {"cursor.json", "portable_state.safetensors", CKPT_FILES[2]} <= set(files), (step, files)
    steps = [m.step for m in mlflow.get_metric_history(run_id, "loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6], steps  # step 3 once, though it ran twice
