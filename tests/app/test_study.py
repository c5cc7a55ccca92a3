"""The study at smoke size: cells run through the pipeline into one experiment; compare writes study.md."""

from __future__ import annotations

import math

import pytest
import yaml

from imagelora_dist.cli import main as cli_main
from imagelora_dist.data.reader import ShardReader, make_loader
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.eval import chance_baselines
from imagelora_dist.study import (
    CHANCE_METHOD,
    LOSS_COLUMNS,
    REPORT_METRICS,
    cell_config,
    load_spec,
    run_study,
    study_rows,
    summarize,
)


@pytest.fixture
def spec_file(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "name": "smoke", "output_dir": str(tmp_path / "unused"),
        "data": {"synth": {"num_samples": 8, "samples_per_shard": 4, "workers": 1}, "shuffle_buffer": 0},
        "probe": {"num_examples": 2, "batch_size": 2},
        "train": {"steps": 2, "micro_batch_size": 2, "workers": 1, "checkpoint_every": 2, "max_failures": 0},
        "eval": {"synth_samples": 4, "batch_size": 4, "max_new_tokens": 6, "workers": 1, "text_task_problems": 4},
        "ray": {"num_workers": 1},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlruns.db", "artifact_root": str(tmp_path / "artifacts")},
    }))  # fmt: skip
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "smoke-study", "base": "base.yaml", "output_dir": str(tmp_path / "study"), "seeds": [0],
        "ratios": {"text-heavy": ["data.synth.instruction_words=[30,30]"],
                   "image-heavy": ["data.synth.instruction_words=[0,0]"]},
        "methods": {"zero-shot": ["train.method=none"], "lora-v_proj": ["train.method=lora"],
                    "image_lora-4": ["train.method=image_lora", "selection.budget=4"]},
    }, sort_keys=False))  # fmt: skip
    return spec


def test_study_runs_every_cell_and_compare_writes_the_report(local_ray, spec_file, tmp_path, capsys):
    # One ratio's three methods run end to end (each cell is a whole pipeline: ~25 s); the order of several
    # ratios in the report is covered by test_a_narrowed_study_keeps_the_report_order_of_the_whole_one.
    spec, spec_dir = load_spec(spec_file, ['ratios={image-heavy: ["data.synth.instruction_words=[0,0]"]}'])
    names = run_study(spec, spec_dir, log=lambda m: None)
    assert len(names) == 3
    # Cells of one ratio share their data.
    assert (tmp_path / "study" / "data" / "image-heavy" / "data" / "train" / "index.json").exists()
    assert not (tmp_path / "study" / "data" / "text-heavy").exists()
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    rows = study_rows(uri, "smoke-study")
    assert sorted((r["ratio"], r["method"]) for r in rows) == sorted(
        ("image-heavy", m) for m in ("zero-shot", "lora-v_proj", "image_lora-4")
    )
    by = {(r["ratio"], r["method"]): r for r in rows}
    assert (
        by["image-heavy", "zero-shot"]["params"] == 0 and by["image-heavy", "zero-shot"]["text_dlogit"] == 0
    )
    assert by["image-heavy", "image_lora-4"]["text_dlogit"] == 0, "Image-LoRA keeps text logits bit-identical"
    assert by["image-heavy", "lora-v_proj"]["text_dlogit"] > 0
    il = by["image-heavy", "image_lora-4"]
    assert il["text_acc"] is not None and il["text_acc"] == il["text_acc_base"], "text task unchanged"
    assert 0 < by["image-heavy", "image_lora-4"]["flops"] < by["image-heavy", "lora-v_proj"]["flops"]
    assert all(
        r["accuracy"] is not None and r["step_s"] is not None for r in rows if r["method"] != "zero-shot"
    )
    assert len(summarize(rows)) == 4  # + a chance row per ratio
    # How far each trained cell fitted: from its training stage's loss curve; none for zero-shot.
    trained = [r for r in rows if r["method"] != "zero-shot"]
    assert all(r["loss_start"] > 0 and r["loss_end"] > 0 for r in trained)
    assert all(r["loss_start"] is None and r["loss_end"] is None for r in rows if r["method"] == "zero-shot")

    reports = tmp_path / "reports"
    assert cli_main(["compare", "--config", str(tmp_path / "base.yaml"), "tracking.experiment=smoke-study",
                     "--out", str(reports)]) == 0  # fmt: skip
    text = (reports / "study.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| ratio"))
    for column in (
        "grounding acc %",
        "click dist",
        "type / text %",
        "trainable params",
        "adapter FLOPs",
        "step s",
        "train loss",
        "text Δlogit",
        "text acc %",
    ):
        assert column in header
    assert text.count("| image-heavy |") == 4 and "| text-heavy |" not in text
    table = [
        line.split(" | ")[:2] for line in text.splitlines() if line.startswith("| ") and "-heavy" in line
    ]
    assert table == [
        ["| image-heavy", m] for m in (CHANCE_METHOD, "zero-shot", "lora-v_proj", "image_lora-4")
    ]
    # Each ratio's chance row: the image-blind baselines of its held-out questions, computed here anew.
    for ratio in ("image-heavy",):
        reader = ShardReader.from_path(tmp_path / "study" / "data" / ratio / "data" / "eval", batch_size=4,
                                       shuffle_buffer=0, shuffle_shards=False)  # fmt: skip
        records = [s["record"] for batch in make_loader(reader) for s in batch["samples"]][:4]
        expected = chance_baselines(records)
        row = next(s for s in summarize(rows) if s["ratio"] == ratio and s["method"] == CHANCE_METHOD)
        for col, key in (("accuracy", "grounding_chance"), ("referring", "referring_chance"),
                         ("dist", "grounding_median_dist_centre"), ("ref_type", "referring_type_chance"),
                         ("ref_text", "referring_text_chance")):  # fmt: skip
            if math.isnan(expected[key]):
                assert row[col] is None
            else:
                assert row[col] == (pytest.approx(expected[key]), 0.0)
    for png in ("accuracy_vs_flops.png", "accuracy_by_ratio.png", "head_heatmap.png"):
        assert (reports / png).stat().st_size > 1000 and f"]({png})" in text


