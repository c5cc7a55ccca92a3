"""`imagelora-dist plan`: per-GPU memory of a training run before any GPU is rented.

The model is built from its config on the meta device (no weights), so the parameter counts are exact;
the adapter's size comes from the same accounting the pipeline logs. Memory terms, per GPU:

- base weights: every parameter in the training dtype (bf16: 2 bytes), partitioned over all GPUs by
  ZeRO-3 (plus one gathered module at a time), on the CPU with ZeRO-3 parameter offload;
- adapter weights, gradients and Adam moments: fp32 masters (4 + 4 + 8 bytes a parameter), partitioned
  by ZeRO-3 / ZeRO-2+ / ZeRO-1+, the moments on the CPU with optimizer offload;
- activations kept for the backward through the decoder layers at and above the lowest adapted layer
  (Image-LoRA on a budget spread over all layers: every layer), per token and layer
  (7 h + 2 kv_heads head_dim + 4 intermediate) values in the training dtype (the norms, q/k/v, attention
  output, SwiGLU); with gradient checkpointing each layer keeps its input (h values) and one layer at a
  time is recomputed; plus the logits (bf16) and their fp32 copy in the loss;
- the vision tower runs frozen under no_grad: one block's activations at a time.

`train.method: full` (every parameter trains) uses DeepSpeed's own model-state estimators instead. A fixed
allowance covers the CUDA context, NCCL buffers and allocator slack. These are estimates: the run itself
logs `peak_memory_gb` per step.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagelora_dist.errors import ImageLoRAError

GIB = 2**30
RUNTIME_ALLOWANCE_GIB = 3.0  # CUDA context, NCCL buffers, allocator fragmentation (an assumption)
OFFLOADS = ("none", "optimizer", "optimizer+params")


@dataclass(frozen=True)
class PlanRequest:
    """What a plan is asked about: the model, the cluster, ZeRO, the batch and the method."""

    config: dict[str, Any]
    name: str
    gpus_per_node: int = 8
    nodes: int = 1
    zero: int = 2
    offload: str = "none"
    micro_batch: int = 1
    visual_tokens: int = 1024
    text_tokens: int = 256
    method: str = "image_lora"
    rank: int = 8
    budget: float = 0.25
    lora_targets: tuple[str, ...] | str = ("v_proj",)
    precision: str = "bf16"
    gpu_memory_gib: float = 141.0  # an H200
    probe_batch: int = 2
    probe_backend: str = "actors"  # probe.backend: whole replicas, or one ZeRO-3 group over every GPU


@dataclass
class Plan:
    """Per-GPU memory (GiB) by term, for training and for one probe worker."""

    request: PlanRequest
    model: dict[str, Any]
    trainable: int
    train: dict[str, float] = field(default_factory=dict)
    train_checkpointed: dict[str, float] = field(default_factory=dict)
    probe: dict[str, float] = field(default_factory=dict)
    deepspeed_estimate: dict[str, float] | None = None

    @property
    def gpus(self) -> int:
        """GPUs in the run."""
        return self.request.gpus_per_node * self.request.nodes

    def fits(self, terms: dict[str, float]) -> bool:
        """Whether a column's total fits the GPU's memory."""
        return sum(terms.values()) <= self.request.gpu_memory_gib


def meta_model(config: dict[str, Any]) -> Any:
    """The model of a config.json dict, on the meta device (no memory, no download)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    fields = dict(config)
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise ImageLoRAError("model config: no model_type")
    try:
        cfg = AutoConfig.for_model(model_type, **fields)
    except (ValueError, KeyError, TypeError) as exc:
        raise ImageLoRAError(f"model config: {str(exc).splitlines()[0]}") from None
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(cfg)


def _parameter_counts(model: Any) -> tuple[int, int]:
    """(total parameters, the largest single module's own parameters); tied weights count once."""
    seen: dict[int, int] = {}
    largest = 0
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        largest = max(largest, sum(p.numel() for p in own))
        seen.update({id(p): p.numel() for p in own})
    return sum(seen.values()), largest


