"""The Dockerfile the k8s/ pods run (parsed, not built: no docker here): pinned base and packages, a
non-root user, the paths the manifests use, and a constraints file that matches pyproject.toml."""

from __future__ import annotations

import re
import shlex
import tomllib

import yaml
from k8s_schemas.manifests import IMAGE_ROOT, REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

CONSTRAINTS = REPO / "k8s" / "image" / "constraints.txt"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def pins() -> dict[str, Version]:
    found = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{line}: constraints pin exact versions"
            found[canonicalize_name(req.name)] = Version(spec.version)
    return found


def test_base_image_and_user():
    ins = instructions()
    froms = [args for op, args in ins if op == "FROM"]
    assert len(froms) == 1
    image = froms[0]
    name, _, tag = image.partition(":")
    assert name == "nvidia/cuda" and tag and tag != "latest" and "cudnn-runtime" in tag, image
    assert re.fullmatch(r"\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.\d\d", tag), (
        f"{image}: pin the full version"
    )
    users = [args for op, args in ins if op == "USER"]
    assert users and users[-1].split(":")[0] == "1000", "the image must end as the non-root uid 1000"
    assert any(op == "RUN" and "useradd --uid 1000" in args for op, args in ins)
    assert [args for op, args in ins if op == "WORKDIR"][-1] == IMAGE_ROOT
    # the manifests run as that user
    k8s = (REPO / "k8s").rglob("*.yaml")
    uids = {int(u) for p in k8s for u in re.findall(r"runAsUser: (\d+)", p.read_text())}
    assert uids == {1000, 999}, uids  # 999: the postgres image's own user


def test_packages_are_pinned():
    ins = instructions()
    runs = " ; ".join(args for op, args in ins if op == "RUN")
    pip_installs = [shlex.split(cmd.strip()) for cmd in re.split(r"&&|;", runs) if "pip install" in cmd]
    assert pip_installs
    for argv in pip_installs:
        pkgs = [a for a in argv[argv.index("install") + 1 :] if not a.startswith("-")]
        pkgs = [p for p in pkgs if not p.startswith(("$", "http")) and p != "/app" and "/" not in p]
        for p in pkgs:
            assert "==" in p, f"unpinned package in the Dockerfile: {p}"
    torch = [a for a in pip_installs if "torch==2.13.0" in a]
    assert torch and "--index-url" in torch[0], "torch from the PyTorch CUDA index, first and alone"
    app = [a for a in pip_installs if "/app" in a]
    assert app and "-c" in app[0], "the package installs with the constraints file"
    constrained = pins()
    for argv in pip_installs:
        for p in argv:
            if "==" in p and not p.startswith("-"):
                req = Requirement(p)
                name = canonicalize_name(req.name)
                if name in constrained:
                    assert req.specifier.contains(constrained[name]), (
                        f"{p} vs constraints {constrained[name]}"
                    )
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    torch_req = next(Requirement(r) for r in pyproject["project"]["dependencies"] if r.startswith("torch"))
    assert str(torch_req.specifier) == "==2.13.0", "Dockerfile and pyproject.toml pin the same torch"


def test_constraints_match_pyproject():
    """Every runtime dependency has a pin, and the pin satisfies pyproject.toml's range (so the image runs
    the versions the tests ran)."""
    constrained = pins()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for line in pyproject["project"]["dependencies"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in constrained, f"{req.name} has no pin in {CONSTRAINTS.name}"
        assert req.specifier.contains(constrained[name], prereleases=True), (
            f"{req.name}: pin {constrained[name]} is outside pyproject.toml's {req.specifier}"
        )
    assert constrained[canonicalize_name("torch")] == Version(
        "2.13.0"
    )  # no +cpu: the CUDA build satisfies it
    for tool in ("pytest", "ruff", "hypothesis"):
        assert tool not in constrained, f"dev-only {tool} pinned in the image constraints"
    for server in ("psycopg2-binary", "boto3"):
        assert server in constrained, f"{server} (MLflow server) not pinned"


def test_image_has_what_the_manifests_use():
    """COPY sources exist and are not dockerignored; the image's environment is offline like the job's."""
    ins = instructions()
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    ignored = [line for line in ignored if line and not line.startswith("#")]
    copies = [shlex.split(args) for op, args in ins if op == "COPY"]
    dests = set()
    for argv in copies:
        *sources, dest = [a for a in argv if not a.startswith("--")]
        dests.add(dest.rstrip("/"))
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: not in the repo"
            top = src.rstrip("/").split("/")[0]
            excluded = top in ignored or f"{top}/*" in ignored
            reincluded = any(line.startswith("!") and src.startswith(line[1:]) for line in ignored)
            assert not excluded or reincluded, f"COPY {src}: excluded by .dockerignore"
    for needed in ("configs", "launch", "imagelora_dist"):
        assert f"{IMAGE_ROOT}/{needed}" in dests, f"{needed}/ is not copied to {IMAGE_ROOT}/{needed}"
    env = {}
    for op, args in ins:
        if op == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    job_env = yaml.safe_load((REPO / "launch" / "runtime_env.yaml").read_text())["env_vars"]
    for key, value in job_env.items():
        assert env.get(key) == value, f"image ENV {key}={env.get(key)!r}, the job sets {value!r}"
    assert not [k for k in env if re.search(r"(^|_)(PASSWORD|SECRET|TOKEN|ACCESS_KEY)(_|$)", k)]
