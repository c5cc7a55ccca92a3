"""The MLflow Deployment of k8s/cpu/ run as written: its init container's `mlflow db upgrade`, then its
`mlflow server` command, env and args, with Kubernetes' $(VAR) expansion done here.

What is changed to run it on this machine (nothing else):
  * MLFLOW_BACKEND_STORE_URI: the postgresql:// URL the pod builds from the Secret is checked, then replaced
    by a sqlite file (no PostgreSQL here);
  * the artifact volume's mount path (/mlflow/artifacts) becomes a test directory;
  * --host 0.0.0.0 -> 127.0.0.1, --port 5000 -> a free port, --workers 2 -> 1 (2 cores here).
Then clients use it the way the Ray pods do: with the Service's name in the Host header.
"""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from k8s_schemas.manifests import PROJECT_SECRET, map_paths, one, secret_env_keys, variant_docs
from ray_cluster import free_ports, group_members, stop_group

pytestmark = pytest.mark.integration  # Ray clusters, DeepSpeed runs, servers: not in make test-fast

BIN = Path(sys.executable).parent
# Stand-ins for the Secret's values (the real ones come from k8s/secrets.env).
FAKE_SECRET = {
    "POSTGRES_USER": "mlflow",
    "POSTGRES_PASSWORD": "pw-0123456789abcdef",
    "POSTGRES_DB": "mlflow",
    "POSTGRES_HOST": "postgres",
    "POSTGRES_PORT": "5432",
}


def k8s_expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of command, args and env values: $(VAR) of a defined variable, $$ -> $."""

    def repl(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", repl, text)


def container_env(container: dict, secret: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it (in order, each value expanded)."""
    env: dict[str, str] = {}
    for e in container.get("env") or []:
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == PROJECT_SECRET
            if ref["key"] in secret:
                env[e["name"]] = secret[ref["key"]]
            else:
                assert ref.get("optional"), f"{e['name']}: key {ref['key']} missing from the Secret"
        else:
            env[e["name"]] = k8s_expand(e.get("value", ""), env)
    return env


def request(port: int, path: str, host: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_mlflow_deployment_runs_as_written(tmp_path):
    from mlflow import MlflowClient

    docs = variant_docs("cpu")
    pod = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (server,) = pod["containers"]
    service = one(docs, "Service", "mlflow")
    namespace, service_port = service["metadata"]["namespace"], service["spec"]["ports"][0]["port"]
    keys, _ = secret_env_keys()
    assert set(FAKE_SECRET) <= set(keys), (
        "the Secret keys the test stands in for exist in secrets.env.example"
    )

    # The URL the pod builds from the Secret, then the sqlite stand-in.
    env = container_env(server, FAKE_SECRET)
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql://mlflow:pw-0123456789abcdef@postgres:5432/mlflow"
    assert container_env(init, FAKE_SECRET) == env, "init container and server use the same database"
    db = tmp_path / "mlflow.db"
    env["MLFLOW_BACKEND_STORE_URI"] = f"sqlite:///{db}"

    (mount,) = server["volumeMounts"]
    artifacts = tmp_path / "artifacts"
    mapping = {mount["mountPath"]: str(artifacts)}
    port = free_ports(1)[0]
    args = [map_paths(k8s_expand(a, env), mapping) for a in server["args"]]
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port)), ("--workers", "1")):
        args[args.index(flag) + 1] = value
    assert f"--artifacts-destination {artifacts}" in " ".join(args)
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    proc_env.update(
        env, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", MLFLOW_DISABLE_TELEMETRY="true"
    )

    # 1. the init container: creates the schema on the empty database
    init_cmd = [k8s_expand(a, env) for a in init["command"] + init.get("args", [])]
    assert init_cmd[:3] == ["mlflow", "db", "upgrade"]
    done = subprocess.run(init_cmd, env=proc_env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and db.is_file(), done.stdout + done.stderr

    # 2. the server
    log = (tmp_path / "server.log").open("w")
    cmd = server["command"] + args
    proc = subprocess.Popen(
        cmd, env=proc_env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        probe = server["readinessProbe"]["httpGet"]
        assert probe["port"] in {p["name"] for p in server["ports"]}
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, _ = request(port, probe["path"], f"10.1.2.3:{port}")  # the kubelet: the pod IP
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert status == 200, (
            f"readiness probe {probe['path']}: {status}\n{(tmp_path / 'server.log').read_text()}"
        )

        # Host headers of in-cluster clients (MLFLOW_TRACKING_URI, the GPU config's http://mlflow:5000) and
        # of a local port-forward are served; any other host is refused (DNS-rebinding protection).
        search = "/api/2.0/mlflow/experiments/search?max_results=5"
        for host in (f"mlflow.{namespace}.svc:{service_port}", f"mlflow:{service_port}", "localhost:5000"):
            code, body = request(port, search, host)
            assert code == 200, f"Host {host}: HTTP {code} {body[:200]!r}"
        code, _ = request(port, search, "evil.example.com")
        assert code in (400, 403), f"a foreign Host header got HTTP {code}"

        # A client logs a run with an artifact: it lands in the artifact volume, proxied by the server.
        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        exp = client.create_experiment("k8s-test")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "loss", 0.5)
        note = tmp_path / "note.txt"
        note.write_text("hello")
        client.log_artifact(run.info.run_id, str(note), artifact_path="notes")
        client.set_terminated(run.info.run_id)
        stored = [p for p in artifacts.rglob("note.txt")]
        assert len(stored) == 1 and stored[0].read_text() == "hello", list(artifacts.rglob("*"))
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    finally:
        stop_group(proc)
        log.close()
    assert not group_members(proc.pid), "processes of the MLflow server's group are still running"
