"""The step-metric relay to MLflow is bounded (issue 30 item 4): a stub tracking server on 127.0.0.1 that
answers, answers 503, or hangs; what reaches it is read from the requests it received, not from the relay."""

from __future__ import annotations

import os

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import threading  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
from mlflow_stub import StubServer  # noqa: E402

from imagelora_dist.tracking import MetricRelay  # noqa: E402

pytest.importorskip("mlflow")


@pytest.fixture
def stub(request, monkeypatch):
    # MLflow's own retries and timeout, kept short so the stub's threads end soon; the relay's bound on
    # close must hold without them (the hang case waits far longer than the close timeout).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    server = StubServer(request.param)
    yield server
    server.stop()


def relay_for(server: StubServer, **kwargs) -> MetricRelay:
    from mlflow import MlflowClient

    return MetricRelay(MlflowClient(server.uri), "run0", **kwargs)


def steps(n: int) -> list[tuple[int, dict[str, float]]]:
    return [(s, {"loss": 1.0 / (s + 1), "lr": 1e-3 * s}) for s in range(n)]


@pytest.mark.parametrize("stub", ["ok"], indirect=True)
def test_every_step_reaches_the_server_in_batches(stub):
    relay = relay_for(stub, batch=50)
    for s, metrics in steps(120):
        relay.put(s, 1000 + s, metrics)
    relay.close(timeout=20)
    got = {(m["key"], int(m["step"])): m["value"] for body in stub.bodies for m in body["metrics"]}
    assert got == {(k, s): pytest.approx(v) for s, m in steps(120) for k, v in m.items()}
    assert all(body["run_id"] == "run0" for body in stub.bodies)
    # 240 values in batches of at most 50: at least 5 calls, far fewer than one per step
    assert 5 <= len(stub.bodies) < 120 and max(len(b["metrics"]) for b in stub.bodies) <= 50
    assert relay.summary() is None


@pytest.mark.parametrize("stub", ["ok"], indirect=True)
def test_a_full_backlog_drops_the_oldest_values_and_counts_them(stub):
    relay = relay_for(stub)
    with relay._cond:  # the writer cannot take anything while this is held: the backlog fills
        relay.backlog = 10
        for s, metrics in steps(8):
            relay.put(s, 1000 + s, metrics)
    relay.close(timeout=20)
    got = sorted((int(m["step"]), m["key"]) for body in stub.bodies for m in body["metrics"])
    assert got == [(s, k) for s in range(3, 8) for k in ("loss", "lr")]  # the newest 10 of 16
    assert relay.dropped_full == 6
    assert "6 of 16 step metric values did not reach MLflow (6 dropped oldest-first" in relay.summary()


def within(seconds: float, fn, *args) -> float | None:
    """Run fn in a thread; the seconds it took, or None if it had not returned after `seconds` (a broken
    relay fails the test instead of hanging it)."""
    start = time.monotonic()
    thread = threading.Thread(target=fn, args=args, daemon=True)
    thread.start()
    thread.join(seconds)
    return None if thread.is_alive() else time.monotonic() - start


@pytest.mark.parametrize("stub", ["503", "hang"], indirect=True)
def test_close_returns_in_bounded_time_when_the_server_fails(stub):
    relay = relay_for(stub, backoff_s=0.2)
    for s, metrics in steps(30):
        relay.put(s, 1000 + s, metrics)
    # Without the bound, close waits for the server: the hang holds each call 30 s (MLflow's timeout here,
    # 120 s by default), a 503 is retried with backoff while values wait. 15 s is far from both and from 2.
    assert within(15, relay.close, 2) is not None, "close() did not return within 15 s"
    assert stub.requests >= 1
    assert relay.sent == 0 and relay.unsent + relay.dropped_full + relay.dropped_rejected == 60
    line = relay.summary()
    assert line.startswith("60 of 60 step metric values did not reach MLflow") and "\n" not in line
    # Nothing more is taken once closed.
    relay.put(99, 0, {"loss": 0.0})
    assert relay.received == 60


@pytest.mark.parametrize("stub", ["hang"], indirect=True)
def test_put_never_waits_for_a_hanging_server(stub):
    relay = relay_for(stub, backlog=100)
    relay.put(0, 1000, {"loss": 1.0})
    while stub.requests == 0:  # the writer's first call is now stuck in the server
        time.sleep(0.01)

    def train():
        for s, metrics in steps(500):
            relay.put(s, 1000 + s, metrics)

    assert within(10, train) is not None, "put() waited for the tracking server"
    assert relay.received == 1001 and relay.dropped_full == 1001 - 100 - 1  # one value is in the hung call
    relay.close(timeout=0.5)
    assert relay.unsent == 101
