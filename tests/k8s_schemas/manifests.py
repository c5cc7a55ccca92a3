"""Reading k8s/: the documents, their pod specs and containers, the path map from the image to this checkout.

Shared by tests/*/test_k8s_*.py (`from k8s_schemas.manifests import ...`). Plain YAML only (no kustomize):
what `kubectl apply -f` sends is what is read.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
SHARED_SCHEMAS = REPO.parent / "shared" / "k8s-schemas"
VENDORED_SCHEMAS = REPO / "tests" / "k8s_schemas"
# Which cluster variant each RayJob submits to, and the folders `kubectl apply -f` gets for that variant.
VARIANTS = {"cpu": ("base", "cpu"), "gpu": ("base", "gpu")}
JOBS = {"cpu": K8S / "jobs" / "rayjob-cpu.yaml", "gpu": K8S / "jobs" / "rayjob-gpu.yaml"}
PROJECT_SECRET = "imagelora-secrets"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


def load_docs(path: Path) -> list[dict[str, Any]]:
    """The non-empty documents of one YAML file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifest_files() -> list[Path]:
    """Every YAML file under k8s/ (what the validator checks)."""
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))


def all_docs() -> list[tuple[Path, dict[str, Any]]]:
    """(file, document) for every document under k8s/."""
    return [(path, doc) for path in manifest_files() for doc in load_docs(path)]


def variant_docs(variant: str) -> list[dict[str, Any]]:
    """The documents `kubectl apply -f k8s/base -f k8s/<variant>` creates."""
    docs = []
    for folder in VARIANTS[variant]:
        for path in sorted((K8S / folder).glob("*.yaml")):
            docs.extend(load_docs(path))
    return docs


def label(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata", {})
    return f"{doc.get('kind')}/{meta.get('name') or meta.get('generateName', '?') + '*'}"


def ray_cluster_pod_specs(spec: dict[str, Any], where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield f"{where}.headGroupSpec", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield f"{where}.workerGroupSpecs[{group['groupName']}]", group["template"]["spec"]


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod template in a document."""
    kind, spec, where = doc.get("kind"), doc.get("spec", {}), label(doc)
    if kind in WORKLOAD_KINDS:
        yield where, spec["template"]["spec"]
    elif kind == "CronJob":
        yield where, spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "Pod":
        yield where, spec
    elif kind == "RayCluster":
        yield from ray_cluster_pod_specs(spec, where)
    elif kind == "RayJob":
        if "submitterPodTemplate" in spec:
            yield f"{where}.submitterPodTemplate", spec["submitterPodTemplate"]["spec"]
        if "rayClusterSpec" in spec:
            yield from ray_cluster_pod_specs(spec["rayClusterSpec"], f"{where}.rayClusterSpec")


def containers(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, container) of every container of a pod spec, init and ephemeral containers included."""
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for c in pod.get(field) or []:
            yield f"{field}[{c.get('name')}]", c


def all_containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, container, its pod spec) for every container in `docs`, plus the KubeRay autoscaler sidecar
    (autoscalerOptions takes a securityContext and resources like a container)."""
    for doc in docs:
        for where, pod in pod_specs(doc):
            for name, c in containers(pod):
                yield f"{where}.{name}", c, pod
        if doc.get("kind") == "RayCluster" and doc["spec"].get("enableInTreeAutoscaling"):
            head = doc["spec"]["headGroupSpec"]["template"]["spec"]
            yield f"{label(doc)}.autoscalerOptions", doc["spec"].get("autoscalerOptions", {}), head


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"].get("name") == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def env_value(container: dict[str, Any], name: str) -> str | None:
    for e in container.get("env") or []:
        if e["name"] == name:
            return e.get("value")
    return None


# ------------------------------------------------------------------------------- image paths -> checkout

# Where the image keeps things (Dockerfile: WORKDIR /app, COPY configs/ /app/configs/ ...) and where the
# pods mount volumes, mapped for running a RayJob's entrypoint against this checkout. Everything else in an
# entrypoint is used unchanged.
IMAGE_ROOT = "/app"


def path_map(shared: Path, models: Path | None = None) -> dict[str, str]:
    """Container path prefix -> local path: /app is this checkout, /shared (the RWX volume) a test dir."""
    mapping = {IMAGE_ROOT: str(REPO), "/shared": str(shared)}
    if models is not None:
        mapping["/models"] = str(models)
    return mapping


def map_paths(text: str, mapping: dict[str, str]) -> str:
    """Replace container paths (at the start of a word or of a key=value value) by local ones."""
    for prefix, local in mapping.items():
        text = re.sub(rf"(?<![\w/.-]){re.escape(prefix)}(?=/|$|\s)", local.replace("\\", "\\\\"), text)
    return text


def entrypoint_argv(job: dict[str, Any]) -> list[str]:
    """The RayJob's entrypoint split the way the submitter's bash splits it."""
    return shlex.split(job["spec"]["entrypoint"])


def runtime_env(job: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(job["spec"]["runtimeEnvYAML"])


def submit_sh_command() -> list[str]:
    """The command launch/submit.sh hands to `ray job submit` (after its `--`), without the pipeline args."""
    text = (REPO / "launch" / "submit.sh").read_text()
    m = re.search(r'^\s*-- (python -m imagelora_dist run) "\$\{PIPELINE_ARGS\[@\]\}"', text, re.M)
    assert m, "launch/submit.sh no longer ends in `-- python -m imagelora_dist run ARGS`"
    return m.group(1).split()


def secret_env_keys() -> tuple[dict[str, str], set[str]]:
    """(KEY -> value) of k8s/secrets.env.example, and the optional keys (only present commented out)."""
    keys, optional = {}, set()
    for line in (K8S / "secrets.env.example").read_text().splitlines():
        m = re.match(r"^\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            keys[m.group(1)] = m.group(2)
            continue
        m = re.match(r"^\s*#\s*([A-Z][A-Z0-9_]*)=", line)
        if m:
            optional.add(m.group(1))
    return keys, optional - set(keys)
