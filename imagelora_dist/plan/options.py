"""The plan's alternatives: for the run's global batch, every way of running a training step that the time
model and the memory plan know (micro-batch vs accumulation, ZeRO-2 vs ZeRO-3, hierarchical partitioning
across nodes, gradient checkpointing), with its predicted step time and memory; the fastest that fits
(per GPU, and per worker on the host when a pod limit is given) is the best."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from imagelora_dist.plan.timing import StageTime


@dataclass(frozen=True)
class Option:
    """One way to run the same global batch, with its memory and predicted step."""

    zero: int
    micro_batch: int
    accumulation: int
    checkpointing: bool
    hpz: int
    gpu_gib: float
    host_gib: float
    fits: bool
    time: StageTime

    def key(self) -> tuple[int, int, int, bool, int]:
        """What identifies the option (compared against a config's own settings)."""
        return (self.zero, self.micro_batch, self.accumulation, self.checkpointing, self.hpz)

    def describe(self) -> str:
        """The settings a config writes for it."""
        hpz = f", zero3_hpz {self.hpz}" if self.hpz > 1 else ""
        gc = "on" if self.checkpointing else "off"
        return f"ZeRO-{self.zero}{hpz}, micro-batch {self.micro_batch} x accumulation {self.accumulation}, checkpointing {gc}"


def current_key(req: Any) -> tuple[int, int, int, bool, int]:
    """The request's own option."""
    hpz = req.hpz if req.zero == 3 and req.nodes > 1 else 1
    return (req.zero, req.micro_batch, req.accumulation, bool(req.gradient_checkpointing), hpz)


def alternatives(
    plan: Any, make_plan: Callable[..., Any], host_limit_gib: float | None = None
) -> list[Option]:
    """Every option for the plan's global batch (each planned by `make_plan`: estimate.make_plan, passed in
    because it calls this), the fitting ones first, each group fastest first."""
    req = plan.request
    per_gpu = req.micro_batch * req.accumulation
    stages = (2, 3) if req.method != "full" else (req.zero,)
    options = []
    for zero in stages:
        if req.offload == "optimizer+params" and zero != 3:
            continue
        hpzs = (1, req.gpus_per_node) if zero == 3 and req.nodes > 1 and req.gpus_per_node > 1 else (1,)
        for mb in (m for m in range(1, per_gpu + 1) if per_gpu % m == 0):
            for hpz in hpzs:
                for gc in (False, True):
                    ds = replace(req.deepspeed, stage=zero) if req.deepspeed is not None else None
                    alt = replace(req, zero=zero, micro_batch=mb, accumulation=per_gpu // mb, hpz=hpz,
                                  gradient_checkpointing=gc, deepspeed=ds,
                                  quantized_weights=req.quantized_weights and zero == 3)  # fmt: skip
                    other = make_plan(alt, with_alternatives=False)
                    gpu = sum((other.train_checkpointed if gc else other.train).values())
                    host = other.host_peak_gib
                    fits = gpu <= req.gpu_memory_gib and (host_limit_gib is None or host <= host_limit_gib)
                    options.append(
                        Option(zero, mb, per_gpu // mb, gc, hpz, gpu, host, fits, other.times["train"])
                    )

    # Equal steps (compute-bound): the one that moves fewer bytes, then fewer and larger micro-batches (bigger
    # matmuls, less per-micro-batch overhead than the model counts), then less memory.
    def rank(o: Option) -> tuple[bool, float, float, int, float]:
        return (not o.fits, _sig(o.time.step_s), _sig(sum(o.time.link_s)), o.accumulation, o.gpu_gib)

    return sorted(options, key=rank)


def _sig(seconds: float) -> float:
    """Three significant digits: steps closer than that are equal to the model."""
    return float(f"{seconds:.3g}")
