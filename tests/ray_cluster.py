"""Private Ray clusters for tests: a single-node head for tests that submit jobs
(tests/integration/test_ray_job.py, tests/integration/test_k8s_rayjob.py), and a head plus worker nodes as
separate raylets on this machine (tests/integration/test_multinode.py, through conftest's `ray_nodes`).

A cluster never joins or stops anyone else's: every port it could collide on is a free one picked here, and
each node's temp dir is a fresh short directory under /tmp. `ray stop` is never used, because it kills every
Ray process of the user (other tests, other people's clusters); teardown runs launch/stop_cluster.sh per node,
which stops only the processes of that temp dir (and the Ray client server of its node id), and then checks
that no process mentioning a temp dir or node id is left.

Use it from a test module as

    @pytest.fixture(scope="module")
    def cluster():
        with private_ray_cluster() as (address, env):
            yield address, env
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from netns_hosts import Hosts, private_hosts

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


def marker_node_ids(temp_dir: str) -> list[str]:
    """The node ids start_cluster.sh recorded in `temp_dir`'s marker."""
    marker = Path(temp_dir) / ".imagelora-cluster"
    text = marker.read_text() if marker.is_file() else ""
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("node_id=")]


def processes_using(temp_dir: str, node_ids: Sequence[str] = ()) -> list[str]:
    """'pid: cmdline' of live processes whose command line mentions `temp_dir` or one of `node_ids` (the Ray
    client server names only its node id) or whose current directory is inside `temp_dir` (a job driver),
    zombies excluded (they have no command line and no cwd)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue  # gone, or not ours
        named = temp_dir in cmdline or any(node_id in cmdline for node_id in node_ids)
        if named or cwd == temp_dir or cwd.startswith(temp_dir + "/"):
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def parents() -> dict[int, int]:
    """pid -> parent pid of every live (non-zombie) process."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] != "Z":
            out[int(stat.parent.name)] = int(fields[1])
    return out


def node_pids(temp_dir: str) -> list[int]:
    """The processes of one node: those naming its temp dir or node id (raylet, log_monitor, agents, the
    client server) and everything below them (workers rename themselves `ray::...` and name neither)."""
    found = {int(line.split(":", 1)[0]) for line in processes_using(temp_dir, marker_node_ids(temp_dir))}
    tree = parents()
    grew = True
    while grew:
        below = {pid for pid, parent in tree.items() if parent in found} - found
        found |= below
        grew = bool(below)
    return sorted(found - {os.getpid()})


def kill_node(temp_dir: str, timeout: float = 30) -> list[int]:
    """A node lost at once: SIGKILL to its raylet, its workers and its log_monitor (else an orphan), with
    no goodbye to the GCS; returns the pids killed, after they are gone."""
    pids = node_pids(temp_dir)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while (left := [p for p in node_pids(temp_dir) if p in pids]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes of {temp_dir} outlived SIGKILL: {left}"
    return pids


def run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run `cmd` from the repo root, capturing text output."""
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def client_env(token_path: str = "") -> dict[str, str]:
    """This process's environment without RAY_* (no RAY_ADDRESS & co.) and AWS_* (credentials must reach
    the workers through a job's runtime env, not the nodes' environment), plus what the test cluster needs:
    token auth with the token in `token_path`, else auth disabled."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    if token_path:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path)
    env.update(
        RAY_AUTH_MODE=env.get("RAY_AUTH_MODE", "disabled"),  # the cluster's --auth; clients must match
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        # as conftest.py sets it for the in-process Ray (finished training runs are seen sooner)
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"),
    )
    return env


