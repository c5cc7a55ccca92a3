"""The driver's side of `run_training` (train/ray_train.py), on one local Ray:

* the MLflow relay actor (`driver_side`) never holds training (issue 30 item 4): rank 0's per-step calls
  return at once and the end of training waits a bounded time, with the tracking server on a stub
  (tests/mlflow_stub.py) that answers or hangs (503: tests/app/test_tracking_relay.py);
* the retry bounds Ray Train actually receives (FailureConfig), caught at the call site (issue 35 row 7)."""

from __future__ import annotations

import os

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import pytest  # noqa: E402
from mlflow_stub import StubServer  # noqa: E402

pytest.importorskip("mlflow")


@pytest.fixture
def stub(request):
    server = StubServer(request.param)
    yield server
    server.stop()


def metrics(step: int) -> dict[str, float]:
    return {"loss": 1.0 / (step + 1), "lr": 1e-4, "tokens": float(step)}


@pytest.mark.parametrize("stub", ["ok"], indirect=True)
def test_rank0_metrics_reach_mlflow_through_the_actor_in_batches(local_ray, stub):
    import ray

    from imagelora_dist.train.ray_train import driver_side

    outcome = driver_side(stub.uri, "run-ok")
    try:
        calls = [outcome.log_metrics.remote(s, 1000 + s, metrics(s)) for s in range(200)]
        ray.get(calls, timeout=60)
        assert ray.get(outcome.close_relay.remote(20), timeout=80) is None
    finally:
        ray.kill(outcome)
    got = {(m["key"], int(m["step"])): m["value"] for body in stub.bodies for m in body["metrics"]}
    assert got == {(k, s): pytest.approx(v) for s in range(200) for k, v in metrics(s).items()}
    assert len(stub.bodies) < 200  # batched, not one call per step


@pytest.mark.parametrize("stub", ["hang"], indirect=True)  # 503: tests/app/test_tracking_relay.py
def test_a_failing_tracking_server_never_holds_training(local_ray, stub):
    import ray

    from imagelora_dist.train.ray_train import driver_side

    outcome = driver_side(stub.uri, "run-down", backlog=90)
    try:
        # A step's call queues and returns: 300 steps are through long before one failing MLflow call would
        # be (the hang holds a call 20 s, the relay actor's MLflow timeout; 503s are retried with backoff).
        calls = [outcome.log_metrics.remote(s, 1000 + s, metrics(s)) for s in range(300)]
        ray.get(calls, timeout=15)
        # The end of training: bounded by close_relay's own timeout however the server behaves.
        line = ray.get(outcome.close_relay.remote(2), timeout=15)
    finally:
        ray.kill(outcome)
    assert stub.requests >= 1
    assert line.startswith("900 of 900 step metric values did not reach MLflow (")
    dropped = int(line.split("(")[1].split(" dropped oldest-first")[0])
    assert dropped > 0  # the backlog is bounded: the oldest values went first
    assert "from a full backlog of 90" in line and "\n" not in line


class _Captured(Exception):
    """Raised by the spy trainer's fit: the test needs what run_training built, not a run."""


def test_ray_train_receives_the_bounded_failure_config(local_ray, tmp_path, monkeypatch):
    from ray.train.torch import TorchTrainer

    from imagelora_dist.config import load_config
    from imagelora_dist.train import ray_train

    seen = []

    class SpyTrainer(TorchTrainer):  # the real constructor validates what it is given
        def fit(self):
            seen.append(self.run_config)
            raise _Captured

    monkeypatch.setattr(ray_train, "TorchTrainer", SpyTrainer)
    monkeypatch.setenv(ray_train.START_TIMEOUT_ENV, "30")
    overrides = [f"output_dir={tmp_path}", "train.method=image_lora_all", "train.workers=2", "tracking.enabled=false",
                 "train.max_failures=2", "ray.autoscale_wait_s=45"]  # fmt: skip
    cfg = load_config(None, overrides)
    with pytest.raises(_Captured):
        ray_train.run_training(cfg, str(tmp_path / "shards"), identity="spy", log=lambda m: None)
    (run_config,) = seen
    # By hand: 2 restarts after a worker failure; a group that cannot be placed is tried 2 + ceil(45 / 30)
    # = 4 more times (Ray's default, -1, retries forever).
    assert run_config.failure_config.max_failures == 2
    assert run_config.failure_config.controller_failure_limit == 4
    assert run_config.name == f"{cfg.name}-train"