def _adapter_parameters(model: Any, spec: Any, req: PlanRequest) -> int:
    from imagelora_dist.adapter.accounting import (
        decoder_lora_targets,
        image_lora_num_parameters,
        lora_num_parameters,
    )

    if req.method == "lora":
        targets = list(req.lora_targets) if not isinstance(req.lora_targets, str) else req.lora_targets
        return lora_num_parameters(model, decoder_lora_targets(model, targets), req.rank)
    import torch

    from imagelora_dist.selection import select_heads

    # The probe decides where the heads go; for memory only how many matters: spread them uniformly.
    budget: float | int = 1.0 if req.method == "image_lora_all" else req.budget
    if budget > 1:  # a count of KV heads, as selection.budget takes it
        budget = int(budget)
    scores = torch.ones(spec.num_layers, spec.num_kv_heads, dtype=torch.float64)
    return image_lora_num_parameters(select_heads(scores, budget, tau=0.0), spec, req.rank)


def make_plan(req: PlanRequest) -> Plan:
    """Per-GPU memory of training (with and without gradient checkpointing) and of a probe worker."""
    from imagelora_dist.models.grad_scope import vision_tower
    from imagelora_dist.models.registry import resolve_model

    if req.offload not in OFFLOADS:
        raise ImageLoRAError(f"--offload {req.offload!r}: one of {', '.join(OFFLOADS)}")
    if req.zero not in (0, 1, 2, 3):
        raise ImageLoRAError(f"--zero {req.zero}: a ZeRO stage 0-3")
    if req.offload == "optimizer+params" and req.zero != 3:
        raise ImageLoRAError("--offload optimizer+params needs --zero 3 (only ZeRO-3 partitions parameters)")
    model = meta_model(req.config)
    spec = resolve_model(model)
    total, largest = _parameter_counts(model)
    text = model.config.get_text_config()
    vision = getattr(model.config, "vision_config", None)
    tower = vision_tower(model)
    vision_params = _parameter_counts(tower)[0] if tower is not None else 0
    b = 2 if req.precision == "bf16" else 4
    n = req.gpus_per_node * req.nodes
    full = req.method == "full"
    trainable = total if full else _adapter_parameters(model, spec, req)
    hidden, inter, vocab = spec.hidden_size, text.intermediate_size, text.vocab_size
    tokens = req.micro_batch * (req.visual_tokens + req.text_tokens)
    per_layer_token = b * (7 * hidden + 2 * spec.num_kv_heads * spec.head_dim + 4 * inter)
    logits = tokens * vocab * (b + 4)
    vision_block = 0
    if vision is not None:
        v_hidden = getattr(vision, "hidden_size", 0) or getattr(vision, "embed_dim", 0)
        v_inter = getattr(vision, "intermediate_size", 4 * v_hidden)
        merge = getattr(vision, "spatial_merge_size", 1) or 1
        patches = req.micro_batch * req.visual_tokens * merge * merge
        vision_block = patches * b * (4 * v_hidden + 3 * v_inter)
    plan = Plan(req, {"name": req.name, "parameters": total, "vision_parameters": vision_params,
                      "largest_module": largest, "layers": spec.num_layers, "kv_heads": spec.num_kv_heads,
                      "head_dim": spec.head_dim, "hidden": hidden}, trainable)  # fmt: skip
    states: dict[str, float] = {}
    if full:
        plan.deepspeed_estimate = _deepspeed_estimate(total, largest, req)
        states["model states (DeepSpeed's estimate)"] = plan.deepspeed_estimate["gpu_gib"]
    else:
        on_gpu_params = req.offload != "optimizer+params"
        states["base weights"] = (total * b / (n if req.zero == 3 else 1)) / GIB if on_gpu_params else 0.0
        if req.zero == 3:
            states["gathered module (ZeRO-3)"] = largest * b / GIB
        states["adapter weights (fp32)"] = 4 * trainable / (n if req.zero == 3 else 1) / GIB
        states["adapter gradients (fp32)"] = 4 * trainable / (n if req.zero >= 2 else 1) / GIB
        moments = 8 * trainable / (n if req.zero >= 1 else 1) / GIB
        states["Adam moments (fp32)"] = 0.0 if req.offload != "none" else moments
    layers = spec.num_layers
    common = {"vision tower (no grad, one block)": vision_block / GIB, "logits and loss": logits / GIB,
              "runtime allowance": RUNTIME_ALLOWANCE_GIB}  # fmt: skip
    plan.train = {**states, "activations": layers * per_layer_token * tokens / GIB, **common}
    checkpointed = (layers * b * hidden + per_layer_token) * tokens / GIB
    plan.train_checkpointed = {**states, "activations": checkpointed, **common}
    probe_tokens = req.probe_batch * (req.visual_tokens + req.text_tokens)
    if req.probe_backend == "zero3":
        weights = {"model weights (ZeRO-3 partition)": total * b / n / GIB,
                   "gathered module (ZeRO-3)": largest * b / GIB}  # fmt: skip
    else:
        weights = {"model weights (whole, one replica)": total * b / GIB}
    plan.probe = {
        **weights,
        "activations": layers * per_layer_token * probe_tokens / GIB,
        "vision tower (no grad, one block)": vision_block * req.probe_batch / max(1, req.micro_batch) / GIB,
        "logits and loss": probe_tokens * vocab * (b + 4) / GIB,
        "runtime allowance": RUNTIME_ALLOWANCE_GIB,
    }
    return plan


