"""Ray start-up for every stage: connect to the configured cluster or start a local one, and give every
worker process the run's environment (imagelora_dist.offline_env plus what Ray Train needs).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import ray

from imagelora_dist import ray_quiet
from imagelora_dist.config import RunConfig
from imagelora_dist.offline_env import OFFLINE_ENV

Log = Callable[[str], None]

WORKER_ENV: dict[str, str] = {
    **OFFLINE_ENV,
    # Ray Train 2.60 routes a worker's print() to the root logger *and*, since Ray wraps the worker's
    # stdout, to stdout too: every progress line reached the terminal twice. Plain print, once.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}


def ensure_ray(cfg: RunConfig, log: Log = print) -> bool:
    """Connect to the configured Ray cluster, or start a local one. True if this call started Ray."""
    if ray.is_initialized():
        return False
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    env = dict(WORKER_ENV)
    if address:
        log(f"[ray] connecting to {address}")
        # Under `ray job submit` the job's runtime env is inherited, and Ray refuses a driver env that
        # repeats any of its keys: add only what the job does not already set.
        missing = {k: v for k, v in env.items() if k not in os.environ}
        if "://" not in address and address != "auto":
            # Ray Train's PlacementGroupCleaner asks the State API for the cluster's address: without
            # RAY_ADDRESS a worker reads the default temp dir's /tmp/ray/ray_current_cluster, not this
            # cluster's --temp-dir (another or a stale cluster there made it time out at the end of a run).
            # The driver has it from `ray job submit`, the workers not; no job runtime env of ours sets it.
            missing["RAY_ADDRESS"] = address
        ray.init(address=address, runtime_env={"env_vars": missing} if missing else None, log_to_driver=True)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            num_cpus=cfg.ray.num_cpus,
            include_dashboard=False,
            # Without the dashboard there is no State API; the hook mutes what warns about that each second.
            runtime_env={"env_vars": env, "worker_process_setup_hook": ray_quiet.HOOK},
            log_to_driver=True,
        )
        log(f"[ray] started a local Ray with {int(ray.cluster_resources().get('CPU', 0))} CPUs")
    return True


def multi_node() -> bool:
    """True when the connected Ray cluster has more than one live node (tasks may run off the driver's)."""
    return sum(1 for n in ray.nodes() if n.get("Alive")) > 1


# The collective backends' interface variables (gloo on CPUs, NCCL on GPUs). Unset, gloo binds to the address
# the hostname resolves to, often 127.0.0.1 (/etc/hosts): ranks on other hosts cannot reach it.
COLLECTIVE_IFNAME_ENV = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def interface_holding(address: str, interfaces: Mapping[str, Sequence[str]] | None = None) -> str | None:
    """The network interface that holds IPv4 `address` (name -> its addresses; this machine's if None)."""
    if interfaces is None:
        import socket

        import psutil

        interfaces = {
            name: [a.address for a in addrs if a.family == socket.AF_INET]
            for name, addrs in psutil.net_if_addrs().items()
        }
    for name, addrs in sorted(interfaces.items()):
        if address in addrs:
            return name
    return None


def collective_ifname_env(
    node_ip: str, environ: Mapping[str, str], interfaces: Mapping[str, Sequence[str]] | None = None
) -> dict[str, str]:
    """The interface variables to set for a process whose Ray address is `node_ip`: the interface holding
    it, for each variable not already in `environ` (the user's setting wins); {} if no interface holds it."""
    name = interface_holding(node_ip, interfaces)
    if name is None:
        return {}
    return {key: name for key in COLLECTIVE_IFNAME_ENV if not environ.get(key)}


def pin_collective_interface() -> dict[str, str]:
    """Set GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME in this Ray worker process from its node's Ray address,
    before torch.distributed starts; returns what it set."""
    chosen = collective_ifname_env(ray.util.get_node_ip_address(), os.environ)
    os.environ.update(chosen)
    return chosen