def start_head(
    temp_dir: str, env: dict[str, str], cpus: int, node_ip: str = "", health_check: str = ""
) -> tuple[str, str]:
    """(job API address, GCS address) of a Ray head started by launch/start_cluster.sh on free ports (at
    `node_ip`, with `--health-check health_check`, where given); auth as `env` says."""
    dashboard, gcs, *others = free_ports(2 + len(PORT_FLAGS))
    extra = [str(a) for pair in zip(PORT_FLAGS, others, strict=True) for a in pair]
    cmd = ["bash", str(LAUNCH / "start_cluster.sh"), "--cpus", str(cpus), "--port", str(dashboard)]
    cmd += ["--node-ip-address", node_ip] if node_ip else []
    cmd += ["--health-check", health_check] if health_check else []
    cmd += [
        "--gcs-port",
        str(gcs),
        "--temp-dir",
        temp_dir,
        "--object-store-memory",
        "300000000",
        "--auth",  # loopback test clusters: disabled (token would need a token in ~/.ray); else token
        env["RAY_AUTH_MODE"],
        "--",
        *extra,
    ]
    started = run(cmd, env, timeout=120)
    assert started.returncode == 0, f"start_cluster.sh failed:\n{started.stdout}\n{started.stderr}"
    address = started.stdout.strip().splitlines()[-1]
    assert address == f"http://127.0.0.1:{dashboard}", started.stdout
    marker = (Path(temp_dir) / ".imagelora-cluster").read_text()  # what lets stop_cluster.sh act
    assert f"dashboard_port={dashboard}" in marker and f"gcs_port={gcs}" in marker
    assert marker_node_ids(temp_dir), marker
    gcs_address = (Path(temp_dir) / "ray_current_cluster").read_text().strip() or f"127.0.0.1:{gcs}"
    assert not node_ip or gcs_address == f"{node_ip}:{gcs}", gcs_address
    return address, gcs_address


# A worker node's own ports (the client server port is the head's only).
WORKER_PORT_FLAGS = tuple(f for f in PORT_FLAGS if f != "--ray-client-server-port")


def start_worker(
    gcs_address: str,
    temp_dir: str,
    env: dict[str, str],
    cpus: int,
    resources: dict,
    hide: Sequence[str] = (),
    stage: str = "",
    host: Sequence[str] = (),
) -> None:
    """A worker node of the head at `gcs_address`, started by launch/start_cluster.sh --join (in a mount
    namespace that hides `hide`, see `hiding`; run under the prefix `host`, a network namespace's)."""
    extra = [
        str(a)
        for pair in zip(WORKER_PORT_FLAGS, free_ports(len(WORKER_PORT_FLAGS)), strict=True)
        for a in pair
    ]
    cmd = ["bash", str(LAUNCH / "start_cluster.sh"), "--join", gcs_address, "--cpus", str(cpus)]
    cmd += ["--temp-dir", temp_dir, "--object-store-memory", "200000000", "--auth", env["RAY_AUTH_MODE"]]
    cmd += ["--resources", json.dumps(resources), "--", *extra]
    started = run([*host, *hiding(hide, cmd, stage)], env, timeout=120)
    assert started.returncode == 0, f"start_cluster.sh --join failed:\n{started.stdout}\n{started.stderr}"
    assert marker_node_ids(temp_dir), (Path(temp_dir) / ".imagelora-cluster").read_text()


