"""The study's configs: every pre-training config and study cell loads, and the paired studies differ
only where they say they do."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagelora_dist.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    "name",
    [
        "pretrain_base.yaml",
        "pretrain_base_gpu.yaml",
        "pretrain_base_shapes.yaml",
        "pretrain_base_shapes_fmt.yaml",
        "pretrain_base_shapes_fmt_digits.yaml",
        "pretrain_base_shapes_point.yaml",
        "study/finetune.yaml",
    ],
)
def test_every_shipped_run_config_loads(name):
    path = CONFIGS / name
    cfg = load_config(str(path), [])
    if name == "pretrain_base_gpu.yaml":  # the bigger base: resizing reaches the model config
        assert cfg.model.family == "qwen3_vl" and cfg.model.tiny_size().layers == 6 and cfg.train.workers == 1
    if name == "pretrain_base_shapes.yaml":  # runs with --no-ray (make pretrain-base-shapes): one worker
        assert cfg.data.synth.style == "fidelity.shapes:STYLE" and cfg.train.workers == 1
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
    from imagelora_dist.study import cell_config, load_spec

    spec, spec_dir = load_spec(CONFIGS / "study" / name)
    for ratio in spec.ratios:
        for method in spec.methods:
            cfg = cell_config(spec, spec_dir, ratio, method, spec.seeds[0])
            assert cfg.labels["method"] == method
            if name.startswith("shapes"):
                assert cfg.data.synth.style == "fidelity.shapes:STYLE"
                base = "-".join(
                    name.removesuffix(".yaml").split("_")[:2]
                )  # shapes_point_long -> shapes-point
                assert cfg.model.path == f"runs/pretrain-base-{base}/base"


def _paired_cells(main: str, other: str):
    """The two study specs' cells (the main spec's grid, seed 0) as config dumps, less what every study
    names for itself (name, output_dir, labels, tracking); also both specs."""
    import itertools

    from imagelora_dist.study import cell_config, load_spec

    root = CONFIGS / "study"
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
