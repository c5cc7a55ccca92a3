"""Ray Train's torch backend, with the collective's network interface chosen on every worker first.

Ray Train starts the process group (gloo / NCCL) in its backend's `on_start`, before the training function
runs: the interface variables must be set in each worker process before that (ray_runtime.pin_collective_interface).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend

from imagelora_dist.ray_runtime import pin_collective_interface


class _PinnedTorchBackend(_TorchBackend):
    def on_start(self, worker_group: Any, backend_config: TorchConfig) -> None:
        """Pin each worker's collective interface, then start the process group as Ray does."""
        worker_group.execute(pin_collective_interface)
        super().on_start(worker_group, backend_config)


@dataclass
class PinnedTorchConfig(TorchConfig):
    """TorchConfig whose workers set GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME from their node's Ray address."""

    @property
    def backend_cls(self) -> type:
        return _PinnedTorchBackend


def collective_torch_config(gpus: int | float) -> TorchConfig:
    """The torch backend config of every Ray Train group of the package: NCCL with GPUs, else gloo."""
    return PinnedTorchConfig(backend="nccl" if gpus else "gloo")