def _deepspeed_estimate(total: int, largest: int, req: PlanRequest) -> dict[str, float]:
    """DeepSpeed's cold estimators of ZeRO-2/3 model states (every parameter trains, mixed precision)."""
    import os

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed warns that it fell back to the CPU
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    offload = req.offload != "none"
    if req.zero == 3:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total, largest, req.gpus_per_node, req.nodes, cpu_offload=offload,
            cpu_offload_params=req.offload == "optimizer+params",
        )  # fmt: skip
    else:
        cpu, gpu = estimate_zero2_model_states_mem_needs(
            total, req.gpus_per_node, req.nodes, cpu_offload=offload
        )
    return {"gpu_gib": gpu / GIB, "cpu_gib_per_node": cpu / GIB}


def _column(terms: dict[str, float], gpu: float) -> list[str]:
    rows = [f"  {name:<38} {value:9.3f}" for name, value in terms.items()]
    total = sum(terms.values())
    verdict = "fits" if total <= gpu else "does NOT fit"
    rows.append(f"  {'total':<38} {total:9.3f}  of {gpu:g} GiB: {verdict} ({100 * total / gpu:.0f}%)")
    return rows


def render_plan(plan: Plan) -> str:
    """The plan as the text `imagelora-dist plan` prints."""
    r, m = plan.request, plan.model
    what = {"full": "every parameter", "lora": f"peft LoRA on {r.lora_targets} (rank {r.rank})"}.get(
        r.method,
        f"Image-LoRA ({r.method}, "
        + (f"{int(r.budget)} KV heads" if r.budget > 1 else f"{r.budget:g} of the KV heads")
        + f", rank {r.rank})",
    )
    out = [
        f"{m['name']}: {m['parameters'] / 1e9:.2f} B parameters (vision tower {m['vision_parameters'] / 1e9:.2f} B), "
        f"{m['layers']} layers, {m['kv_heads']} KV heads x {m['head_dim']}",
        f"{plan.gpus} GPUs ({r.nodes} node(s) x {r.gpus_per_node}), ZeRO-{r.zero}, offload {r.offload}, "
        f"{r.precision} base; micro-batch {r.micro_batch} x ({r.visual_tokens} visual + {r.text_tokens} text tokens)",
        f"training {what}: {plan.trainable:,} trainable parameters",
        "",
        f"per GPU, training (GiB){'':<15}  checkpointing off",
        *_column(plan.train, r.gpu_memory_gib),
        f"  with gradient checkpointing (train.gradient_checkpointing: true): activations "
        f"{plan.train_checkpointed['activations']:.2f}, total {sum(plan.train_checkpointed.values()):.2f} GiB: "
        + ("fits" if plan.fits(plan.train_checkpointed) else "does NOT fit"),
        "",
        (
            f"per probe worker (probe.backend zero3: one ZeRO-3 group of {plan.gpus} ranks, batch {r.probe_batch}) (GiB)"
            if r.probe_backend == "zero3"
            else f"per probe worker (one whole replica per actor, batch {r.probe_batch}) (GiB)"
        ),
        *_column(plan.probe, r.gpu_memory_gib),
    ]
    if plan.deepspeed_estimate is not None:
        out.append(f"  DeepSpeed's estimate also needs {plan.deepspeed_estimate['cpu_gib_per_node']:.1f} GiB of CPU "
                   "memory per node")  # fmt: skip
    return "\n".join(out) + "\n"


