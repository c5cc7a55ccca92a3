"""The built wheel, installed outside the source tree, runs the embedded default from an empty directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site dir holding the wheel's install, the wheel's member names)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # No build isolation: the venv's setuptools builds it, so no package index is needed.
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = tmp.glob("imagelora_dist-*.whl")
    site = tmp / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    return site, names


def _env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The installed copy first: the venv's editable install of the checkout must not be what runs.
    env["PYTHONPATH"] = str(site)
    return env


def test_the_wheel_ships_the_presets_and_the_default_config(installed):
    _, names = installed
    for name in ("default.yaml", "deepspeed/zero1.json", "deepspeed/zero2.json", "deepspeed/zero3.json"):
        assert f"imagelora_dist/resources/{name}" in names
    assert not any(n.startswith(("tests/", "experiments/", "bench/")) for n in names), (
        "research/tests shipped"
    )


def test_installed_wheel_runs_the_embedded_default_from_an_empty_directory(installed, tmp_path):
    site, _ = installed
    work = tmp_path / "empty"
    work.mkdir()
    where = subprocess.run(
        [sys.executable, "-c", "import imagelora_dist; print(imagelora_dist.__file__)"],
        cwd=work, env=_env(site), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr
    # The embedded default at its smallest (the stages themselves are tested elsewhere).
    overrides = [
        "data.synth.num_samples=16", "data.synth.samples_per_shard=8", "probe.num_examples=2",
        "train.steps=2", "train.checkpoint_every=2", "train.workers=1", "ray.num_workers=1", "ray.num_cpus=2",
        "eval.synth_samples=4", "eval.text_task_problems=2", "eval.max_new_tokens=4",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "imagelora_dist", "run", *overrides],
        cwd=work, env=_env(site), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    out = work / "runs" / "tiny-default"
    assert json.loads((out / "head_selection.json").read_text())["kv_indices"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "eval_report.json").read_text())
    # Only what the run writes, in the working directory: runs/ and the default local MLflow store.
    assert {p.name for p in work.iterdir()} <= {"runs", "mlruns.db", "mlartifacts"}
