"""`compare`: rows from parent runs (metrics from stages), text and HTML rendering, the logged report."""

from __future__ import annotations

import os

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import re  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from imagelora_dist.compare import compare_main, compare_runs, format_value, render_html, render_table  # noqa: E402
from imagelora_dist.config import RunConfig, load_config  # noqa: E402
from imagelora_dist.errors import ImageLoRAError  # noqa: E402
from imagelora_dist.tracking import Tracker, flatten  # noqa: E402

pytest.importorskip("mlflow")


@pytest.fixture
def store(tmp_path):
    """Two pipeline runs in experiment "cmp": an image_lora one that finished, a lora one that failed.

    Logged as the pipeline logs them: Tracker.pipeline_run records the flattened config as params (so
    `train.method` is a param) and the pipeline adds the tag imagelora.method. The lora run gets no tag,
    so its method can only come from the param."""
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    ids = {}

    def cfg(name: str, *overrides: str) -> RunConfig:
        tracking = [
            f"tracking.uri={uri}",
            "tracking.experiment=cmp",
            f"tracking.artifact_root={tmp_path}/art",
        ]
        return load_config(None, [f"name={name}", *tracking, *overrides])

    first_cfg = cfg("tiny-image-lora")
    first = Tracker(first_cfg)
    with first.pipeline_run(tags={"imagelora.method": first_cfg.train.method}) as pid:
        ids["first"] = pid
        first.log_metrics({"trainable_params": 12288.0, "adapter_train_flops": 3.5e12})
        with first.stage_run("probe"):
            first.log_metrics({"probe_examples_per_s": 4.0})
        with first.stage_run("train"):
            first.log_metrics({"train_samples_per_s": 1.0}, step=0)
            first.log_metrics({"train_samples_per_s": 2.5}, step=1)
        with first.stage_run("eval"):
            first.log_metrics({"grounding_accuracy": 0.8125, "text_max_abs_logit_diff": 0.0})
    time.sleep(0.01)  # distinct start times, so "newest first" is well defined
    second = Tracker(cfg("tiny-lora", "train.method=lora"))
    with pytest.raises(RuntimeError):
        with second.pipeline_run() as pid:
            ids["second"] = pid
            with second.stage_run("probe"):
                second.log_metrics({"probe_examples_per_s": 7.25})
            raise RuntimeError("boom")
    return uri, ids


def test_method_param_is_the_pipelines(store):
    """The lora run's params carry train.method exactly as the pipeline's flattened config has it."""
    from mlflow.tracking import MlflowClient

    uri, ids = store
    expected = flatten(load_config(None, ["train.method=lora"]).model_dump(mode="json"))
    assert expected["train.method"] == "lora"
    run = MlflowClient(tracking_uri=uri).get_run(ids["second"])
    assert run.data.params["train.method"] == expected["train.method"]
    assert "imagelora.method" not in run.data.tags
    assert {k: v for k, v in run.data.params.items() if k.startswith("train.")} == {
        k: v for k, v in expected.items() if k.startswith("train.")
    }


def test_rows(store):
    uri, ids = store
    rows = compare_runs(uri, "cmp")
    assert [r["run"] for r in rows] == ["tiny-lora", "tiny-image-lora"]
    lora, image = rows
    assert image == {
        "run": "tiny-image-lora",
        "run_id": ids["first"][:8],
        "status": "FINISHED",
        "method": "image_lora",
        "trainable_params": 12288,
        "adapter_flops": 3_500_000_000_000,
        "accuracy": 0.8125,
        "throughput": 2.5,  # train_samples_per_s (latest step) wins over the probe's rate
        "text_preservation": 0.0,
    }
    assert lora["status"] == "FAILED" and lora["method"] == "lora"
    assert lora["throughput"] == 7.25  # falls back to probe_examples_per_s
    assert lora["trainable_params"] is None and lora["accuracy"] is None


def test_text_and_html(store):
    uri, _ = store
    rows = compare_runs(uri, "cmp")
    text = render_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["run", "run"] and "accuracy" in lines[0]
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule line up
    assert "tiny-image-lora" in lines[3] and "3,500,000,000,000" in lines[3] and "12,288" in lines[3]
    assert "0.8125" in lines[3]
    assert lines[2].split()[:4] == ["tiny-lora", rows[0]["run_id"], "FAILED", "lora"]
    assert " - " in lines[2]

    page = render_html(rows, "cmp <runs>")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<title>cmp &lt;runs&gt;</title>" in page
    assert page.count("<tr") == 3 and "3,500,000,000,000" in page
    assert "<script" not in page and "http" not in page  # self-contained

    assert "(no pipeline runs)" in render_table([])
    assert "no pipeline runs" in render_html([], "empty")


