"""The RayJobs of k8s/jobs/, run the way KubeRay's submitter pod runs them, on a private local Ray head.

KubeRay (v1.7.0, K8sJobMode) starts a pod that runs, through `bash -c`:

    if ! ray job status --address ADDR ID >/dev/null 2>&1 ; then
        ray job submit --address ADDR --no-wait --runtime-env-json "<runtimeEnvYAML as JSON>" \
            --submission-id ID -- <entrypoint> ; fi ; ray job logs --address ADDR --follow ID

This test builds the same command from the parsed k8s/jobs/rayjob-cpu.yaml and runs it against a Ray head
it starts (tests/ray_cluster.py, 2 CPUs like the CPU variant's worker group). What is changed to run it
here, and nothing else:
  * container paths map to local ones: /app (the image's copy of the repo) -> this checkout, /shared (the
    RWX volume) -> a test directory (tests/k8s_schemas/manifests.py: path_map);
  * tracking: the pods' MLFLOW_TRACKING_URI (the in-cluster MLflow server) becomes a sqlite file under the
    test directory, appended as tracking.uri / tracking.artifact_root overrides.
The embedded tiny config runs whole (probe, train, eval: about 2-3 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from k8s_schemas.manifests import JOBS, entrypoint_argv, map_paths, one, path_map, runtime_env
from ray_cluster import private_ray_cluster, run_in_group

pytestmark = pytest.mark.integration  # Ray clusters, DeepSpeed runs, servers: not in make test-fast

JOB_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def cluster():
    """(job API address, env for client commands) of a private Ray head; stopped and checked at the end."""
    with private_ray_cluster(cpus=2) as (address, env):
        yield address, env


def go_quote(text: str) -> str:
    """Go's strconv.Quote for ASCII text (how KubeRay quotes --runtime-env-json for bash)."""
    assert text.isascii() and text.isprintable()
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def submitter_command(address: str, job_id: str, entrypoint: str, runtime_env_json: str) -> str:
    """KubeRay's K8sJobMode submitter command (common.BuildJobSubmitCommand), joined as it joins it."""
    cmd = ["if", "!", "ray", "job", "status", "--address", address, job_id, ">/dev/null", "2>&1", ";", "then"]
    cmd += ["ray", "job", "submit", "--address", address, "--no-wait"]
    cmd += ["--runtime-env-json", go_quote(runtime_env_json), "--submission-id", job_id]
    cmd += [
        "--",
        entrypoint.strip(),
        ";",
        "fi",
        ";",
        "ray",
        "job",
        "logs",
        "--address",
        address,
        "--follow",
        job_id,
    ]
    return " ".join(cmd)


def test_cpu_rayjob_runs_the_pipeline(cluster, tmp_path):
    from mlflow import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient

    address, env = cluster
    job = one(yaml.safe_load_all(JOBS["cpu"].read_text()), "RayJob")
    shared = tmp_path / "shared"
    shared.mkdir()
    mapping = path_map(shared)
    tracking = [
        f"tracking.uri=sqlite:///{tmp_path}/mlruns.db",
        f"tracking.artifact_root={tmp_path}/mlartifacts",
        # Appended overrides (as the RayJob's comment documents) keep the test short; the entrypoint itself
        # runs unchanged in front of them.
        "data.synth.num_samples=16",
        "data.synth.samples_per_shard=8",
        "train.steps=4",
        "eval.synth_samples=4",
        "eval.text_task_problems=4",
    ]
    entrypoint = map_paths(job["spec"]["entrypoint"], mapping) + " " + shlex.join(tracking)
    env_json = json.dumps(runtime_env(job), separators=(",", ":"))  # what KubeRay's YAMLToJSON gives
    job_id = f"k8s-test-{os.getpid()}-{time.time_ns() % 10**9}"
    command = submitter_command(address, job_id, entrypoint, env_json)

    # The submitter pod: the image's `ray` on PATH, no checkout, its own working directory.
    submitter_env = dict(env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    submitter_dir = tmp_path / "submitter"
    submitter_dir.mkdir()
    old_auth = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = env["RAY_AUTH_MODE"]  # the SDK client reads it from this process
    client = JobSubmissionClient(address)
    try:
        code, log = run_in_group(["bash", "-c", command], submitter_env, submitter_dir, JOB_TIMEOUT_S)
        if code is None:
            log = f"submitter timed out after {JOB_TIMEOUT_S} s\n{log}"
        status = client.get_job_status(job_id)
        if status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            client.stop_job(job_id)
        info = client.get_job_info(job_id)
    finally:
        if old_auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old_auth
    if status != JobStatus.SUCCEEDED:
        pytest.fail(f"job {job_id} ended {status} ({info.message}); submitter output:\n{log}")

    # The job got the RayJob's entrypoint (paths mapped) and its runtime env.
    assert shlex.split(info.entrypoint) == shlex.split(entrypoint), info.entrypoint
    assert info.runtime_env["env_vars"] == runtime_env(job)["env_vars"]
    assert "--config" not in entrypoint_argv(job)  # the embedded default, shipped inside the package

    # Everything the run wrote is on the "shared volume": shards, selection, adapter, checkpoints, eval.
    out = shared / "runs" / "tiny-default"
    assert (out / "data" / "train" / "index.json").is_file()
    selection = json.loads((out / "head_selection.json").read_text())
    assert selection["kv_indices"] and (out / "head_heatmap.png").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert any((out / "train").rglob("*")), "no training checkpoints under train.storage"
    report = json.loads((out / "eval_report.json").read_text())
    assert report, "empty eval report"
    assert "[probe]" in log and "[train]" in log, log[-3000:]  # `ray job logs --follow` streamed the run

    mlflow = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns.db")
    experiment = mlflow.get_experiment_by_name("tiny-default")  # the config's name
    assert experiment is not None, [e.name for e in mlflow.search_experiments()]
    runs = mlflow.search_runs([experiment.experiment_id])
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    stages = {r.data.tags.get("imagelora.stage") for r in runs}
    assert {"probe", "train", "eval"} <= stages, stages


def test_gpu_rayjob_entrypoint_resolves(tmp_path):
    """The GPU RayJob can't run here; its entrypoint (paths mapped) must give a valid config through the
    same CLI, with the run's paths on the volumes the GPU pods mount."""
    job = one(yaml.safe_load_all(JOBS["gpu"].read_text()), "RayJob")
    argv = entrypoint_argv(job)
    assert argv[:4] == ["python", "-m", "imagelora_dist", "run"]
    mapping = path_map(tmp_path / "shared", tmp_path / "models")
    args = [map_paths(a, mapping) for a in argv[4:]]
    cmd = [sys.executable, "-m", "imagelora_dist", "config", *args]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    cfg = yaml.safe_load(done.stdout)
    # The shipped preset by name (the config names none): resolved from the installed package at run time.
    assert cfg["train"]["deepspeed"] == "zero2"
    assert cfg["model"]["path"].startswith("/models/") and cfg["output_dir"].startswith("/shared/")
    assert cfg["tracking"]["uri"] is None  # the pods' MLFLOW_TRACKING_URI (the in-cluster server) applies
