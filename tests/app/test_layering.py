"""The pure-torch core never imports Ray, DeepSpeed or MLflow (DESIGN §3)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_core_imports_no_distributed_stack():
    code = (
        "import sys, imagelora_dist, imagelora_dist.adapter.io, imagelora_dist.adapter.accounting, "
        "imagelora_dist.probe.scores, imagelora_dist.selection\n"
        "bad = sorted(m for m in ('ray', 'deepspeed', 'mlflow') if m in sys.modules)\n"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == ""


def test_package_import_help_and_config_errors_load_neither_torch_nor_transformers():
    # `imagelora-dist --help`, a bad config's exit 2 and every Ray worker running the setup hook
    # (imagelora_dist.ray_quiet) import only the light parts: torch + transformers cost ~5-8 s a process.
    code = (
        "import sys, imagelora_dist, imagelora_dist.ray_quiet, imagelora_dist.models\n"
        "from imagelora_dist.cli import main\n"
        "from imagelora_dist.models.families import FAMILIES\n"
        "assert main(['run', 'train.method=bogus']) == 2\n"
        "print(','.join(sorted(m for m in ('torch', 'transformers', 'ray', 'deepspeed', 'mlflow') "
        "if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
    assert "train.method" in out.stderr and "bogus" in out.stderr


def test_every_public_name_resolves_to_its_defining_object():
    import importlib

    import imagelora_dist
    import imagelora_dist.models

    expected = {
        "attach_image_lora": "imagelora_dist.adapter.image_lora",
        "HeadSelection": "imagelora_dist.selection",
        "select_heads": "imagelora_dist.selection",
        "probe_head_scores": "imagelora_dist.probe.scores",
        "save_adapter": "imagelora_dist.adapter.io",
        "load_adapter": "imagelora_dist.adapter.io",
        "build_tiny_vlm": "imagelora_dist.models.tiny",
        "ImageLoRAError": "imagelora_dist.errors",
    }
    for name, module in expected.items():  # the DESIGN §4 contract, each from the module that defines it
        assert getattr(imagelora_dist, name) is getattr(importlib.import_module(module), name)
    for package in (imagelora_dist, imagelora_dist.models):
        assert sorted(package.__all__) == sorted(package._EXPORTS), "every export listed, nothing else"
        assert set(package.__all__) <= set(dir(package))
        assert all(getattr(package, name) is not None for name in package.__all__)
    namespace: dict = {}
    exec("from imagelora_dist import *", namespace)
    assert set(imagelora_dist.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="no_such_name"):
        imagelora_dist.no_such_name  # noqa: B018