def _model_config(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if args.model:
        path = Path(args.model)
        file = path / "config.json" if path.is_dir() else path
        try:
            return json.loads(file.read_text()), str(path)
        except FileNotFoundError:
            raise ImageLoRAError(f"--model {args.model}: no config.json there") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ImageLoRAError(f"--model {file}: unreadable ({exc})") from None
    from imagelora_dist.models.known_shapes import KNOWN_SIZES, known_config

    if not args.family or not args.size:
        raise ImageLoRAError("plan: give --model (a config.json or checkpoint dir) or --family and --size")
    try:
        return known_config(args.family, args.size.lower()), f"{args.family} {args.size}"
    except KeyError:
        known = "; ".join(f"{f}: {', '.join(s)}" for f, s in KNOWN_SIZES.items())
        raise ImageLoRAError(
            f"--family {args.family} --size {args.size}: not a known model ({known})"
        ) from None


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """The `plan` subcommand's options."""
    p.add_argument("--model", metavar="PATH", help="a config.json, or a checkpoint directory holding one")
    p.add_argument("--family", help="with --size: a released model (qwen2_5_vl)")
    p.add_argument("--size", help="with --family: 3b, 7b, 32b, 72b")
    p.add_argument("--gpus-per-node", type=int, default=8, metavar="N")
    p.add_argument("--nodes", type=int, default=1, metavar="N")
    p.add_argument("--zero", type=int, default=2, choices=[0, 1, 2, 3], help="ZeRO stage (default 2)")
    p.add_argument("--offload", default="none", choices=OFFLOADS, help="DeepSpeed CPU offload")
    p.add_argument("--micro-batch", type=int, default=1, metavar="N", help="samples per GPU per step")
    p.add_argument("--visual-tokens", type=int, default=1024, metavar="N", help="visual tokens per sample")
    p.add_argument("--text-tokens", type=int, default=256, metavar="N", help="text tokens per sample")
    p.add_argument("--method", default="image_lora", choices=["image_lora", "image_lora_all", "lora", "full"])
    p.add_argument("--rank", type=int, default=8)
    p.add_argument(
        "--budget",
        type=float,
        default=0.25,
        help="Image-LoRA's KV-head budget: a fraction, or a count (>= 1)",
    )
    p.add_argument("--lora-targets", default="v_proj", help="LoRA: comma-separated leaf names or all-linear")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--gpu-memory-gib", type=float, default=141.0, metavar="GIB", help="per GPU (H200: 141)")
    p.add_argument("--probe-batch", type=int, default=2, metavar="N", help="probe.batch_size")
    p.add_argument(
        "--probe-backend",
        default="actors",
        choices=["actors", "zero3"],
        help="probe.backend (default actors)",
    )


def plan_command(args: argparse.Namespace) -> int:
    """Build the plan from the CLI arguments and print it."""
    for name in ("gpus_per_node", "nodes", "micro_batch", "visual_tokens", "rank", "probe_batch"):
        if getattr(args, name) < 1:
            raise ImageLoRAError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if args.text_tokens < 0 or not args.budget > 0 or args.gpu_memory_gib <= 0:
        raise ImageLoRAError("plan: needs --text-tokens >= 0, --budget > 0 and --gpu-memory-gib > 0")
    if args.budget > 1 and not float(args.budget).is_integer():
        raise ImageLoRAError(f"--budget {args.budget:g}: a fraction <= 1 or a whole count of KV heads")
    config, name = _model_config(args)
    targets = args.lora_targets if args.lora_targets == "all-linear" else tuple(args.lora_targets.split(","))
    req = PlanRequest(
        config=config, name=name, gpus_per_node=args.gpus_per_node, nodes=args.nodes, zero=args.zero,
        offload=args.offload, micro_batch=args.micro_batch, visual_tokens=args.visual_tokens,
        text_tokens=args.text_tokens, method=args.method, rank=args.rank, budget=args.budget,
        lora_targets=targets, precision=args.precision, gpu_memory_gib=args.gpu_memory_gib,
        probe_batch=args.probe_batch, probe_backend=args.probe_backend,
    )  # fmt: skip
    print(render_plan(make_plan(req)), end="")
    return 0
