"""The production tracking stack for tests: a real `mlflow server` process with a SQL backend (a sqlite file
here; PostgreSQL in k8s) whose artifacts go to an S3 bucket (the moto server of tests/s3_server.py),
proxied through the server (--serve-artifacts): clients need only the tracking URI, and no artifact
touches a local disk.

    with moto_s3("bucket") as s3, mlflow_server(tmp_dir, s3, "s3://bucket/mlartifacts") as server:
        MlflowClient(tracking_uri=server.uri) ...

The flags are the k8s MLflow manifest's (tests/deploy/test_k8s_manifests.py compares them); `host` is where
it listens: 127.0.0.1, or an address the test's other nodes reach it at (its port is free on every
interface).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ray_cluster import free_ports, group_members, stop_group

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120  # about 12 s on an idle machine (STACK.md); 2 busy cores can take several times that


@dataclass
class MlflowServer:
    """A running tracking server: its URI, command line, the directory it runs in and its log."""

    uri: str
    command: list[str]
    workdir: Path
    log: Path
    destination: str


def server_command(destination: str, host: str, port: int) -> list[str]:
    """The `mlflow server` command line with artifacts proxied to `destination` (the backend store comes from
    MLFLOW_BACKEND_STORE_URI, as in the k8s Deployment, where it holds the database password)."""
    allowed = ",".join(dict.fromkeys([host, f"{host}:{port}", "127.0.0.1:*", "localhost:*"]))
    return [
        str(BIN / "mlflow"),
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--serve-artifacts",
        "--artifacts-destination",
        destination,
        "--allowed-hosts",
        allowed,
    ]


def server_env(backend_uri: str, s3_env: dict[str, str]) -> dict[str, str]:
    """This process's environment without its MLFLOW_*/AWS_*, plus the backend store's URI and the bucket's
    credentials and endpoint."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(s3_env, MLFLOW_DISABLE_TELEMETRY="true", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env["MLFLOW_BACKEND_STORE_URI"] = backend_uri
    # The endpoint as the k8s Deployment gives it (MLflow's own variable), so that is what is tested.
    endpoint = env.pop("AWS_ENDPOINT_URL", None)
    if endpoint:
        env["MLFLOW_S3_ENDPOINT_URL"] = endpoint
    # The GenAI job runner (huey consumer processes) is not used by training runs; without it the server
    # starts sooner and exits on SIGTERM at once instead of waiting out its consumers.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return env


@contextmanager
def mlflow_server(
    workdir: Path, s3_env: dict[str, str], destination: str, host: str = "127.0.0.1"
) -> Iterator[MlflowServer]:
    """An `mlflow server` on a sqlite file in `workdir` with artifacts in `destination` (s3://...), ready to
    use; stopped at the end (its whole process group, checked gone)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_ports(1)[0]
    cmd = server_command(destination, host, port)
    backend = f"sqlite:///{workdir / 'mlflow.db'}"
    log_path = workdir / "server.log"
    uri = f"http://{host}:{port}"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd,
            env=server_env(backend, s3_env),
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_healthy(uri, proc, log_path)
            yield MlflowServer(uri, cmd, workdir, log_path, destination)
        finally:
            stop_group(proc)
    assert not group_members(proc.pid), "processes of the MLflow server's group are still running"


def _wait_healthy(uri: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy within {START_TIMEOUT_S} s:\n{log.read_text()}")