def test_cell_config_labels_and_bad_spec(tmp_path, spec_file):
    spec, spec_dir = load_spec(spec_file, ["seeds=[3]"])
    cfg = cell_config(spec, spec_dir, "image-heavy", "image_lora-4", 3)
    assert cfg.labels == {
        "study": "smoke-study",
        "ratio": "image-heavy",
        "method": "image_lora-4",
        "seed": "3",
        "order": "r01m02",
    }
    assert (cfg.train.seed, cfg.data.seed, cfg.selection.budget) == (3, 3, 4)
    assert cfg.tracking.experiment == "smoke-study" and cfg.name == "smoke-study-image-heavy-image_lora-4-s3"
    with pytest.raises(ImageLoRAError, match=r"study spec .*: methods: .*"):
        load_spec(spec_file, ["methods={}"])


def test_study_command_reports_a_bad_spec_in_one_line(spec_file, tmp_path, capsys):
    assert cli_main(["study", str(spec_file), "methods={}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "methods" in err[0] and str(spec_file) in err[0]
    assert cli_main(["study", str(tmp_path / "missing.yaml")]) == 2


def test_a_narrowed_study_keeps_the_report_order_of_the_whole_one(tmp_path, spec_file):
    # `ratios=` / `methods=` run part of a grid; its cells must land where the whole grid puts them
    whole, spec_dir = load_spec(spec_file)
    part, _ = load_spec(
        spec_file,
        ['ratios={image-heavy: ["data.synth.instruction_words=[0,0]"]}', "methods={lora-v_proj: []}"],
    )
    assert list(part.ratios) == ["image-heavy"] and list(part.methods) == ["lora-v_proj"]
    order = cell_config(part, spec_dir, "image-heavy", "lora-v_proj", 0).labels["order"]
    assert order == cell_config(whole, spec_dir, "image-heavy", "lora-v_proj", 0).labels["order"] == "r01m01"
    extra, _ = load_spec(spec_file, ['ratios={mid: ["data.synth.instruction_words=[5,5]"]}'])
    assert cell_config(extra, spec_dir, "mid", "zero-shot", 0).labels["order"] == "r02m00"  # after the file's
    # runs logged by an older version under colliding numbers: each ratio's rows still stay together
    metrics = {col: 1.0 for col in (*REPORT_METRICS, *LOSS_COLUMNS)}
    rows = [
        {"ratio": ratio, "method": method, "seed": 0, "order": f"r00m{m:02d}", **metrics}
        for ratio in ("image-heavy", "balanced")
        for m, method in enumerate(("lora", "image_lora"))
    ]
    ratios = [s["ratio"] for s in summarize(rows) if s["method"] != CHANCE_METHOD]
    assert ratios[:2] == [ratios[0]] * 2 and ratios[2:] == [ratios[2]] * 2 and ratios[0] != ratios[2]


def test_study_rows_count_the_newest_run_of_each_cell(tmp_path):
    # An edited study re-run into the same experiment leaves older runs of its cells: one row per cell.
    import time

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("s", artifact_location=str(tmp_path / "art"))
    labels = {
        "labels.study": "s",
        "labels.ratio": "image-heavy",
        "labels.method": "lora",
        "labels.order": "r00m00",
    }
    for seed, accuracy in (("0", 0.1), ("0", 0.5), ("1", 0.3)):
        run = client.create_run(exp)
        for key, value in {**labels, "labels.seed": seed}.items():
            client.log_param(run.info.run_id, key, value)
        client.log_metric(run.info.run_id, "grounding_accuracy", accuracy)
        client.set_terminated(run.info.run_id)
        time.sleep(0.01)  # distinct start times: the second seed-0 run is the newer one
    rows = sorted(study_rows(uri, "s"), key=lambda r: r["seed"])
    assert [(r["seed"], r["accuracy"]) for r in rows] == [("0", 0.5), ("1", 0.3)]


def test_study_rows_take_a_skipped_stage_from_the_run_that_produced_it(tmp_path):
    # Re-running a finished study re-evaluates each cell but skips its training: the newest run has the
    # evaluation, the older one the training curve and costs of the adapter both evaluated.
    import time

    from mlflow import MlflowClient

    from imagelora_dist.tracking import PARENT_TAG

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("s", artifact_location=str(tmp_path / "art"))
    labels = {"labels.study": "s", "labels.ratio": "balanced", "labels.method": "lora", "labels.seed": "0"}

    def cell_run(labels, accuracy, losses, text_acc=None):
        parent = client.create_run(exp)
        for key, value in labels.items():
            client.log_param(parent.info.run_id, key, value)
        client.log_metric(parent.info.run_id, "grounding_accuracy", accuracy)
        if text_acc is not None:
            client.log_metric(parent.info.run_id, "text_task_accuracy", text_acc)
        skipped = "false" if losses else "true"
        train = client.create_run(
            exp, tags={PARENT_TAG: parent.info.run_id, "imagelora.skipped": skipped}, run_name="train"
        )
        if losses:
            for step, loss in enumerate(losses):
                client.log_metric(train.info.run_id, "loss", loss, step=step)
            client.log_metric(train.info.run_id, "trainable_params", 1234)
        client.set_terminated(train.info.run_id)
        client.set_terminated(parent.info.run_id)
        time.sleep(0.01)

    cell_run(labels, 0.2, [3.0, 2.0, 1.0], text_acc=0.5)
    cell_run(labels, 0.4, None)  # re-evaluated (without the text task), training skipped
    other = {**labels, "labels.seed": "1"}
    cell_run(other, 0.1, [4.0, 3.0])
    cell_run(other, 0.3, [5.0])  # trained again (an edited study): nothing comes from the older run
    rows = {r["seed"]: r for r in study_rows(uri, "s")}
    assert rows["0"]["accuracy"] == 0.4  # the newest evaluation
    assert rows["0"]["params"] == 1234 and (rows["0"]["loss_start"], rows["0"]["loss_end"]) == (2.0, 2.0)
    assert rows["0"]["text_acc"] is None  # an evaluation figure is never borrowed from an older run
    assert rows["1"]["accuracy"] == 0.3 and rows["1"]["loss_start"] == 5.0
