"""The collective backend's network interface (ray_runtime / train.collective) and the train metrics of a
step redone after a restart (logged once), without Ray: tables and fakes in place of the machine."""

from __future__ import annotations

import os

import pytest

from imagelora_dist.ray_runtime import collective_ifname_env, interface_holding

TABLE = {"lo": ["127.0.0.1"], "eth0": ["10.77.0.2"], "docker0": ["172.17.0.1", "172.18.0.1"]}


def test_the_interface_holding_the_nodes_address_is_chosen_for_gloo_and_nccl():
    assert interface_holding("10.77.0.2", TABLE) == "eth0"
    assert interface_holding("172.18.0.1", TABLE) == "docker0"  # a secondary address counts too
    assert collective_ifname_env("10.77.0.2", {}, TABLE) == {
        "GLOO_SOCKET_IFNAME": "eth0",
        "NCCL_SOCKET_IFNAME": "eth0",
    }


def test_a_variable_the_user_set_wins_and_an_unknown_address_sets_nothing():
    env = {"GLOO_SOCKET_IFNAME": "ib0"}
    assert collective_ifname_env("10.77.0.2", env, TABLE) == {"NCCL_SOCKET_IFNAME": "eth0"}
    assert collective_ifname_env("10.77.0.2", {**env, "NCCL_SOCKET_IFNAME": "ib1"}, TABLE) == {}
    assert collective_ifname_env("192.0.2.7", {}, TABLE) == {}  # not ours: gloo's own choice stays


def test_this_machines_loopback_address_is_found_on_its_loopback_interface():
    loopback = [
        n for n in os.listdir("/sys/class/net") if open(f"/sys/class/net/{n}/type").read().strip() == "772"
    ]
    assert interface_holding("127.0.0.1") in loopback  # ARPHRD_LOOPBACK, read from sysfs, not psutil


def test_ray_trains_group_pins_the_interface_on_every_worker_before_the_process_group(monkeypatch):
    from ray.train.torch.config import _TorchBackend

    from imagelora_dist.ray_runtime import pin_collective_interface
    from imagelora_dist.train.collective import collective_torch_config

    calls: list[str] = []

    class Group:
        def execute(self, fn, *args, **kwargs):
            calls.append(fn.__name__)

    monkeypatch.setattr(_TorchBackend, "on_start", lambda self, group, config: calls.append("process group"))
    config = collective_torch_config(0)
    assert config.backend == "gloo" and collective_torch_config(1).backend == "nccl"
    config.backend_cls().on_start(Group(), config)
    assert calls == [pin_collective_interface.__name__, "process group"]


@pytest.mark.parametrize("steps", [[1, 2, 3, 2, 3, 4], [1, 2, 3, 4]])
def test_train_metrics_of_steps_redone_after_a_restart_reach_mlflow_once(steps):
    from imagelora_dist.train.ray_train import _Outcome

    outcome = _Outcome.__ray_metadata__.modified_class()  # the actor's class, run in this process
    put: list[tuple[int, float]] = []

    class Relay:
        def put(self, step, timestamp_ms, metrics):
            put.append((step, metrics["loss"]))

    outcome.relay = Relay()
    for i, step in enumerate(steps):
        outcome.log_metrics(step, 0, {"loss": float(i)})
    assert [s for s, _ in put] == [1, 2, 3, 4]
    assert put[-1] == (4, float(len(steps) - 1))  # the first values of a redone step stay, later steps go on
