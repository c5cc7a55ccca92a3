"""CLI: embedded default run, resume-by-skip, config errors (exit 2, one line), --help everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from imagelora_dist.cli import build_parser, main
from imagelora_dist.config import load_config


def _isolated(tmp_path) -> list[str]:
    """Keep MLflow and shards of a test run inside tmp_path."""
    return [
        f"tracking.uri=sqlite:///{tmp_path}/mlruns.db",
        f"tracking.artifact_root={tmp_path}/mlartifacts",
        "data.synth.num_samples=12",
        "data.synth.samples_per_shard=4",
        "data.synth.workers=1",
        "ray.num_workers=1",
    ]


@pytest.mark.integration
def test_run_writes_selection_then_skips(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["probe", f"output_dir={out}", "probe.num_examples=4", "selection.budget=5", "probe.method=gate",
            *_isolated(tmp_path)]  # fmt: skip
    assert main(args) == 0
    data = json.loads((out / "head_selection.json").read_text())
    assert data["num_heads"] == 5 and data["probe_method"] == "gate" and data["probe_examples"] == 4
    assert data["family"] == "qwen2_5_vl" and len(data["config_hash"]) == 16
    printed = capsys.readouterr().out
    assert "batches 2/2" in printed and "lora_all_linear" in printed and "mlflow ui" in printed
    before = (out / "head_selection.json").read_bytes()
    assert main(args) == 0
    assert "skipping" in capsys.readouterr().out
    assert (out / "head_selection.json").read_bytes() == before
    # A different probe config is not skipped.
    assert main([*args, "probe.method=rank1"]) == 0
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
        ("train.min_workers=3", "min_workers 3 > workers 2"),
    ],
)
def test_bad_config_exits_2_with_one_line(override, needle, capsys):
    assert main(["probe", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and err.startswith("imagelora-dist: error:")


def test_bad_config_starts_no_worker(tmp_path, capsys):
    import ray

    assert main(["run", f"output_dir={tmp_path}", *_isolated(tmp_path), "ray.cpus_per_worker=0"]) == 2
    assert "ray.cpus_per_worker" in capsys.readouterr().err
    assert main(["run", f"output_dir={tmp_path}", "selection.budget=999", *_isolated(tmp_path)]) == 2
    assert "budget 999" in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "head_selection.json").exists()


def test_unreachable_tracking_server_fails_fast(tmp_path, capsys):
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    code = main(["run", f"output_dir={tmp_path}", f"tracking.uri=http://127.0.0.1:{port}"])
    assert code == 1 and time.monotonic() - start < 30
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unreachable" in err


def test_config_file_errors(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("probe: [1, 2")
    assert main(["config", "--config", str(bad)]) == 2
    assert "c.yaml" in capsys.readouterr().err
    bad.write_text("probe:\n  num_examples: -1\n")
    assert main(["config", "--config", str(bad)]) == 2
    assert "probe.num_examples" in capsys.readouterr().err
    assert main(["config", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_embedded_default_is_the_shipped_yaml_and_the_schema_defaults():
    from imagelora_dist.config import RunConfig
    from imagelora_dist.resources import default_config_path

    assert load_config(default_config_path()) == load_config(None)
    # The YAML spells out the schema's own defaults: a field missing from it changes nothing.
    assert RunConfig() == load_config(None)


def test_every_shipped_run_config_loads():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert configs, "configs/ holds the real-model run configs"
    for path in configs:
        assert load_config(str(path), []).model.path, f"{path.name}: a real checkpoint from a local path"


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


def test_paths_are_made_absolute_for_ray_workers(tmp_path, monkeypatch):
    from imagelora_dist.pipeline import absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = absolute_paths(load_config(None, ["output_dir=runs/x", "data.train=shards", "train.storage=ck",
                                            "eval.shards=s3://bucket/eval"]))  # fmt: skip
    assert cfg.output_dir == str(tmp_path / "runs/x") and cfg.data.train == str(tmp_path / "shards")
    assert cfg.train.storage == str(tmp_path / "ck") and cfg.eval.shards == "s3://bucket/eval"
    # The shipped ZeRO presets are found from any working directory.
    assert cfg.train.deepspeed.endswith("imagelora_dist/resources/deepspeed/zero2.json")
    assert os.path.isfile(cfg.train.deepspeed)
    # A path is taken relative to the working directory.
    own = absolute_paths(load_config(None, ["train.deepspeed=ds/my.json"]))
    assert own.train.deepspeed == str(tmp_path / "ds/my.json")


def test_eval_command_without_an_adapter_exits_2_naming_it(tmp_path, capsys):
    assert main(["eval", f"output_dir={tmp_path}", "tracking.enabled=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"imagelora-dist: error: no trained adapter at {tmp_path}/adapter: run the train stage first"
    ]


def test_an_elastic_run_keeps_the_global_batch_where_it_divides():
    from imagelora_dist.config import load_config

    t = load_config(None, ["train.workers=4", "train.min_workers=1", "train.grad_accum=2"]).train
    # 4 workers x 2: 8 micro-batches per step; 3 workers cannot make 8, the nearest is 9
    assert [t.grad_accum_for(w) for w in (1, 2, 3, 4)] == [8, 4, 3, 2]
    fixed = load_config(None, ["train.workers=4", "train.grad_accum=2"]).train
    assert fixed.grad_accum_for(1) == 2  # not elastic: as configured (a 1-process run of a 4-worker config)
    assert "min_workers" not in fixed.model_dump()  # stage hashes stay as they were
