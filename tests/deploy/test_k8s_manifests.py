"""k8s/: schema validation (KubeRay v1.7.0 CRDs, core kinds, unknown fields rejected), security rules, secrets,
and the references between objects that no schema checks (claims, secrets, services, images, capacity)."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from k8s_schemas.manifests import (
    IMAGE_ROOT,
    JOBS,
    K8S,
    PROJECT_SECRET,
    REPO,
    SHARED_SCHEMAS,
    VARIANTS,
    VENDORED_SCHEMAS,
    all_containers,
    all_docs,
    entrypoint_argv,
    env_value,
    find,
    label,
    load_docs,
    manifest_files,
    one,
    path_map,
    pod_specs,
    runtime_env,
    secret_env_keys,
    submit_sh_command,
    variant_docs,
)

from imagelora_dist.config import load_config
from imagelora_dist.offline_env import OFFLINE_ENV

VENDORED_FILES = ("validate_manifests.py", "raycluster-ray.io-v1.json", "rayjob-ray.io-v1.json")
SECRET_NAME = re.compile(r"(^|_)(PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIALS?|PRIVATE_KEY)(_|$)")
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "m": 1e-3}


def validator() -> Path:
    """The shared validator when this checkout sits beside the shared folder, else the vendored copy."""
    shared = SHARED_SCHEMAS / "validate_manifests.py"
    return shared if shared.is_file() else VENDORED_SCHEMAS / "validate_manifests.py"


def validate(*paths: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(validator()), "--strict", *map(str, paths)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity as a number (cores, bytes, devices)."""
    text = str(value)
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    assert m and (not m.group(2) or m.group(2) in UNITS), f"not a quantity: {value!r}"
    return float(m.group(1)) * UNITS.get(m.group(2), 1)


# ------------------------------------------------------------------------------------------ validation


def test_every_manifest_validates_strict():
    files = manifest_files()
    n_docs = sum(len(load_docs(p)) for p in files)
    assert n_docs >= 14, f"only {n_docs} documents under k8s/"
    result = validate(K8S)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    lines = [line for line in result.stdout.splitlines() if re.match(r"^(PASS|FAIL|UNCHECKED|SKIP)\s", line)]
    assert len(lines) == n_docs and all(line.startswith("PASS") for line in lines), out
    assert (
        f"summary: {len(files)} file(s), {n_docs} passed, 0 failed, 0 unchecked, 0 skipped (--strict)" in out
    )


def test_validator_rejects_broken_manifests(tmp_path):
    """The same validator run fails on a misspelled RayJob field and an unknown Deployment field, so the
    PASS above means something."""
    job = load_docs(JOBS["cpu"])[0]
    job["spec"]["entryPoint"] = job["spec"].pop("entrypoint")
    mlflow = one(variant_docs("cpu"), "Deployment", "mlflow")
    mlflow["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {"privileged": False}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump_all([job, mlflow]))
    result = validate(tmp_path / "bad.yaml")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "unknown field 'entryPoint'" in result.stdout and "securityContex" in result.stdout, result.stdout
    assert result.stdout.count("\nFAIL") == 2, result.stdout


def test_vendored_validator_and_schemas():
    """tests/k8s_schemas/ holds what validation needs without the shared folder, identical to it when present."""
    for name in VENDORED_FILES:
        vendored = VENDORED_SCHEMAS / name
        assert vendored.is_file(), f"{vendored} is missing"
        if name.endswith(".json"):
            schema = json.loads(vendored.read_text())
            assert schema["$schema"].endswith("2020-12/schema") and "spec" in schema["properties"]
        if SHARED_SCHEMAS.is_dir():
            assert vendored.read_bytes() == (SHARED_SCHEMAS / name).read_bytes(), (
                f"{vendored} differs from {SHARED_SCHEMAS / name}: copy it again (tests/k8s_schemas/README.md)"
            )
    readme = (VENDORED_SCHEMAS / "README.md").read_text()
    assert "Apache License 2.0" in readme and "v1.7.0" in readme


# -------------------------------------------------------------------------------------------- security


def container_problems(where: str, c: dict, pod: dict) -> list[str]:
    """What makes one container unfit for the restricted namespace: root, privilege, missing limits."""
    problems = []
    sc = c.get("securityContext") or {}
    if sc.get("runAsNonRoot") is not True:
        problems.append(f"{where}: securityContext.runAsNonRoot is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: securityContext.allowPrivilegeEscalation is not false")
    if sc.get("privileged"):
        problems.append(f"{where}: privileged")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []) or (sc.get("capabilities") or {}).get(
        "add"
    ):
        problems.append(f"{where}: capabilities must drop ALL and add none")
    for level, ctx in (("container", sc), ("pod", pod.get("securityContext") or {})):
        if ctx.get("runAsUser") == 0 or ctx.get("runAsGroup") == 0:
            problems.append(f"{where}: {level} runs as uid/gid 0")
    if (pod.get("securityContext") or {}).get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: pod securityContext.seccompProfile is not RuntimeDefault")
    res = c.get("resources") or {}
    for part in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in (res.get(part) or {}):
                problems.append(f"{where}: resources.{part}.{r} missing")
    for r, request in (res.get("requests") or {}).items():
        limit = (res.get("limits") or {}).get(r)
        if limit is not None and quantity(request) > quantity(limit):
            problems.append(f"{where}: {r} request {request} above its limit {limit}")
    for name in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(name):
            problems.append(f"{where}: pod {name}")
    for vol in pod.get("volumes") or []:
        if "hostPath" in vol:
            problems.append(f"{where}: hostPath volume {vol['name']}")
    return problems


