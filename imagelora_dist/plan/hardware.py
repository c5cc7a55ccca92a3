"""The GPUs and links the plan's time model knows: peak bf16 matmul rate, memory, HBM and link bandwidths.

Figures are the vendors' dense (no sparsity) datasheet numbers for the SXM parts; a bandwidth is per GPU and
per direction (what one rank can receive while every rank does the same). Every figure can be overridden
(`imagelora-dist plan --tflops/--nvlink-gbs/--fabric-gbs ...`): the plan prints the ones it used.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from imagelora_dist.errors import ImageLoRAError


@dataclass(frozen=True)
class Hardware:
    """One GPU type and the links between GPUs (GB/s are 10**9 bytes a second)."""

    name: str
    bf16_tflops: float  # dense peak
    memory_gib: float
    hbm_gbs: float  # device memory bandwidth: what a decode step that reads every weight runs at
    nvlink_gbs: float  # inside a node, per GPU and direction (NVLink 4: 900 GB/s both ways)
    fabric_gbs: float  # between nodes, per GPU and direction (one 400 Gb/s InfiniBand/RoCE NIC per GPU)
    # Share of the peaks a large run reaches (assumptions; the GPU bench records what a run measures):
    matmul_efficiency: float = 0.6  # of bf16_tflops on the model's matmuls
    link_efficiency: float = 0.8  # of a link's bandwidth reached by NCCL's all-gather / reduce-scatter


GPUS: dict[str, Hardware] = {
    "h100": Hardware("H100 SXM", bf16_tflops=989.0, memory_gib=80.0, hbm_gbs=3350.0, nvlink_gbs=450.0,
                     fabric_gbs=50.0),
    "h200": Hardware("H200 SXM", bf16_tflops=989.0, memory_gib=141.0, hbm_gbs=4800.0, nvlink_gbs=450.0,
                     fabric_gbs=50.0),
}  # fmt: skip


def hardware(
    gpu: str = "h200",
    *,
    tflops: float | None = None,
    memory_gib: float | None = None,
    nvlink_gbs: float | None = None,
    fabric_gbs: float | None = None,
) -> Hardware:
    """The table's entry for `gpu` with any figure given here in its place."""
    try:
        base = GPUS[gpu.lower()]
    except KeyError:
        raise ImageLoRAError(f"--gpu {gpu!r}: one of {', '.join(GPUS)}") from None
    given = {
        "bf16_tflops": tflops,
        "memory_gib": memory_gib,
        "nvlink_gbs": nvlink_gbs,
        "fabric_gbs": fabric_gbs,
    }
    for name, value in given.items():
        if value is not None and not value > 0:
            raise ImageLoRAError(f"plan: {name} {value}: must be > 0")
    return replace(base, **{k: v for k, v in given.items() if v is not None})