def test_format_value():
    assert format_value(None) == "-"
    assert format_value(1234567) == "1,234,567"
    assert format_value(2.0e9) == "2,000,000,000"
    assert format_value(12.0) == "12"
    assert format_value(0.123456) == "0.1235"
    assert format_value(1.5e-7) == "1.5e-07"


def test_compare_main_logs_report(store, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri, _ = store
    path = compare_main(uri, "cmp", tmp_path / "report")
    assert path == tmp_path / "report" / "compare.html"
    assert "tiny-image-lora" in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["compare.html"]
    assert "tiny-lora" in capsys.readouterr().out

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("cmp")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`imagelora.compare` = '1'")
    assert len(runs) == 1 and runs[0].info.run_name == "compare" and runs[0].info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(runs[0].info.run_id)] == ["compare.html"]
    # The report run is not a pipeline run: a second compare still shows two rows.
    assert len(compare_runs(uri, "cmp")) == 2


def test_unknown_experiment(store, tmp_path):
    uri, _ = store
    with pytest.raises(ImageLoRAError, match=r"unknown MLflow experiment 'nope'.*cmp"):
        compare_runs(uri, "nope")
    missing = f"sqlite:///{tmp_path}/absent.db"
    with pytest.raises(ImageLoRAError, match="no MLflow store"):
        compare_runs(missing, "cmp")
    assert not (tmp_path / "absent.db").exists()


def test_breakdown_side_by_side(tmp_path, capsys):
    """Per-group grounding accuracy read back from MLflow, a column per run (the eval stage logs it; the
    pipeline copies it to the parent)."""
    from imagelora_dist.compare import pipeline_runs as runs_of
    from imagelora_dist.compare import render_breakdown, run_groups
    from imagelora_dist.eval.breakdown import group_metrics

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    tracking = [f"tracking.uri={uri}", "tracking.experiment=bd", f"tracking.artifact_root={tmp_path}/art"]
    outcomes = {
        "zero-shot": [(("mobile", "icon"), False), (("mobile", "text"), True), (("web", "icon"), False)],
        "tuned": [(("mobile", "icon"), True), (("mobile", "text"), True), (("Desktop_App", "icon"), True)],
    }
    for name, results in outcomes.items():
        tracker = Tracker(load_config(None, [f"name={name}", *tracking]))
        micro = {"grounding_accuracy": sum(ok for _, ok in results) / 3, "grounding_count": 3}
        metrics = {**group_metrics(results), **micro}
        with tracker.pipeline_run():
            with tracker.stage_run("eval"):
                tracker.log_metrics(metrics)
            if name == "tuned":
                tracker.log_metrics(metrics)  # as the pipeline does; zero-shot's stay on its stage run only
        time.sleep(0.01)
    groups = [run_groups(run, stages) for run, stages in runs_of(uri, "bd")]
    assert [g["run"] for g in groups] == ["tuned-image_lora", "zero-shot-image_lora"]  # names say the method
    assert groups[1]["cells"][("mobile", "text")] == (1.0, 1)
    assert groups[1]["macro"] == pytest.approx(1 / 3)
    table = render_breakdown(groups)
    lines = table.splitlines()
    assert lines[1].split() == ["group", "tuned-image_lora", "zero-shot-image_lora"]
    rows = {re.split(r"\s{2,}", line.strip())[0]: line.split() for line in lines[3:]}
    assert rows["mobile / icon"][-4:] == ["100.0", "(1)", "0.0", "(1)"]
    assert rows["Desktop_App / icon"][-3:] == ["100.0", "(1)", "-"]
    assert rows["web / icon"][-3:] == ["-", "0.0", "(1)"]
    assert rows["all / icon"][-4:] == ["100.0", "(2)", "0.0", "(2)"]
    assert rows["macro average"][-2:] == ["100.0", "33.3"]
    assert rows["all (micro)"][-4:] == ["100.0", "(3)", "33.3", "(3)"]
    assert render_breakdown([{"run": "x", "run_id": "1", "cells": {}, "macro": None}]) == ""

    path = compare_main(uri, "bd", tmp_path / "report")
    out = capsys.readouterr().out
    assert table in out
    page = path.read_text()
    assert "by data source / element type" in page and "Desktop_App / icon" in page
