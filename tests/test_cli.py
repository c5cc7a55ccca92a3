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


@pytest.mark.parametrize(
    "name",
    [
        "pretrain_base.yaml",
        "pretrain_base_gpu.yaml",
        "pretrain_base_shapes.yaml",
        "pretrain_base_shapes_fmt.yaml",
        "pretrain_base_shapes_fmt_digits.yaml",
        "pretrain_base_shapes_point.yaml",
        "qwen2_5_vl_7b.yaml",
        "study/finetune.yaml",
    ],
)
def test_every_shipped_run_config_loads(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / name
    cfg = load_config(str(path), [])
    if name == "pretrain_base_gpu.yaml":  # the bigger base: resizing reaches the model config
        assert cfg.model.family == "qwen3_vl" and cfg.model.tiny_size().layers == 6 and cfg.train.workers == 1
    if name == "pretrain_base_shapes.yaml":  # runs with --no-ray (make pretrain-base-shapes): one worker
        assert cfg.data.synth.style == "shapes" and cfg.train.workers == 1
    if name == "pretrain_base_shapes_fmt_digits.yaml":  # the format-aware base but for the tokenizer
        fmt = load_config(str(path.with_name("pretrain_base_shapes_fmt.yaml")), []).model_dump(mode="json")
        digits = cfg.model_dump(mode="json")
        assert digits["model"].pop("split_digits") is True and "split_digits" not in fmt["model"]
        for c in (fmt, digits):
            c.pop("name"), c.pop("output_dir")
        assert digits == fmt
    if name == "pretrain_base_shapes_point.yaml":  # the format-aware base's recipe on the study's tasks only
        assert cfg.data.pretrain_tasks == ("position", "point", "describe_at", "arithmetic")
        assert cfg.train.steps == 4000 and cfg.data.synth.num_samples >= 4000 * cfg.train.micro_batch_size


@pytest.mark.parametrize(
    "name",
    [
        "study.yaml",
        "shapes.yaml",
        "shapes_fmt.yaml",
        "shapes_fmt_long.yaml",
        "shapes_point.yaml",
        "shapes_point_long.yaml",
        "shapes_point_known.yaml",
    ],
)
def test_every_shipped_study_cell_loads(name):
    from pathlib import Path

    from imagelora_dist.study import cell_config, load_spec

    spec, spec_dir = load_spec(Path(__file__).resolve().parents[1] / "configs" / "study" / name)
    for ratio in spec.ratios:
        for method in spec.methods:
            cfg = cell_config(spec, spec_dir, ratio, method, spec.seeds[0])
            assert cfg.labels["method"] == method
            if name.startswith("shapes"):
                assert cfg.data.synth.style == "shapes"
                base = "-".join(
                    name.removesuffix(".yaml").split("_")[:2]
                )  # shapes_point_long -> shapes-point
                assert cfg.model.path == f"runs/pretrain-base-{base}/base"


def _paired_cells(main: str, other: str):
    """The two study specs' cells (the main spec's grid, seed 0) as config dumps, less what every study
    names for itself (name, output_dir, labels, tracking); also both specs."""
    import itertools
    from pathlib import Path

    from imagelora_dist.study import cell_config, load_spec

    root = Path(__file__).resolve().parents[1] / "configs" / "study"
    (a_spec, a_dir), (b_spec, b_dir) = load_spec(root / main), load_spec(root / other)
    pairs = []
    for ratio, method in itertools.product(b_spec.ratios, b_spec.methods):
        a = cell_config(a_spec, a_dir, ratio, method, 0).model_dump(mode="json")
        b = cell_config(b_spec, b_dir, ratio, method, 0).model_dump(mode="json")
        for cfg in (a, b):
            for key in ("name", "output_dir", "labels", "tracking"):
                cfg.pop(key)
        pairs.append((a, b))
    return a_spec, b_spec, pairs


def _grid(spec):
    """What a study runs: its ratios, methods and seeds."""
    return spec.ratios, spec.methods, spec.seeds


@pytest.mark.parametrize("name", ["shapes_fmt", "shapes_point"])
def test_the_long_study_is_the_study_trained_longer(name):
    main_spec, long_spec, pairs = _paired_cells(f"{name}.yaml", f"{name}_long.yaml")
    assert long_spec.ratios == main_spec.ratios and long_spec.seeds == main_spec.seeds
    assert set(long_spec.methods) == set(main_spec.methods) - {"zero-shot"}
    for a, b in pairs:
        assert (a["train"]["steps"], b["train"]["steps"]) == (120, 480)
        for cfg in (a, b):  # what else may differ: the length of its checkpoint interval
            cfg["train"].pop("steps"), cfg["train"].pop("checkpoint_every")
        assert a == b


def test_the_pointing_base_study_is_the_study_on_another_base():
    main_spec, point_spec, pairs = _paired_cells("shapes_fmt.yaml", "shapes_point.yaml")
    assert _grid(point_spec) == _grid(main_spec)
    for a, b in pairs:
        assert (a["model"].pop("path"), b["model"].pop("path")) == (
            "runs/pretrain-base-shapes-fmt/base",
            "runs/pretrain-base-shapes-point/base",
        )
        assert a == b


def test_the_known_task_study_is_the_pointing_study_in_the_pretraining_words():
    point_spec, known_spec, pairs = _paired_cells("shapes_point.yaml", "shapes_point_known.yaml")
    assert _grid(known_spec) == _grid(point_spec)
    for a, b in pairs:
        assert "phrasing" not in a["data"]["synth"] and b["data"]["synth"].pop("phrasing") == "pretrain"
        assert a == b


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
