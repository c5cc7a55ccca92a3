"""End to end under `ray job submit`: launch/start_cluster.sh, launch/submit.sh, launch/stop_cluster.sh.

The test starts its own Ray head (never joins or stops anyone else's): every port it could collide on is
a free one picked here, and its temp dir is a fresh short directory under /tmp. `ray stop` is never
used, because it kills every Ray process of the user (other tests, other people's clusters); teardown
runs launch/stop_cluster.sh, which stops only the processes of this temp dir, and then checks that no
process mentioning the temp dir is left.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
JOB_TIMEOUT_S = 240
# Ports `ray start` would otherwise take at fixed defaults (GCS 6379, dashboard 8265, client server 10001,
# dashboard agent 52365) or that we pin so two clusters can never race for the same one.
PORT_FLAGS = (
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
)


def _free_ports(n: int) -> list[int]:
    """n distinct ports free on every interface (gcs_server and raylet listen on 0.0.0.0)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("", 0))
            ports.append(s.getsockname()[1])
        return ports


def _processes_using(temp_dir: str) -> list[str]:
    """'pid: cmdline' of live processes whose command line mentions `temp_dir` or whose current directory
    is inside it (a job driver), zombies excluded (they have no command line and no cwd)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue  # gone, or not ours
        if temp_dir in cmdline or cwd == temp_dir or cwd.startswith(temp_dir + "/"):
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster():
    """(job API address, env for client commands) of a private Ray head; stopped and checked at the end."""
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's unix sockets live below it
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no RAY_ADDRESS & co.
    env.update(
        RAY_AUTH_MODE="disabled",  # the cluster is started with --auth disabled; clients must match
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    dashboard, gcs, *others = _free_ports(2 + len(PORT_FLAGS))
    extra = [str(a) for pair in zip(PORT_FLAGS, others, strict=True) for a in pair]
    cmd = ["bash", str(LAUNCH / "start_cluster.sh"), "--cpus", "2", "--port", str(dashboard)]
    cmd += [
        "--gcs-port",
        str(gcs),
        "--temp-dir",
        temp_dir,
        "--object-store-memory",
        "300000000",
        "--auth",  # loopback test cluster; the default (token) would need a token in ~/.ray
        "disabled",
        "--",
        *extra,
    ]
    try:
        started = _run(cmd, env, timeout=120)
        assert started.returncode == 0, f"start_cluster.sh failed:\n{started.stdout}\n{started.stderr}"
        address = started.stdout.strip().splitlines()[-1]
        assert address == f"http://127.0.0.1:{dashboard}", started.stdout
        marker = (Path(temp_dir) / ".imagelora-cluster").read_text()  # what lets stop_cluster.sh act
        assert f"dashboard_port={dashboard}" in marker and f"gcs_port={gcs}" in marker
        yield address, env
    finally:
        stop = _run(
            ["bash", str(LAUNCH / "stop_cluster.sh"), "--temp-dir", temp_dir, "--rm"], env, timeout=90
        )
        leftovers = _processes_using(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert stop.returncode == 0, f"stop_cluster.sh failed:\n{stop.stdout}\n{stop.stderr}"
        assert not leftovers, "Ray processes of the test cluster still running:\n" + "\n".join(leftovers)


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
    ]
    cmd = ["bash", str(LAUNCH / "submit.sh"), "--address", address, "--submission-id", submission_id]
    cmd += ["--no-wait", "--", "--config", "configs/tiny.yaml", *overrides]
    submitted = _run(cmd, env, timeout=120)
    assert submitted.returncode == 0, f"submit.sh failed:\n{submitted.stdout}\n{submitted.stderr}"
    assert submitted.stdout.strip().splitlines()[-1] == submission_id

    old_auth = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # the SDK client reads it from this process's environment
    try:
        client = JobSubmissionClient(address)
        deadline = time.monotonic() + JOB_TIMEOUT_S
        status = client.get_job_status(submission_id)
        while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            if time.monotonic() > deadline:
                client.stop_job(submission_id)
                break
            time.sleep(1)
            status = client.get_job_status(submission_id)
        message = client.get_job_info(submission_id).message
    finally:
        if old_auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old_auth

    logs = _run(["bash", str(LAUNCH / "logs.sh"), submission_id, "--address", address], env, timeout=60)
    log = logs.stdout
    if status != JobStatus.SUCCEEDED:
        pytest.fail(f"job {submission_id} ended {status} ({message}); ray job logs:\n{log}\n{logs.stderr}")

    selection = json.loads((out / "head_selection.json").read_text())
    assert selection["kv_indices"] and (out / "head_heatmap.png").is_file()
    probe_lines = [line for line in log.splitlines() if line.startswith("[probe]")]
    assert any("Ray workers ready" in line for line in probe_lines), log
    assert any("batches 2/2" in line for line in probe_lines), log  # 4 examples in batches of 2

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