def stop_node(temp_dir: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    """launch/stop_cluster.sh --rm on one node's temp dir; (its result, processes of the node still alive)."""
    node_ids = marker_node_ids(temp_dir)
    stop = run(["bash", str(LAUNCH / "stop_cluster.sh"), "--temp-dir", temp_dir, "--rm"], env, timeout=90)
    leftovers = processes_using(temp_dir, node_ids)
    shutil.rmtree(temp_dir, ignore_errors=True)
    return stop, leftovers


@contextmanager
def private_ray_cluster(cpus: int = 2) -> Iterator[tuple[str, dict[str, str]]]:
    """(job API address, env for client commands) of a private Ray head; stopped and checked at the end."""
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's unix sockets live below it
    env = client_env()
    try:
        address, _ = start_head(temp_dir, env, cpus)
        yield address, env
    finally:
        stop, leftovers = stop_node(temp_dir, env)
        assert stop.returncode == 0, f"stop_cluster.sh failed:\n{stop.stdout}\n{stop.stderr}"
        assert not leftovers, "Ray processes of the test cluster still running:\n" + "\n".join(leftovers)


@dataclass
class WorkerNode:
    """One worker raylet of `private_ray_nodes`: its custom resource, temp dir and scratch dir (its TMPDIR;
    "" where the node has a private /tmp of its own, which is then its TMPDIR)."""

    resource: str
    temp_dir: str
    scratch: str


@dataclass
class RayNodes:
    """A head (0 CPUs) and worker nodes on this machine, each a raylet with its own temp and scratch dir."""

    address: str  # the job API, http://127.0.0.1:PORT
    gcs_address: str  # what ray.init(address=...) joins
    env: dict[str, str]  # for client commands (ray, launch/*.sh)
    head_dir: str
    workers: list[WorkerNode] = field(default_factory=list)
    start_s: float = 0.0
    hidden: list[str] = field(default_factory=list)  # paths the worker nodes cannot see (each its own copy)
    cpus_per_worker: int = 1
    hosts: Hosts | None = None  # the worker nodes' network namespaces (node_wI in host wI), if any
    net: str = ""  # how the nodes are networked, in words (said in the test output)


def unshare_prefix() -> list[str]:
    """The command prefix that runs a command in a private mount namespace (`unshare -m`), or [] where this
    process may not mount there (not root, or no CAP_SYS_ADMIN as in most containers); probed with a mount."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return []  # a user namespace would do as non-root, but Ray inside one is untested
    prefix = ["unshare", "-m", "--propagation", "private"]
    with tempfile.TemporaryDirectory() as target:
        probe = subprocess.run([*prefix, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", target],
                               capture_output=True, timeout=30)  # fmt: skip
    return prefix if probe.returncode == 0 else []


# Run in a node's mount namespace: $1 a staging dir, then hidden paths, --, kept paths, --, the command.
# Kept paths (the Python the node runs, under a hidden $HOME) are bind-mounted aside, each hidden path gets
# an empty tmpfs of its own, and the kept paths are mounted back in place.
_HIDE_SCRIPT = r"""
stage=$1; shift; hide=""
while [ "$1" != -- ]; do hide="$hide $1"; shift; done; shift
n=0; keep=""
while [ "$1" != -- ]; do
    n=$((n + 1)); mkdir -p "$stage/$n" && mount --bind "$1" "$stage/$n" || exit 1; keep="$keep $1"; shift
done; shift
for h in $hide; do mount -t tmpfs -o mode=1777 tmpfs "$h" || exit 1; done
n=0
for k in $keep; do
    n=$((n + 1)); mkdir -p "$k" && mount --bind "$stage/$n" "$k" && umount -l "$stage/$n" || exit 1
done
exec "$@"
"""


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def hiding(paths: Sequence[str], cmd: list[str], stage: str = "") -> list[str]:
    """`cmd` run in a private mount namespace with an empty tmpfs over each of `paths` (what a node on
    another host would not see; a path under another one is covered with it), or `cmd` itself where
    namespaces are not allowed. What this machine's Python needs under a hidden path (an interpreter
    under $HOME, the checkout) stays visible, through `stage` (an empty directory outside `paths`)."""
    prefix = unshare_prefix() if paths else []
    if not prefix:
        return cmd
    real = sorted({os.path.realpath(p) for p in paths}, key=len)
    tops = [p for i, p in enumerate(real) if not _under(p, real[:i])]
    needed = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, str(REPO))}
    keep = sorted(p for p in needed if _under(p, tops))
    if keep and not stage:
        raise ValueError(f"hiding {tops} needs a staging dir to keep {keep} visible")
    return [*prefix, "sh", "-c", _HIDE_SCRIPT, "sh", stage or "/", *tops, "--", *keep, "--", *cmd]


def private_paths() -> list[str]:
    """What each worker node gets a private, empty copy of where namespaces are allowed: /tmp and $HOME."""
    return ["/tmp", os.path.realpath(os.path.expanduser("~"))]


def _worker_dirs(number: str, private: bool) -> WorkerNode:
    """A worker node's temp dir (outside /tmp when /tmp is private to it: the driver's side manages it)
    and scratch dir (none of its own when /tmp is private: that is its TMPDIR)."""
    base = "/var/tmp" if private else "/tmp"
    temp_dir = tempfile.mkdtemp(prefix=f"rw{number}", dir=base)  # short: Ray's unix sockets live below it
    scratch = "" if private else tempfile.mkdtemp(prefix=f"imagelora-w{number}-scratch-")
    return WorkerNode(f"node_w{number}", temp_dir, scratch)


def _start_worker_node(nodes: RayNodes, node: WorkerNode) -> None:
    env = {**nodes.env, "TMPDIR": node.scratch or "/tmp"}
    # Outside /tmp and $HOME (and not in the temp dir, which start_cluster.sh wants empty); only the start
    # uses it.
    stage = tempfile.mkdtemp(prefix="imagelora-stage-", dir="/var/tmp") if nodes.hidden else ""
    host = nodes.hosts.run_in(node.resource.removeprefix("node_")) if nodes.hosts else []
    try:
        start_worker(nodes.gcs_address, node.temp_dir, env, nodes.cpus_per_worker, {node.resource: 1},
                     hide=nodes.hidden, stage=stage, host=host)  # fmt: skip
    finally:
        if stage:
            shutil.rmtree(stage, ignore_errors=True)


# The GCS health check of the test clusters (start_cluster.sh --health-check): a killed node is declared dead
# after 5 failed checks 1 s apart (~5 s), a cut-off one after 5 x (1 s + 2 s timeout) (~15 s).
TEST_HEALTH_CHECK = "1000,2000,5"


def _token_file() -> str:
    """A fresh auth token in a 0600 file under /var/tmp (the worker nodes' private /tmp would hide it)."""
    folder = tempfile.mkdtemp(prefix="imagelora-token-", dir="/var/tmp")
    path = os.path.join(folder, "auth_token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


@contextmanager
def private_ray_nodes(
    workers: int = 2, cpus_per_worker: int = 1, hide: Sequence[str] = (), own_addresses: bool = True
) -> Iterator[RayNodes]:
    """A head with 0 CPUs (so work lands on the workers) plus `workers` worker nodes tagged with the custom
    resources node_w1, node_w2 ...; every node stopped and checked at the end.
    With `own_addresses`, where the machine allows (tests/netns_hosts.py: root, iproute2, no IPv4
    forwarding), worker node node_wI runs in network namespace wI at 10.77.0.(I+1) on a private bridge, the
    head in this namespace at the bridge's 10.77.0.1, with token auth; else every node is on this machine's
    address, auth disabled (`RayNodes.net` says which). Each worker node runs in its own mount namespace with
    `hide` (directories of the driver's side), /tmp and $HOME covered by an empty tmpfs of its own, where
    the machine allows it (`RayNodes.hidden`): no disk shared with the driver or with each other but the
    checkout and the Python they run."""
    t0 = time.monotonic()
    with ExitStack() as stack:
        why: list[str] = [] if own_addresses else ["not asked"]
        hosts = stack.enter_context(private_hosts(workers, why)) if own_addresses else None
        token = _token_file() if hosts else ""
        if token:
            stack.callback(shutil.rmtree, os.path.dirname(token), True)
        env = client_env(token)
        nodes = RayNodes(
            "", "", env, tempfile.mkdtemp(prefix="rh", dir="/tmp"), cpus_per_worker=cpus_per_worker
        )
        nodes.hosts = hosts
        if hosts:
            addrs = ", ".join(f"node_{h} {a}" for h, a in hosts.addrs.items())
            nodes.net = (
                f"own addresses on bridge {hosts.bridge}: head {hosts.bridge_addr}, {addrs}; token auth"
            )
        else:
            reason = "; ".join(why)
            nodes.net = (
                f"loopback nodes on this machine's address, auth disabled (no network namespaces: {reason})"
            )
        nodes.hidden = [*hide, *private_paths()] if hide and unshare_prefix() else []
        try:
            # Ray Train's controller (a process of the head) may restart an elastic group before the GCS has
            # declared a lost node dead, at its old size, and wait for it one start timeout (60 s by default)
            # before it shrinks the group: 20 s here.
            head_env = {**env, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20"}
            nodes.address, nodes.gcs_address = start_head(
                nodes.head_dir, head_env, cpus=0, node_ip=hosts.bridge_addr if hosts else "",
                health_check=TEST_HEALTH_CHECK,
            )  # fmt: skip
            for i in range(1, workers + 1):
                node = _worker_dirs(str(i), private=bool(nodes.hidden))
                nodes.workers.append(node)
                # TMPDIR: the node's raylet and every worker process it starts use its scratch dir (or /tmp).
                _start_worker_node(nodes, node)
            nodes.start_s = time.monotonic() - t0
            yield nodes
        finally:
            problems = []
            for temp_dir in [w.temp_dir for w in nodes.workers] + [nodes.head_dir]:  # the GCS last
                stop, leftovers = stop_node(temp_dir, env)
                if stop.returncode != 0:
                    problems.append(f"stop_cluster.sh {temp_dir} failed:\n{stop.stdout}\n{stop.stderr}")
                if leftovers:
                    problems.append(f"processes of {temp_dir} still running:\n" + "\n".join(leftovers))
            for w in nodes.workers:
                if w.scratch:
                    shutil.rmtree(w.scratch, ignore_errors=True)
            assert not problems, "\n".join(problems)


def replace_worker(nodes: RayNodes, index: int) -> WorkerNode:
    """A fresh worker node in place of `nodes.workers[index]` (killed, or to be lost): the old node's
    leftovers stopped and checked (stop_cluster.sh), a new raylet with the same custom resource started."""
    old = nodes.workers[index]
    stop, leftovers = stop_node(old.temp_dir, nodes.env)
    assert stop.returncode == 0 and not leftovers, f"{stop.stdout}\n{stop.stderr}\n{leftovers}"
    if old.scratch:
        shutil.rmtree(old.scratch, ignore_errors=True)
    node = _worker_dirs(old.resource.removeprefix("node_w"), private=bool(nodes.hidden))
    nodes.workers[index] = node
    _start_worker_node(nodes, node)
    return node


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


@contextmanager
def auth_mode(mode: str, token_path: str = "") -> Iterator[None]:
    """RAY_AUTH_MODE set to `mode` (and RAY_AUTH_TOKEN_PATH to `token_path`, if given) in this process while
    open (Ray's clients read them from here)."""
    wanted = {"RAY_AUTH_MODE": mode, **({"RAY_AUTH_TOKEN_PATH": token_path} if token_path else {})}
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    _reload_ray_auth()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reload_ray_auth()


def _reload_ray_auth() -> None:
    """Make this process's Ray read RAY_AUTH_MODE and the token again: both are cached at first use (as
    Ray's own ray.init does when it turns token mode on)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def node_auth(nodes: RayNodes) -> contextlib.AbstractContextManager[None]:
    """`auth_mode` as the clients of `nodes` need it (token or disabled)."""
    return auth_mode(nodes.env["RAY_AUTH_MODE"], nodes.env.get("RAY_AUTH_TOKEN_PATH", ""))


def wait_for_job(client: object, submission_id: str, timeout_s: float) -> object:
    """Poll a Ray job until it ends, or stop it after `timeout_s`; its last status (a JobStatus)."""
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(submission_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.monotonic() > deadline:
            client.stop_job(submission_id)
            break
        time.sleep(1)
        status = client.get_job_status(submission_id)
    return status
