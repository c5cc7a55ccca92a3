"""The Ray probe: identical selection bytes for any worker count, crash recovery, clear failures."""

from __future__ import annotations

import pytest

from imagelora_dist.config import load_config
from imagelora_dist.pipeline import run_probe_select
from imagelora_dist.probe.distributed import FAULT_BATCH_ENV, FAULT_MARKER_ENV, ProbeFailed

pytestmark = pytest.mark.integration  # Ray clusters, DeepSpeed runs, servers: not in make test-fast


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from imagelora_dist.pipeline import ensure_train_shards

    out = tmp_path_factory.mktemp("shards")
    cfg = load_config(None, [f"output_dir={out}", "data.synth.num_samples=16", "data.synth.samples_per_shard=4",
                             "data.synth.workers=1"])  # fmt: skip
    return ensure_train_shards(cfg, log=lambda m: None)


def _cfg(tmp_path, shards, **overrides):
    items = {
        "output_dir": str(tmp_path),
        "data.train": shards,
        "data.synth.num_samples": 16,
        "data.synth.samples_per_shard": 4,
        "data.synth.workers": 1,
        "probe.num_examples": 6,
        "probe.batch_size": 2,
        "selection.budget": 5,
        "tracking.enabled": False,
        **overrides,
    }
    return load_config(None, [f"{k}={v}" for k, v in items.items()])


def test_one_and_two_workers_give_identical_selection_bytes(local_ray, shards, tmp_path):
    one = run_probe_select(_cfg(tmp_path / "w1", shards, **{"ray.num_workers": 1}), log=lambda m: None)
    two = run_probe_select(_cfg(tmp_path / "w2", shards, **{"ray.num_workers": 2}), log=lambda m: None)
    three = run_probe_select(_cfg(tmp_path / "w3", shards, **{"ray.num_workers": 3}), log=lambda m: None)
    assert one.output.read_bytes() == two.output.read_bytes() == three.output.read_bytes()
    assert one.metrics["heads_selected"] == 5 and one.metrics["probe_examples_per_s"] > 0
    assert (tmp_path / "w1" / "head_heatmap.png").stat().st_size > 1000


def test_killed_actor_is_retried_and_selection_unchanged(local_ray, shards, tmp_path, monkeypatch):
    clean = run_probe_select(_cfg(tmp_path / "clean", shards), log=lambda m: None)
    marker = tmp_path / "crashed-once"
    monkeypatch.setenv(FAULT_BATCH_ENV, "1")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(marker))
    crashed = run_probe_select(_cfg(tmp_path / "crash", shards), log=lambda m: None)
    assert marker.exists(), "the fault must have fired"
    assert crashed.output.read_bytes() == clean.output.read_bytes()


def test_batch_that_keeps_failing_names_the_batch(local_ray, shards, tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_BATCH_ENV, "2")
    monkeypatch.delenv(FAULT_MARKER_ENV, raising=False)
    with pytest.raises(ProbeFailed, match="probe batch 2 failed after 1 retries"):
        run_probe_select(_cfg(tmp_path / "fail", shards, **{"ray.max_retries": 1}), log=lambda m: None)
    assert not (tmp_path / "fail" / "head_selection.json").exists()


def test_autoscale_wait_uses_the_workers_that_came_up(local_ray, shards, tmp_path):
    # 2 CPUs, 3 workers of 1 CPU asked for, no autoscaler: two come up, the third is given up on after
    # the wait, and the scores (hence the selection bytes) are those of a one-worker run. The wait is the
    # test's floor: long enough for two actors to start on a loaded 2-core CI machine (~4 s idle).
    lines: list[str] = []
    one = run_probe_select(_cfg(tmp_path / "w1", shards, **{"ray.num_workers": 1}), log=lambda m: None)
    waited = run_probe_select(
        _cfg(tmp_path / "wait", shards, **{"ray.num_workers": 3, "ray.autoscale_wait_s": 15}),
        log=lines.append,
    )
    assert waited.output.read_bytes() == one.output.read_bytes()
    assert any("2 of 3 workers came up within 15s" in line for line in lines), lines


def test_autoscale_wait_with_no_placeable_worker_fails_clearly(local_ray, shards, tmp_path):
    cfg = _cfg(tmp_path, shards, **{"ray.cpus_per_worker": 64, "ray.autoscale_wait_s": 1})
    with pytest.raises(
        ProbeFailed, match="no probe worker .64 CPU, 0 GPU. came up within ray.autoscale_wait_s=1s"
    ):
        run_probe_select(cfg, log=lambda m: None)
