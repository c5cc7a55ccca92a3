"""The pipeline's MLflow record: parent run, nested stage run, params, metrics and artifacts by name."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from imagelora_dist.config import load_config
from imagelora_dist.pipeline import run_pipeline

pytestmark = pytest.mark.integration  # Ray clusters, DeepSpeed runs, servers: not in make test-fast


def test_runs_params_metrics_artifacts(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    cfg = load_config(None, [
        "name=mlflow-check", f"output_dir={tmp_path}/out", f"tracking.uri={uri}",
        f"tracking.artifact_root={tmp_path}/mlartifacts", "data.synth.num_samples=8",
        "data.synth.samples_per_shard=4", "data.synth.workers=1", "probe.num_examples=4", "ray.num_workers=1",
    ])  # fmt: skip
    results = run_pipeline(cfg, log=lambda m: None, stages=("probe",))
    assert not results["probe"].skipped
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mlflow-check")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    child = next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    assert parent.info.run_name == "mlflow-check-image_lora" and parent.info.status == "FINISHED"
    assert (
        parent.data.params["model.family"] == "qwen2_5_vl" and parent.data.params["probe.num_examples"] == "4"
    )
    assert child.info.run_name == "probe" and child.data.tags["imagelora.stage"] == "probe"
    for key in ("probe_examples_per_s", "visual_token_fraction", "heads_selected", "trainable_params",
                "adapter_train_flops", "lora_all_linear_adapter_train_flops"):  # fmt: skip
        assert key in child.data.metrics and key in parent.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "selection")}
    assert artifacts == {"selection/head_selection.json", "selection/head_heatmap.png"}
    assert str(tmp_path / "mlartifacts") in exp.artifact_location
    # A re-run skips the probe and says so.
    again = run_pipeline(cfg, log=lambda m: None, stages=("probe",))
    assert again["probe"].skipped
    latest = client.search_runs([exp.experiment_id], filter_string="tags.`imagelora.stage` = 'probe'",
                                order_by=["attributes.start_time DESC"])[0]  # fmt: skip
    assert latest.data.tags["imagelora.skipped"] == "true"


def test_eval_stage_logs_the_group_breakdown_and_the_predictions_table(tmp_path):
    import json
    from collections import Counter

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    cfg = load_config(None, [
        "name=eval-check", f"output_dir={tmp_path}/out", f"tracking.uri={uri}", "train.method=none",
        f"tracking.artifact_root={tmp_path}/mlartifacts", "eval.synth_samples=6", "eval.max_new_tokens=4",
        "eval.text_task_problems=0", "data.synth.workers=1", "eval.workers=1", "ray.num_cpus=2",
    ])  # fmt: skip
    run_pipeline(cfg, log=lambda m: None)
    report = json.loads((tmp_path / "out" / "eval_report.json").read_text())
    grounding = [p for p in report["predictions"] if p["task"] == "grounding"]
    assert grounding, "the synthetic set has grounding questions"
    counts = Counter((p["data_source"], p["element_type"]) for p in grounding)
    hits = Counter((p["data_source"], p["element_type"]) for p in grounding if p["correct"])
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("eval-check")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    child = next(r for r in runs if r.data.tags.get("imagelora.stage") == "eval")
    for run in (child, parent):  # the groups, recomputed from the report's predictions alone
        metrics = run.data.metrics
        for (source, etype), n in counts.items():
            assert metrics[f"grounding_count/{source}/{etype}"] == n
            assert metrics[f"grounding_acc/{source}/{etype}"] == hits[(source, etype)] / n
        assert metrics["grounding_count"] == len(grounding)
        assert metrics["wrong_format_count"] == sum(p["wrong_format"] for p in report["predictions"])
    local = client.download_artifacts(child.info.run_id, "eval/eval_predictions.json", str(tmp_path / "dl"))
    table = json.loads(open(local).read())
    assert table["columns"][:3] == ["id", "task", "answer"]
    assert [row[0] for row in table["data"]] == [p["id"] for p in report["predictions"]]
