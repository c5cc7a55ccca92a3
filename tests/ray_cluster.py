"""A private, single-node Ray head for tests that submit jobs (tests/integration/test_ray_job.py.py, tests/integration/test_k8s_rayjob.py.py).

The cluster never joins or stops anyone else's: every port it could collide on is a free one picked here, and
its temp dir is a fresh short directory under /tmp. `ray stop` is never used, because it kills every Ray
process of the user (other tests, other people's clusters); teardown runs launch/stop_cluster.sh, which stops
only the processes of this temp dir, and then checks that no process mentioning the temp dir is left.

Use it from a test module as

    @pytest.fixture(scope="module")
    def cluster():
        with private_ray_cluster() as (address, env):
            yield address, env
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
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


def free_ports(n: int) -> list[int]:
    """n distinct ports free on every interface (gcs_server and raylet listen on 0.0.0.0)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("", 0))
            ports.append(s.getsockname()[1])
        return ports


def processes_using(temp_dir: str) -> list[str]:
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


def run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run `cmd` from the repo root, capturing text output."""
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def client_env() -> dict[str, str]:
    """This process's environment without RAY_* (no RAY_ADDRESS & co.), plus what the test cluster needs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="disabled",  # the cluster is started with --auth disabled; clients must match
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        # as conftest.py sets it for the in-process Ray (finished training runs are seen sooner)
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"),
    )
    return env


@contextmanager
def private_ray_cluster(cpus: int = 2) -> Iterator[tuple[str, dict[str, str]]]:
    """(job API address, env for client commands) of a private Ray head; stopped and checked at the end."""
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's unix sockets live below it
    env = client_env()
    dashboard, gcs, *others = free_ports(2 + len(PORT_FLAGS))
    extra = [str(a) for pair in zip(PORT_FLAGS, others, strict=True) for a in pair]
    cmd = ["bash", str(LAUNCH / "start_cluster.sh"), "--cpus", str(cpus), "--port", str(dashboard)]
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
        started = run(cmd, env, timeout=120)
        assert started.returncode == 0, f"start_cluster.sh failed:\n{started.stdout}\n{started.stderr}"
        address = started.stdout.strip().splitlines()[-1]
        assert address == f"http://127.0.0.1:{dashboard}", started.stdout
        marker = (Path(temp_dir) / ".imagelora-cluster").read_text()  # what lets stop_cluster.sh act
        assert f"dashboard_port={dashboard}" in marker and f"gcs_port={gcs}" in marker
        yield address, env
    finally:
        stop = run(["bash", str(LAUNCH / "stop_cluster.sh"), "--temp-dir", temp_dir, "--rm"], env, timeout=90)
        leftovers = processes_using(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert stop.returncode == 0, f"stop_cluster.sh failed:\n{stop.stdout}\n{stop.stderr}"
        assert not leftovers, "Ray processes of the test cluster still running:\n" + "\n".join(leftovers)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(stat.parent.name))
    return found


def stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM to the process group `proc` leads (started with start_new_session=True), SIGKILL to what
    outlives `grace` seconds; then reap `proc`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not group_members(proc.pid):
            break
    proc.wait(timeout=10)


def run_in_group(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[int | None, str]:
    """(exit code or None on timeout, stdout+stderr) of `cmd` run in its own process group; the whole group
    (children such as `ray job logs --follow` included) is stopped on timeout and checked gone."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        stop_group(proc)
        out, _ = proc.communicate()  # what the group wrote before it was stopped
        code = None
    finally:
        if group_members(proc.pid):
            stop_group(proc)
    assert not group_members(proc.pid), f"processes of {cmd[:3]} still running"
    return code, out
