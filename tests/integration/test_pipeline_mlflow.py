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
    assert parent.info.run_name == "mlflow-check" and parent.info.status == "FINISHED"
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
