"""End to end under `ray job submit`: launch/start_cluster.sh, launch/submit.sh, launch/stop_cluster.sh.

The test starts its own Ray head (tests/ray_cluster.py: free ports, a private temp dir, teardown with
launch/stop_cluster.sh and a check that no process of it is left; never `ray stop`).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from ray_cluster import LAUNCH, auth_mode, private_ray_cluster, wait_for_job
from ray_cluster import run as _run

pytestmark = pytest.mark.integration  # Ray clusters, DeepSpeed runs, servers: not in make test-fast

JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def cluster():
    """(job API address, env for client commands) of a private Ray head; stopped and checked at the end."""
    with private_ray_cluster() as (address, env):
        yield address, env


def test_pipeline_runs_as_ray_job(cluster, tmp_path):
    from mlflow import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient

    address, env = cluster
    out = tmp_path / "out"
    db = f"sqlite:///{out}/mlruns.db"
    submission_id = f"test-{os.getpid()}-{time.time_ns() % 10**9}"
    overrides = [
        f"output_dir={out}",  # absolute: relative paths would land in the job's working-dir copy
        f"tracking.uri={db}",
        f"tracking.artifact_root={out}/mlartifacts",
        "data.synth.num_samples=12",
        "data.synth.samples_per_shard=4",
        "data.synth.workers=1",
        "probe.num_examples=4",
        "ray.num_workers=1",
        # What this test checks is the submit path (launch scripts, job logs, MLflow from inside the job);
        # the stages themselves are tested elsewhere, so they run at their smallest.
        "train.steps=2",
        "train.checkpoint_every=2",
        "eval.synth_samples=4",
        "eval.text_task_problems=4",
    ]
    cmd = ["bash", str(LAUNCH / "submit.sh"), "--address", address, "--submission-id", submission_id]
    cmd += ["--no-wait", "--", *overrides]
    submitted = _run(cmd, env, timeout=120)
    assert submitted.returncode == 0, f"submit.sh failed:\n{submitted.stdout}\n{submitted.stderr}"
    assert submitted.stdout.strip().splitlines()[-1] == submission_id

    with auth_mode("disabled"):  # the test cluster's mode; the SDK client reads it from this process
        client = JobSubmissionClient(address)
        status = wait_for_job(client, submission_id, JOB_TIMEOUT_S)
        message = client.get_job_info(submission_id).message

    logs = _run(["bash", str(LAUNCH / "logs.sh"), submission_id, "--address", address], env, timeout=60)
    log = logs.stdout
    if status != JobStatus.SUCCEEDED:
        pytest.fail(f"job {submission_id} ended {status} ({message}); ray job logs:\n{log}\n{logs.stderr}")

    selection = json.loads((out / "head_selection.json").read_text())
    assert selection["kv_indices"] and (out / "head_heatmap.png").is_file()
    probe_lines = [line for line in log.splitlines() if line.startswith("[probe]")]
    assert any("Ray workers ready" in line for line in probe_lines), log
    assert any("batches 2/2" in line for line in probe_lines), log  # 4 examples in batches of 2
    # The job's driver gave the train workers WORKER_ENV (Ray Train's print patch off): each line once.
    assert log.count("[train] step 2/2") == 1, log

    mlflow = MlflowClient(tracking_uri=db)
    experiments = mlflow.search_experiments()
    runs = mlflow.search_runs([e.experiment_id for e in experiments])
    assert runs, f"no MLflow run in {db}"
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    stages = {r.data.tags.get("imagelora.stage") for r in runs}
    assert "probe" in stages, stages


@pytest.mark.parametrize("marked_by", [None, "a symlink"])
def test_stop_refuses_unmarked_dir(tmp_path, marked_by):
    """Without start_cluster.sh's marker, stop_cluster.sh kills and deletes nothing and exits 2."""
    target = tmp_path / "not-a-cluster"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    if marked_by:
        (tmp_path / "elsewhere").write_text("")
        (target / ".imagelora-cluster").symlink_to(tmp_path / "elsewhere")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # A sleeper running in the directory: stop_cluster.sh would count it as a job driver and kill it.
    sleeper = subprocess.Popen(["sleep", "60"], cwd=target)
    try:
        stop = _run(["bash", str(LAUNCH / "stop_cluster.sh"), "--temp-dir", str(target), "--rm"], env, 30)
        assert stop.returncode == 2, stop.stdout + stop.stderr
        assert "not a temp dir of launch/start_cluster.sh" in stop.stderr
        assert sleeper.poll() is None and (target / "keep.txt").read_text() == "mine"
    finally:
        sleeper.kill()
        sleeper.wait()
