"""`imagelora-dist plan`: per-GPU and host memory of a run (probe, train, eval) before any GPU is rented,
and how fast each stage runs and what bounds it.

estimate.py builds the plan from a model config on the meta device; memory.py holds the memory arithmetic
(and `resolve_eval_backend`, eval.backend auto); timing.py the compute and communication of a step on the
GPU and links of hardware.py; options.py the alternatives for the same global batch; command.py reads a
run config or the CLI flags; render.py prints it."""

from __future__ import annotations

from imagelora_dist.plan.command import (
    add_plan_arguments,
    config_model,
    eval_backend_for,
    plan_command,
    request_from_config,
)
from imagelora_dist.plan.estimate import OFFLOADS, Plan, PlanRequest, make_plan, meta_model
from imagelora_dist.plan.memory import GIB, RUNTIME_ALLOWANCE_GIB, DeepSpeedLimits, resolve_eval_backend
from imagelora_dist.plan.render import render_plan

__all__ = [
    "GIB",
    "OFFLOADS",
    "RUNTIME_ALLOWANCE_GIB",
    "DeepSpeedLimits",
    "Plan",
    "PlanRequest",
    "add_plan_arguments",
    "config_model",
    "eval_backend_for",
    "make_plan",
    "meta_model",
    "plan_command",
    "render_plan",
    "request_from_config",
    "resolve_eval_backend",
]
