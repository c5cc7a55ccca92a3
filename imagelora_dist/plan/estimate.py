"""The plan of a run: per-GPU memory of training, one probe worker and eval, and host memory per worker.

The model is built from its config on the meta device (no weights), so the parameter counts are exact;
the adapter's size comes from the same accounting the pipeline logs. Memory terms, per GPU:

- base weights: every parameter in the training dtype (bf16: 2 bytes), partitioned over all GPUs by
  ZeRO-3 (plus one gathered module and DeepSpeed's prefetch bucket), on the CPU with parameter offload;
- adapter weights, gradients and Adam moments: fp32 masters (4 + 4 + 8 bytes a parameter), partitioned
  by ZeRO-3 / ZeRO-2+ / ZeRO-1+, the moments on the CPU with optimizer offload;
- activations kept for the backward by every decoder layer (plan/memory.py: measured per token on the
  tiny model), with gradient checkpointing each layer's input and one layer recomputed; the logits (in
  the training dtype) and their fp32 copy in the loss; the vision tower frozen under no_grad, one block;
- eval: the weights as the eval backend holds them, the KV cache at eval.batch_size x (prompt +
  eval.max_new_tokens), one layer of the prefill alive at a time, the last position's logits.

Host memory per worker: loading (sharded under ZeRO-3: a partition plus the largest tensor; else the
whole model) and training (offloaded optimizer/parameters, pinned batches, loader processes, caches).
`train.method: full` uses DeepSpeed's own model-state estimators. A fixed allowance covers the CUDA
context, NCCL buffers and allocator slack. These are estimates: the run logs `peak_memory_gb` per step.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from typing import Any

from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.plan import memory as M
from imagelora_dist.plan.hardware import Hardware, hardware
from imagelora_dist.plan.memory import GIB, RUNTIME_ALLOWANCE_GIB

OFFLOADS = ("none", "optimizer", "optimizer+params")


@dataclass(frozen=True)
class PlanRequest:
    """What a plan is asked about: the model, the cluster, ZeRO, the batch, the method and eval."""

    config: dict[str, Any]
    name: str
    gpus_per_node: int = 8
    nodes: int = 1
    zero: int = 2
    offload: str = "none"
    micro_batch: int = 1
    visual_tokens: int = 1024
    text_tokens: int = 256
    method: str = "image_lora"  # image_lora | image_lora_all | lora | full | none (eval only)
    rank: int = 8
    budget: float = 0.25
    lora_targets: tuple[str, ...] | str = ("v_proj",)
    precision: str = "bf16"
    gpu_memory_gib: float = 141.0  # an H200
    probe_batch: int = 2
    probe_backend: str = "actors"  # probe.backend: whole replicas, or one ZeRO-3 group of ray_workers
    ray_workers: int | None = None  # ray.num_workers: the probe's and eval's ZeRO-3 group; None: every GPU
    eval_batch: int = 4
    max_new_tokens: int = 24
    eval_backend: str = "auto"
    eval_workers: int | None = None  # eval.workers; None: one per GPU (replicas) or per worker's GPUs
    gpus_per_worker: int = 1  # ray.gpus_per_worker: a device_map replica spreads over these
    deepspeed: M.DeepSpeedLimits | None = None  # the preset's limits; None: DeepSpeed's defaults
    loader_workers: int = 0  # data.num_workers
    cache_gib: float = 0.0  # speed.vision_cache_mb + prefix_cache_mb held in memory per process
    gradient_checkpointing: bool | None = None  # None: show both
    with_probe: bool = True  # a run config's method runs the probe (only image_lora does)
    hpz: int = 1  # train.zero3_hpz: ZeRO++ hierarchical partition size (GPUs a node-local copy spans)
    quantized_weights: bool = False  # train.zero3_quantized_weights: ZeRO++ int8 weight gathers
    accumulation: int = 1  # train.grad_accum: micro-batches per optimizer step
    probe_examples: int = 256  # probe.num_examples
    hardware: Hardware | None = None  # the GPU and links of the time model; None: an H200 (hardware.py)


@dataclass
class Plan:
    """Per-GPU memory (GiB) by term, for training, one probe worker and eval; host memory per worker."""

    request: PlanRequest
    model: dict[str, Any]
    trainable: int
    train: dict[str, float] = field(default_factory=dict)
    train_checkpointed: dict[str, float] = field(default_factory=dict)
    probe: dict[str, float] = field(default_factory=dict)
    eval: dict[str, float] = field(default_factory=dict)
    eval_totals: dict[str, float] = field(default_factory=dict)  # per-GPU total of every eval backend
    eval_backend: str = "replicas"
    host: dict[str, dict[str, float]] = field(default_factory=dict)  # per worker, by phase
    deepspeed_estimate: dict[str, float] | None = None
    times: dict[str, Any] = field(default_factory=dict)  # stage: timing.StageTime (plan/timing.py)
    alternatives: list[Any] = field(default_factory=list)  # plan/options.py: Option rows, best first

    @property
    def gpus(self) -> int:
        """GPUs in the run."""
        return self.request.gpus_per_node * self.request.nodes

    @property
    def host_peak_gib(self) -> float:
        """The most host memory one worker needs in any phase (a pod's memory limit must hold it)."""
        return max(sum(terms.values()) for terms in self.host.values())

    def fits(self, terms: dict[str, float]) -> bool:
        """Whether a column's total fits the GPU's memory."""
        return sum(terms.values()) <= self.request.gpu_memory_gib


def meta_model(config: dict[str, Any]) -> Any:
    """The model of a config.json dict, on the meta device (no memory, no download); the last few are kept
    (the plan's alternatives plan the same model again), so callers must not change it."""
    return _meta_model(json.dumps(config, sort_keys=True))


@functools.lru_cache(maxsize=4)
def _meta_model(key: str) -> Any:
    import torch

    config = json.loads(key)
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


def _parameter_counts(model: Any) -> tuple[int, int, int]:
    """(total parameters, the largest module's own parameters, the largest tensor); tied weights once."""
    seen: dict[int, int] = {}
    largest = 0
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        largest = max(largest, sum(p.numel() for p in own))
        seen.update({id(p): p.numel() for p in own})
    return sum(seen.values()), largest, max(seen.values(), default=0)


def _adapter_parameters(model: Any, spec: Any, req: PlanRequest) -> int:
    from imagelora_dist.adapter.accounting import (
        decoder_lora_targets,
        image_lora_num_parameters,
        lora_num_parameters,
    )

    if req.method == "none":
        return 0
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


def _check(req: PlanRequest) -> None:
    if req.offload not in OFFLOADS:
        raise ImageLoRAError(f"--offload {req.offload!r}: one of {', '.join(OFFLOADS)}")
    if req.zero not in (0, 1, 2, 3):
        raise ImageLoRAError(f"--zero {req.zero}: a ZeRO stage 0-3")
    if req.offload == "optimizer+params" and req.zero != 3:
        raise ImageLoRAError("--offload optimizer+params needs --zero 3 (only ZeRO-3 partitions parameters)")
    if (req.hpz > 1 or req.quantized_weights) and req.zero != 3:
        raise ImageLoRAError("ZeRO++ (--hpz, --quantized-weights; train.zero3_*) needs --zero 3")
    if req.eval_backend not in ("auto", *M.EVAL_BACKENDS):
        raise ImageLoRAError(f"eval backend {req.eval_backend!r}: one of auto, {', '.join(M.EVAL_BACKENDS)}")


def make_plan(req: PlanRequest, with_alternatives: bool = True, host_limit_gib: float | None = None) -> Plan:
    """Per-GPU memory of training (with and without gradient checkpointing), a probe worker and eval, and
    host memory per worker; the predicted time of each stage, and (`with_alternatives`) the other ways to run
    the same global batch (`host_limit_gib`: a pod's memory limit they must also fit)."""
    from imagelora_dist.models.grad_scope import vision_tower
    from imagelora_dist.models.registry import decoder_layers, resolve_model

    _check(req)
    model = meta_model(req.config)
    spec = resolve_model(model)
    total, largest, largest_tensor = _parameter_counts(model)
    numels = sorted({id(p): p.numel() for p in model.parameters()}.values())
    text = model.config.get_text_config()
    vision = getattr(model.config, "vision_config", None)
    tower = vision_tower(model)
    vision_params = _parameter_counts(tower)[0] if tower is not None else 0
    b = 2 if req.precision == "bf16" else 4
    n = req.gpus_per_node * req.nodes
    ds = req.deepspeed or M.DeepSpeedLimits(stage=req.zero, offload=req.offload)
    full = req.method == "full"
    trainable = total if full else _adapter_parameters(model, spec, req)
    hidden, inter, vocab = spec.hidden_size, text.intermediate_size, text.vocab_size
    q_width = text.num_attention_heads * spec.head_dim
    layers = spec.num_layers
    tokens = req.micro_batch * (req.visual_tokens + req.text_tokens)
    every_linear = req.lora_targets == "all-linear"
    per_layer_token = M.decoder_activation_bytes(hidden, q_width, inter, b) + M.trained_linear_input_bytes(
        hidden, q_width, inter, b, req.method, every_linear
    )
    adapter_rows = M.adapter_input_bytes(hidden) if req.method.startswith("image_lora") else 0
    logits = tokens * vocab * (b + 4)
    vision_block, pixel_bytes = 0, 0
    if vision is not None:
        v_hidden = getattr(vision, "hidden_size", 0) or getattr(vision, "embed_dim", 0)
        v_inter = getattr(vision, "intermediate_size", 4 * v_hidden)
        merge = getattr(vision, "spatial_merge_size", 1) or 1
        patches = req.visual_tokens * merge * merge
        vision_block = patches * b * (4 * v_hidden + 3 * v_inter)  # per sample
        patch_values = 3 * getattr(vision, "temporal_patch_size", 1) * getattr(vision, "patch_size", 14) ** 2
        pixel_bytes = patches * patch_values * 4  # fp32 pixel values, per sample
    plan = Plan(req, {"name": req.name, "parameters": total, "vision_parameters": vision_params,
                      "largest_module": largest, "largest_tensor": largest_tensor, "layers": layers,
                      "kv_heads": spec.num_kv_heads, "head_dim": spec.head_dim, "hidden": hidden,
                      "layer_params": sum(p.numel() for p in decoder_layers(model)[0].parameters()), "q_width": q_width,
                      "lm_head_params": vocab * hidden, "param_numels": numels,
                      "layer_numels": [p.numel() for p in decoder_layers(model)[0].parameters()],
                      "patches_per_token": (getattr(vision, "spatial_merge_size", 1) or 1) ** 2 if vision else 1},
                trainable)  # fmt: skip
    states: dict[str, float] = {}
    zero3_gathered = {"gathered module (ZeRO-3)": largest * b / GIB,
                      "prefetch bucket (ZeRO-3)": ds.prefetch_bucket_size * b / GIB}  # fmt: skip
    if full:
        plan.deepspeed_estimate = _deepspeed_estimate(total, largest, req)
        states["model states (DeepSpeed's estimate)"] = plan.deepspeed_estimate["gpu_gib"]
    else:
        on_gpu_params = req.offload != "optimizer+params"
        states["base weights"] = (total * b / (n if req.zero == 3 else 1)) / GIB if on_gpu_params else 0.0
        if req.zero == 3:
            states.update(zero3_gathered)
            if req.hpz > 1 and req.nodes > 1:  # ZeRO++ hpZ: a second bf16 partition over the node's GPUs
                states[f"hpZ node-local partition (1/{req.hpz})"] = total * b / req.hpz / GIB
        states["adapter weights (fp32)"] = 4 * trainable / (n if req.zero == 3 else 1) / GIB
        states["adapter gradients (fp32)"] = 4 * trainable / (n if req.zero >= 2 else 1) / GIB
        moments = 8 * trainable / (n if req.zero >= 1 else 1) / GIB
        states["Adam moments (fp32)"] = 0.0 if req.offload != "none" else moments
    visual = req.micro_batch * req.visual_tokens
    common = {"vision tower (no grad, one block)": req.micro_batch * vision_block / GIB,
              "logits and loss": logits / GIB, "runtime allowance": RUNTIME_ALLOWANCE_GIB}  # fmt: skip
    kept = layers * (per_layer_token * tokens + adapter_rows * visual)
    plan.train = {**states, "activations": kept / GIB, **common}
    # each layer keeps its input; the one being recomputed keeps everything (its adapter's rows too)
    checkpointed = layers * b * hidden * tokens + per_layer_token * tokens + adapter_rows * visual
    plan.train_checkpointed = {**states, "activations": checkpointed / GIB, **common}
    probe_n = req.ray_workers or n
    probe_tokens = req.probe_batch * (req.visual_tokens + req.text_tokens)
    if req.probe_backend == "zero3":
        weights = {"model weights (ZeRO-3 partition)": total * b / probe_n / GIB, **zero3_gathered}
    else:
        weights = {"model weights (whole, one replica)": total * b / GIB}
    probe_layer = M.decoder_activation_bytes(hidden, q_width, inter, b)
    plan.probe = {
        **weights,
        "activations": layers
        * (probe_layer * probe_tokens + adapter_rows * req.probe_batch * req.visual_tokens)
        / GIB,
        "vision tower (no grad, one block)": vision_block * req.probe_batch / GIB,
        "logits and loss": probe_tokens * vocab * (b + 4) / GIB,
        "runtime allowance": RUNTIME_ALLOWANCE_GIB,
    }
    _eval_terms(plan, spec, text, b, q_width, vision_block)
    _host_terms(plan, total, largest_tensor, b, ds, pixel_bytes)
    _time_terms(plan, with_alternatives, host_limit_gib)
    return plan


def plan_hardware(req: PlanRequest) -> Hardware:
    """The request's GPU and links (an H200 by default), with its memory as the request says."""
    return replace(req.hardware or hardware("h200"), memory_gib=req.gpu_memory_gib)


def _time_terms(plan: Plan, with_alternatives: bool, host_limit_gib: float | None) -> None:
    from imagelora_dist.plan import timing
    from imagelora_dist.plan.options import alternatives

    hw, req = plan_hardware(plan.request), plan.request
    if req.with_probe:
        plan.times["probe"] = timing.probe_time(plan, hw)
    if req.method != "none":
        plan.times["train"] = timing.train_time(plan, hw, req.accumulation)
        if with_alternatives:
            plan.alternatives = alternatives(plan, make_plan, host_limit_gib)
    plan.times["eval"] = timing.eval_time(plan, hw)


def _eval_terms(plan: Plan, spec: Any, text: Any, b: int, q_width: int, vision_block: int) -> None:
    """Per-GPU eval memory for every backend; the request's backend (auto: resolved) is kept in detail."""
    req, total, largest = plan.request, plan.model["parameters"], plan.model["largest_module"]
    hidden, inter, vocab = spec.hidden_size, text.intermediate_size, text.vocab_size
    prompt = req.visual_tokens + req.text_tokens
    batch = req.eval_batch
    kv = M.kv_cache_bytes(
        spec.num_layers, spec.num_kv_heads, spec.head_dim, b, batch, prompt + req.max_new_tokens
    )
    shared = {
        "prefill, one layer alive (no grad)": (batch * prompt * (M.inference_layer_bytes(hidden, q_width, inter, b)
                                                                 + b * hidden)) / GIB,
        "vision tower (no grad, one block)": batch * vision_block / GIB,
        "logits (last position, fp32)": batch * vocab * (b + 4) / GIB,
        "runtime allowance": RUNTIME_ALLOWANCE_GIB,
    }  # fmt: skip
    g = max(1, req.gpus_per_worker)
    ranks = req.ray_workers or plan.gpus
    ds = req.deepspeed or M.DeepSpeedLimits()
    columns = {
        "replicas": {"model weights (whole replica)": total * b / GIB, "KV cache": kv / GIB},
        "zero3": {f"model weights (ZeRO-3 partition, 1/{ranks})": total * b / ranks / GIB,
                  "gathered module (ZeRO-3)": largest * b / GIB,
                  "prefetch bucket (ZeRO-3)": ds.prefetch_bucket_size * b / GIB, "KV cache": kv / GIB},
        "device_map": {f"model weights (1/{g} of a replica)": total * b / g / GIB,
                       f"KV cache (1/{g}: each GPU caches its layers)": kv / g / GIB},
    }  # fmt: skip
    plan.eval_totals = {name: sum({**terms, **shared}.values()) for name, terms in columns.items()}
    plan.eval_backend = M.resolve_eval_backend(
        req.eval_backend, plan.eval_totals["replicas"], plan.eval_totals["device_map"], req.gpu_memory_gib, g
    )
    plan.eval = {**columns[plan.eval_backend], **shared}


def _host_terms(
    plan: Plan, total: int, largest_tensor: int, b: int, ds: M.DeepSpeedLimits, pixels: int
) -> None:
    """Host memory per worker (GiB) by phase: loading for the probe, training and eval; training itself."""
    req, n = plan.request, plan.gpus
    fixed = {"worker process (fixed)": M.HOST_FIXED_GIB}
    probe_ranks = (req.ray_workers or n) if req.probe_backend == "zero3" else None
    if req.with_probe:
        plan.host["probe, loading"] = {**fixed, **M.loading_host_gib(total, largest_tensor, b, probe_ranks)}
    if req.method != "none":
        train_ranks = n if req.zero == 3 else None
        plan.host["train, loading"] = {**fixed, **M.loading_host_gib(total, largest_tensor, b, train_ranks)}
        steady = {**fixed}
        if req.loader_workers:
            steady[f"data loader processes ({req.loader_workers})"] = (
                req.loader_workers * M.LOADER_PROCESS_GIB
            )
        pinned = " (pinned)" if ds.pin_memory else ""
        steady["batches in flight (pixels)"] = M.BATCHES_IN_FLIGHT * req.micro_batch * pixels / GIB
        if req.offload != "none":  # fp32 masters, gradients and Adam moments of this rank's partition
            steady[f"offloaded optimizer state{pinned}"] = (
                16 * plan.trainable / (n if req.zero >= 1 else 1) / GIB
            )
        if req.offload == "optimizer+params":
            steady[f"offloaded parameter partition{pinned}"] = total * b / n / GIB
            # fetched to the GPU through host staging up to these limits (read from the DeepSpeed JSON)
            staged = ds.max_live_parameters + ds.prefetch_bucket_size
            steady["DeepSpeed live parameters + prefetch bucket"] = staged * b / GIB
        if req.cache_gib:
            steady["vision / prefix cache (speed.*_mb)"] = req.cache_gib
        plan.host["train, steady"] = steady
    eval_ranks = (req.ray_workers or n) if plan.eval_backend == "zero3" else None
    plan.host["eval, loading"] = {**fixed, **M.loading_host_gib(total, largest_tensor, b, eval_ranks)}


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