def test_every_container_is_non_root_unprivileged_and_limited():
    docs = [doc for _, doc in all_docs()]
    checked = list(all_containers(docs))
    names = {where for where, _, _ in checked}
    # every kind of container the manifests define is in the list: the check covers them all
    assert len(checked) >= 12, names
    assert any("initContainers[db-upgrade]" in n for n in names) and any(
        "autoscalerOptions" in n for n in names
    )
    assert any("submitterPodTemplate" in n for n in names) and any("postgres" in n for n in names)
    problems = [p for where, c, pod in checked for p in container_problems(where, c, pod)]
    assert not problems, "\n".join(problems)


def test_security_check_catches_violations():
    """The rules above fail on a container that breaks each of them."""
    docs = variant_docs("cpu")
    cluster = copy.deepcopy(one(docs, "RayCluster"))
    pod = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    c = pod["containers"][0]
    c["securityContext"] = {"privileged": True, "runAsUser": 0}
    del c["resources"]["limits"]
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    problems = [
        p for where, ctr, spec in all_containers([cluster]) for p in container_problems(where, ctr, spec)
    ]
    text = "\n".join(problems)
    for expected in (
        "runAsNonRoot",
        "allowPrivilegeEscalation",
        "privileged",
        "uid/gid 0",
        "limits.cpu",
        "hostPath",
    ):
        assert expected in text, text
    assert all("ray-worker" in p for p in problems), text


