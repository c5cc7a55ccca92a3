"""CLI: embedded default run, resume-by-skip, config errors (exit 2, one line), --help everywhere."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from imagelora_dist.cli import build_parser, main
from imagelora_dist.config import load_config


def test_run_writes_selection_then_skips(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", f"output_dir={out}", "probe.num_examples=4", "selection.budget=5", "probe.method=gate"]
    assert main(args) == 0
    data = json.loads((out / "head_selection.json").read_text())
    assert data["num_heads"] == 5 and data["probe_method"] == "gate" and data["probe_examples"] == 4
    assert data["family"] == "qwen2_5_vl" and len(data["config_hash"]) == 16
    printed = capsys.readouterr().out
    assert "batch 2/2" in printed and "lora_all_linear" in printed
    before = (out / "head_selection.json").read_bytes()
    assert main(args) == 0
    assert "skipping" in capsys.readouterr().out
    assert (out / "head_selection.json").read_bytes() == before
    # A different probe config is not skipped.
    assert main([*args[:-1], "probe.method=rank1"]) == 0
    assert json.loads((out / "head_selection.json").read_text())["probe_method"] == "rank1"


@pytest.mark.parametrize(
    "override, needle",
    [
        ("probe.methd=gate", "probe.methd"),
        ("probe.method=fisher", "probe.method"),
        ("selection.budget=1.5", "selection.budget"),
        ("model.family=mllama", "mllama"),
        ("adapter.rank=zero", "adapter.rank"),
        ("nonsense", "key=value"),
    ],
)
def test_bad_config_exits_2_with_one_line(override, needle, capsys):
    assert main(["probe", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and err.startswith("imagelora-dist: error:")


def test_config_file_errors(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("probe: [1, 2")
    assert main(["config", "--config", str(bad)]) == 2
    assert "c.yaml" in capsys.readouterr().err
    bad.write_text("probe:\n  num_examples: -1\n")
    assert main(["config", "--config", str(bad)]) == 2
    assert "probe.num_examples" in capsys.readouterr().err
    assert main(["config", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_shipped_config_equals_embedded_default():
    assert load_config("configs/tiny.yaml") == load_config(None)


def test_help_for_every_subcommand(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in commands:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage: imagelora-dist" in capsys.readouterr().out


def test_python_dash_m_entrypoint():
    proc = subprocess.run(
        [sys.executable, "-m", "imagelora_dist", "families"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "qwen2_5_vl" in proc.stdout and "smolvlm" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "imagelora_dist", "run", "model.family=nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "nope" in proc.stderr