def test_no_secret_values_in_git():
    """Credentials only through Secrets made from k8s/secrets.env (git-ignored), never in the manifests."""
    docs = all_docs()
    assert not [label(d) for _, d in docs if d.get("kind") == "Secret"], (
        "Secret objects must not be committed"
    )
    keys, optional = secret_env_keys()
    problems = []
    for where, c, _ in all_containers([d for _, d in docs]):
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if SECRET_NAME.search(e["name"]) and not ref:
                problems.append(f"{where}: env {e['name']} is not from a Secret")
            if ref:
                if ref["name"] != PROJECT_SECRET:
                    problems.append(
                        f"{where}: env {e['name']} reads Secret {ref['name']}, not {PROJECT_SECRET}"
                    )
                if ref["key"] not in keys and not (ref["key"] in optional and ref.get("optional")):
                    problems.append(f"{where}: Secret key {ref['key']} is not in k8s/secrets.env.example")
        for env_from in c.get("envFrom") or []:
            if "secretRef" not in env_from:
                problems.append(f"{where}: envFrom other than a secretRef")

    def strings(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        elif isinstance(node, str):
            yield node

    for path, doc in docs:
        for text in strings(doc):
            for url in re.findall(r"[a-z][a-z0-9+.-]*://\S+", text):
                userinfo = urlparse(url).netloc.rpartition("@")[0]
                if userinfo and re.sub(r"\$\([A-Z0-9_]+\)", "", userinfo) not in ("", ":"):
                    problems.append(f"{path.name}: {label(doc)}: credentials in URL {url}")
    assert not problems, "\n".join(problems)

    # the example env file holds placeholders only, and the real one can never be committed
    for key, value in keys.items():
        if SECRET_NAME.search(key):
            assert value == "change-me", f"k8s/secrets.env.example: {key} must be the placeholder change-me"
    assert "k8s/secrets.env" in (REPO / ".gitignore").read_text().split()
    dockerignore = (REPO / ".dockerignore").read_text().split()
    assert "k8s/*" in dockerignore and "**/*.env" in dockerignore
    tracked = subprocess.run(["git", "ls-files", "k8s"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "k8s/secrets.env" not in tracked.stdout.split()


def test_services_are_cluster_ip_only():
    docs = [doc for _, doc in all_docs()]
    services = find(docs, "Service")
    assert {s["metadata"]["name"] for s in services} == {"mlflow", "postgres"}
    for s in services:
        assert s["spec"].get("type") == "ClusterIP", label(s)
    for kind in ("Ingress", "Route", "Gateway", "HTTPRoute"):
        assert not find(docs, kind), f"no {kind}: the dashboard and MLflow are reached with port-forward"
    for cluster in find(docs, "RayCluster"):
        head = cluster["spec"]["headGroupSpec"]
        assert head.get("serviceType") == "ClusterIP" and not head.get("enableIngress"), label(cluster)
        assert cluster["spec"]["authOptions"] == {"mode": "token"}, "the job API runs code: token auth"
    for where, c, _ in all_containers(docs):
        for port in c.get("ports") or []:
            assert "hostPort" not in port, where


# ------------------------------------------------------------------------------------ cross references


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_references_resolve(variant):
    """Claims, volumes, Secret keys and Service selectors point at things the variant creates."""
    docs = variant_docs(variant)
    namespace = one(docs, "Namespace")["metadata"]["name"]
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, label(doc)
    claims = {d["metadata"]["name"] for d in find(docs, "PersistentVolumeClaim")}
    for doc in docs:
        templates = {t["metadata"]["name"] for t in doc.get("spec", {}).get("volumeClaimTemplates", [])}
        for where, pod in pod_specs(doc):
            volumes = {v["name"]: v for v in pod.get("volumes") or []}
            for v in volumes.values():
                if "persistentVolumeClaim" in v:
                    assert v["persistentVolumeClaim"]["claimName"] in claims, f"{where}: {v}"
            for name, c, _ in all_containers([doc]):
                for m in c.get("volumeMounts") or []:
                    assert m["name"] in volumes or m["name"] in templates, f"{name}: no volume {m['name']}"
    shared = one(docs, "PersistentVolumeClaim", "imagelora-shared")
    assert shared["spec"]["accessModes"] == ["ReadWriteMany"], "head and workers write the same volume"
    for service in find(docs, "Service"):
        selector = service["spec"]["selector"]
        backends = [
            d
            for d in docs
            if d["kind"] in ("Deployment", "StatefulSet")
            and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(backends) == 1, f"Service {service['metadata']['name']} selects {len(backends)} workloads"
        ports = {p["name"] for c in backends[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_images_are_pinned_and_the_project_image(variant):
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    project_images = set()
    for where, c, _ in all_containers(variant_docs(variant) + load_docs(JOBS[variant])):
        image = c.get("image")
        if image is None:  # the autoscaler: KubeRay uses the head's image
            assert "autoscalerOptions" in where
            continue
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, f"{where}: image {image} is not pinned"
        if not name.startswith("postgres"):
            project_images.add(image)
    assert len(project_images) == 1, project_images
    assert project_images.pop().endswith(f"/imagelora-dist:{version}")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ray_pods_reach_mlflow(variant):
    """MLFLOW_TRACKING_URI of every Ray pod is the MLflow Service, and the server accepts that Host header
    (and the one of the GPU config's tracking.uri)."""
    docs = variant_docs(variant)
    service = one(docs, "Service", "mlflow")
    ns, port = service["metadata"]["namespace"], service["spec"]["ports"][0]["port"]
    expected = f"http://mlflow.{ns}.svc:{port}"
    cluster = one(docs, "RayCluster")
    ray_containers = [c for where, c, _ in all_containers([cluster]) if "autoscalerOptions" not in where]
    assert len(ray_containers) >= 2
    assert all(env_value(c, "MLFLOW_TRACKING_URI") == expected for c in ray_containers)
    server = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    args = server["args"]
    allowed = args[args.index("--allowed-hosts") + 1].split(",")
    hosts = [urlparse(expected).netloc, f"mlflow:{port}", "localhost:5000"]
    # The 7B config leaves tracking.uri unset, so the pods' MLFLOW_TRACKING_URI decides.
    assert load_config(REPO / "configs" / "qwen2_5_vl_7b.yaml").tracking.uri is None
    for host in hosts:
        assert any(fnmatch.fnmatch(host, pattern) for pattern in allowed), f"MLflow would refuse Host {host}"
    assert args[args.index("--host") + 1] == "0.0.0.0" and "--serve-artifacts" in args


def test_gpu_worker_group():
    cluster = one(variant_docs("gpu"), "RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    (group,) = spec["workerGroupSpecs"]
    # minReplicas >= 1: the probe sizes its actor pool from the GPUs present when it starts
    assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert group["maxReplicas"] > group["minReplicas"]
    pod = group["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert quantity(res["requests"]["nvidia.com/gpu"]) == quantity(res["limits"]["nvidia.com/gpu"]) >= 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head["limits"], "the head runs no GPU work"
    cpu = one(variant_docs("cpu"), "RayCluster")
    for where, c, _ in all_containers([cpu]):
        assert "nvidia.com/gpu" not in (c.get("resources") or {}).get("limits", {}), where


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cluster_holds_the_jobs_workers(variant, tmp_path):
    """The RayJob's config fits its cluster: worker CPUs/GPUs for the probe actors and the training workers
    (at maxReplicas), a head that takes no Ray work, num-cpus within the pod's CPU limit, and every path
    the run reads or writes on a volume the pods mount."""
    docs = variant_docs(variant)
    cluster = one(docs, "RayCluster")
    spec = cluster["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    cpus = gpus = 0.0
    for group in spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        per_pod = float(group["rayStartParams"]["num-cpus"])
        assert per_pod <= quantity(limits["cpu"]), "num-cpus above the pod's CPU limit"
        # without the autoscaler the group stays at `replicas`; with it, it grows up to maxReplicas
        pods = group["maxReplicas"] if spec.get("enableInTreeAutoscaling") else group["replicas"]
        cpus += per_pod * pods
        gpus += quantity(limits.get("nvidia.com/gpu", 0)) * pods
    job = one(load_docs(JOBS[variant]), "RayJob")
    argv = entrypoint_argv(job)
    config_path = (
        argv[argv.index("--config") + 1] if "--config" in argv else None
    )  # None: the embedded default
    overrides = [a for a in argv[4:] if "=" in a]
    cfg = load_config(config_path and config_path.replace(IMAGE_ROOT, str(REPO), 1), overrides)
    for stage, n, per_cpu, per_gpu in (
        ("train", cfg.train.workers, cfg.train.cpus_per_worker, cfg.train.gpus_per_worker),
        ("probe", cfg.ray.num_workers, cfg.ray.cpus_per_worker, cfg.ray.gpus_per_worker),
    ):
        assert n * per_cpu <= cpus, f"{variant}: {stage} needs {n * per_cpu:g} CPUs, the cluster has {cpus:g}"
        per_gpu = (1.0 if gpus else 0.0) if per_gpu is None else per_gpu
        assert n * per_gpu <= gpus, f"{variant}: {stage} needs {n * per_gpu:g} GPUs, the cluster has {gpus:g}"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    worker = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    for container in (head, worker):
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        paths = [cfg.output_dir, cfg.data.train, cfg.train.storage, cfg.eval.shards, cfg.model.path]
        for path in filter(None, paths):
            if "://" not in path:
                assert any(path.startswith(m + "/") for m in mounts), f"{variant}: {path} is on no volume"
    if variant == "cpu":  # the tiny default on the small cluster: everything it writes is on /shared
        assert cfg.output_dir.startswith("/shared/") and cfg.model.path is None
    assert path_map(tmp_path)["/shared"] == str(tmp_path)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rayjob_is_the_submit_command(variant):
    """A K8sJobMode RayJob on the variant's RayCluster, running what launch/submit.sh runs, with
    launch/runtime_env.yaml's env vars and no upload (the image has the package); every /app path it
    names exists in the image (this checkout, per the Dockerfile's COPY lines)."""
    job = one(load_docs(JOBS[variant]), "RayJob")
    cluster = one(variant_docs(variant), "RayCluster")
    spec = job["spec"]
    assert job["apiVersion"] == "ray.io/v1" and spec["submissionMode"] == "K8sJobMode"
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    assert not spec.get("shutdownAfterJobFinishes"), "the RayJob must not delete the shared RayCluster"
    argv = entrypoint_argv(job)
    assert argv[:4] == submit_sh_command()
    # the embedded default (no --config) or a config file from the image, then key=value overrides
    assert all(a == "--config" or a.startswith(IMAGE_ROOT + "/") or "=" in a for a in argv[4:]), argv
    env = runtime_env(job)
    launch_env = yaml.safe_load((REPO / "launch" / "runtime_env.yaml").read_text())
    assert set(env) == {"env_vars"}, "no working_dir / pip: the image has the package"
    assert env["env_vars"] == launch_env["env_vars"] == OFFLINE_ENV  # one offline env, spelled out twice
    # the submitter runs `bash -c "ray job submit ... --runtime-env-json \"<json>\" -- <entrypoint>"`
    for text in (spec["entrypoint"], json.dumps(env)):
        assert not re.search(r"[$`\\;&|<>]", text), f"shell metacharacters in {text!r}"
    dockerfile = (REPO / "Dockerfile").read_text()
    for arg in argv:
        value = arg.split("=", 1)[-1]
        if value.startswith(IMAGE_ROOT + "/"):
            local = REPO / value[len(IMAGE_ROOT) + 1 :]
            assert local.exists(), f"{value}: not in this checkout"
            top = Path(value[len(IMAGE_ROOT) + 1 :]).parts[0]
            assert re.search(rf"^COPY {top}/ {IMAGE_ROOT}/{top}/$", dockerfile, re.M), (
                f"{top}/ not in the image"
            )


def test_mlflow_variants_differ_only_in_the_artifact_store():
    """CPU: artifacts on a volume of the pod; GPU: an S3 bucket with credentials from the Secret. The rest
    (database, init container, server flags) is the same, so tests/integration/test_k8s_mlflow.py.py covers both."""
    cpu = one(variant_docs("cpu"), "Deployment", "mlflow")["spec"]["template"]["spec"]
    gpu = one(variant_docs("gpu"), "Deployment", "mlflow")["spec"]["template"]["spec"]
    assert cpu["initContainers"] == gpu["initContainers"]
    cpu_c, gpu_c = cpu["containers"][0], gpu["containers"][0]
    dest = {
        k: c["args"][c["args"].index("--artifacts-destination") + 1]
        for k, c in (("cpu", cpu_c), ("gpu", gpu_c))
    }
    assert dest["cpu"] == cpu_c["volumeMounts"][0]["mountPath"] and dest["gpu"].startswith("s3://")
    s3_env = {e["name"] for e in gpu_c["env"]} - {e["name"] for e in cpu_c["env"]}
    assert s3_env == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "MLFLOW_S3_ENDPOINT_URL",
    }
    for c in (cpu_c, gpu_c):
        c["args"] = [a for a in c["args"] if a not in dest.values()]
        c.pop("volumeMounts", None)
        c["env"] = [e for e in c["env"] if e["name"] not in s3_env]
    assert cpu_c == gpu_c


def test_docs_name_real_files():
    """Every k8s/... path and kubectl -f argument in the guides exists."""
    for doc in (K8S / "README.md", REPO / "docs" / "kubernetes.md"):
        text = doc.read_text()
        for path in set(re.findall(r"(?<![\w/.-])(k8s/[\w./-]*[\w/])", text)):
            if path != "k8s/secrets.env":  # the user's copy, git-ignored
                assert (REPO / path).exists(), f"{doc.name}: {path} does not exist"
        assert "secrets.env.example" in text


def _cli_flags(argv: list[str]) -> dict[str, str | None]:
    """--flag value / --flag (no value) -> {flag: value or None}."""
    flags: dict[str, str | None] = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            flags[arg] = None if nxt is None or nxt.startswith("--") else nxt
    return flags


def test_tracking_server_fixture_runs_the_manifests_flags():
    """tests/mlflow_server.py (the server the multi-node pipeline test logs to) starts `mlflow server` the way
    the GPU variant's Deployment does: a SQL backend from MLFLOW_BACKEND_STORE_URI, --serve-artifacts to an
    s3:// destination with the bucket's credentials in the server's env only, the same flags."""
    from mlflow.utils.uri import extract_db_type_from_uri
    from mlflow_server import server_command, server_env

    pod = one(variant_docs("gpu"), "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    k8s = _cli_flags(pod["command"] + pod["args"])
    cmd = server_command("s3://bucket/mlartifacts", "10.77.0.10", 5055)
    test = _cli_flags(cmd)
    assert Path(cmd[0]).name == pod["command"][0] == "mlflow" and cmd[1] == pod["command"][1] == "server"
    assert set(test) == set(k8s), set(test) ^ set(k8s)
    assert "--backend-store-uri" not in k8s  # in the env, so the password is not in the pod spec
    k8s_env = {e["name"] for e in pod["env"]}
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
    s3 = dict.fromkeys(keys, "x")  # what tests/s3_server.py yields
    env = server_env("sqlite:////tmp/mlflow.db", s3)
    # Both SQL stores (SQLAlchemy): PostgreSQL in k8s, a sqlite file in the test.
    k8s_backend = env_value(pod, "MLFLOW_BACKEND_STORE_URI")
    assert extract_db_type_from_uri(k8s_backend) == "postgresql"
    assert extract_db_type_from_uri(env["MLFLOW_BACKEND_STORE_URI"]) == "sqlite"
    assert "--serve-artifacts" in k8s and k8s["--serve-artifacts"] is None is test["--serve-artifacts"]
    for flags in (k8s, test):
        assert urlparse(flags["--artifacts-destination"]).scheme == "s3", flags
        assert {"127.0.0.1:*", "localhost:*"} <= set(flags["--allowed-hosts"].split(",")), flags
    # The object store reaches the server through the manifest's variables, and only those.
    s3_names = {k for k in env if k.startswith("AWS_") or k == "MLFLOW_S3_ENDPOINT_URL"}
    assert s3_names == {k for k in k8s_env if k.startswith("AWS_") or k == "MLFLOW_S3_ENDPOINT_URL"}
    # Host and port: every interface on the container's port there; the fixture's host (+ its port) here.
    assert k8s["--host"] == "0.0.0.0" and int(k8s["--port"]) == pod["ports"][0]["containerPort"]
    assert test["--host"] == "10.77.0.10" and test["--port"] == "5055"
    assert "10.77.0.10:5055" in test["--allowed-hosts"].split(",")
    # The CPU variant serves the same flags, artifacts on its volume instead of a bucket.
    cpu = one(variant_docs("cpu"), "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert set(_cli_flags(cpu["command"] + cpu["args"])) == set(k8s)
