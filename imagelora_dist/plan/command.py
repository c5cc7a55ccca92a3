"""`imagelora-dist plan`: from a run config (`--config FILE key=value...`) or from flags (`--family/--size`
or `--model`), build the plan and print it."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.plan import memory as M
from imagelora_dist.plan.estimate import OFFLOADS, PlanRequest, make_plan
from imagelora_dist.plan.hardware import GPUS, Hardware, hardware
from imagelora_dist.plan.render import render_plan

if TYPE_CHECKING:
    from imagelora_dist.config import RunConfig

# Flags that shape the run, with their defaults without --config; with --config they come from these keys.
RUN_FLAGS: dict[str, tuple[Any, str]] = {
    "nodes": (1, "train.workers"),
    "zero": (2, "train.deepspeed"),
    "offload": ("none", "train.deepspeed"),
    "micro_batch": (1, "train.micro_batch_size"),
    "visual_tokens": (1024, "data.max_pixels"),
    "text_tokens": (256, "data.max_length"),
    "method": ("image_lora", "train.method"),
    "rank": (8, "adapter.rank"),
    "budget": (0.25, "selection.budget"),
    "lora_targets": ("v_proj", "train.lora_targets"),
    "precision": ("bf16", "train.precision"),
    "probe_batch": (2, "probe.batch_size"),
    "probe_backend": ("actors", "probe.backend"),
    "eval_batch": (4, "eval.batch_size"),
    "max_new_tokens": (24, "eval.max_new_tokens"),
    "eval_backend": ("auto", "eval.backend"),
    "gpus_per_worker": (1, "ray.gpus_per_worker"),
    "accumulation": (1, "train.grad_accum"),
    "checkpointing": (None, "train.gradient_checkpointing"),
    "hpz": (1, "train.zero3_hpz"),
    "quantized_weights": (False, "train.zero3_quantized_weights"),
}
# A released checkpoint's directory name: its shape is known without its files (models/known_shapes.py).
_KNOWN_NAME = re.compile(r"qwen2\.?5[-_]?vl[-_](\d+)b", re.IGNORECASE)


def _read_config_json(where: str, path: Path) -> dict[str, Any]:
    file = path / "config.json" if path.is_dir() else path
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise ImageLoRAError(f"{where} {path}: no config.json there") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ImageLoRAError(f"{where} {file}: unreadable ({exc})") from None


def _known(family: str, size: str, where: str) -> dict[str, Any]:
    from imagelora_dist.models.known_shapes import KNOWN_SIZES, known_config

    try:
        return known_config(family, size.lower())
    except KeyError:
        known = "; ".join(f"{f}: {', '.join(s)}" for f, s in KNOWN_SIZES.items())
        raise ImageLoRAError(f"{where}: not a known model ({known})") from None


def _model_from_flags(args: argparse.Namespace) -> tuple[dict[str, Any], str] | None:
    if args.model:
        return _read_config_json("--model", Path(args.model)), str(args.model)
    if args.family or args.size:
        if not (args.family and args.size):
            raise ImageLoRAError("plan: --family and --size go together")
        return _known(
            args.family, args.size, f"--family {args.family} --size {args.size}"
        ), f"{args.family} {args.size}"
    return None


def config_model(cfg: RunConfig) -> tuple[dict[str, Any], str]:
    """The model config.json fields of a run config, and a name: model.path's config.json, else a released
    checkpoint recognized by its directory name (known shapes), else the tiny model of model.family."""
    path = cfg.model.path
    if path is None:
        from imagelora_dist.models.tiny import build_tiny_vlm

        model, _ = build_tiny_vlm(
            cfg.model.family, size=cfg.model.tiny_size(), split_digits=cfg.model.split_digits
        )
        return model.config.to_dict(), f"tiny {cfg.model.family}"
    if (Path(path) / "config.json").is_file():
        return _read_config_json("model.path", Path(path)), Path(path).name
    match = _KNOWN_NAME.search(Path(path).name)
    if match is None:
        raise ImageLoRAError(
            f"model.path {path}: no config.json there and not a released model's name; plan with "
            "--model CONFIG_JSON or --family/--size beside --config"
        )
    return _known("qwen2_5_vl", f"{match.group(1)}b", f"model.path {path}"), Path(path).name


def request_from_config(
    cfg: RunConfig,
    model: tuple[dict[str, Any], str] | None = None,
    gpus_per_node: int = 8,
    gpu_memory_gib: float = 141.0,
    hw: Hardware | None = None,
) -> PlanRequest:
    """The plan request of a run config: its model, workers, micro-batch, DeepSpeed preset, probe and eval."""
    from imagelora_dist.resources import deepspeed_json

    config, model_name = model or config_model(cfg)
    t = cfg.train
    gpus = t.workers * max(1, round(t.gpus_per_worker or 1))
    per_node = min(gpus, gpus_per_node)
    if gpus % per_node:
        raise ImageLoRAError(
            f"train.workers: {gpus} GPUs do not fill nodes of --gpus-per-node {gpus_per_node}"
        )
    ds = M.read_deepspeed(deepspeed_json(t.deepspeed))
    visual = min(
        M.visual_tokens_for(cfg.data.max_pixels, config.get("vision_config"), config), cfg.data.max_length
    )
    precision = t.precision if t.precision != "auto" else ("fp32" if cfg.model.dtype == "float32" else "bf16")
    speed = cfg.speed
    cache_mb = (speed.vision_cache_mb if speed.vision_cache else 0) + (
        speed.prefix_cache_mb if speed.prefix_cache else 0
    )
    return PlanRequest(
        config=config, name=f"{cfg.name} ({model_name})", gpus_per_node=per_node, nodes=gpus // per_node,
        zero=ds.stage, offload=ds.offload, micro_batch=t.micro_batch_size, visual_tokens=visual,
        text_tokens=min(M.TEXT_ALLOWANCE, cfg.data.max_length - visual), method=t.method, rank=cfg.adapter.rank,
        budget=cfg.selection.budget,
        lora_targets=t.lora_targets if isinstance(t.lora_targets, str) else tuple(t.lora_targets),
        precision=precision, gpu_memory_gib=gpu_memory_gib, probe_batch=cfg.probe.batch_size,
        probe_backend=cfg.probe.backend, ray_workers=cfg.ray.num_workers, eval_batch=cfg.eval.batch_size,
        max_new_tokens=cfg.eval.max_new_tokens, eval_backend=cfg.eval.backend, eval_workers=cfg.eval.workers,
        gpus_per_worker=max(1, round(cfg.ray.gpus_per_worker or 1)), deepspeed=ds,
        loader_workers=cfg.data.num_workers, cache_gib=cache_mb / 1024,
        gradient_checkpointing=t.gradient_checkpointing, with_probe=t.method == "image_lora",
        accumulation=t.grad_accum_for(t.workers), hpz=t.zero3_hpz, quantized_weights=t.zero3_quantized_weights,
        probe_examples=cfg.probe.num_examples, hardware=hw,
    )  # fmt: skip


def eval_backend_for(
    cfg: RunConfig, gpu_memory_gib: float | None, model: tuple[dict[str, Any], str] | None = None
) -> str:
    """eval.backend of a run with `auto` resolved by the plan for GPUs of `gpu_memory_gib` (None: no GPU)."""
    if cfg.eval.backend != "auto" or gpu_memory_gib is None:
        return M.resolve_eval_backend(cfg.eval.backend, 0.0, None, None)
    req = request_from_config(cfg, model, gpu_memory_gib=gpu_memory_gib)
    return make_plan(req, with_alternatives=False).eval_backend


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """The `plan` subcommand's options."""
    p.add_argument("--config", metavar="FILE", help="plan this run config (probe, train, eval) as it stands")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="with --config: config overrides")
    p.add_argument("--model", metavar="PATH", help="a config.json, or a checkpoint directory holding one")
    p.add_argument("--family", help="with --size: a released model (qwen2_5_vl)")
    p.add_argument("--size", help="with --family: 3b, 7b, 32b, 72b")
    p.add_argument("--gpus-per-node", type=int, default=8, metavar="N")
    p.add_argument(
        "--gpu", default="h200", choices=sorted(GPUS), help="the GPU of the time model (default h200)"
    )
    p.add_argument(
        "--gpu-memory-gib", type=float, metavar="GIB", help="per GPU (default: the GPU's, H200 141)"
    )
    p.add_argument(
        "--tflops", type=float, metavar="T", help="peak dense bf16 TFLOP/s per GPU (default: the GPU's)"
    )
    p.add_argument("--nvlink-gbs", type=float, metavar="GB/s", help="per GPU and direction inside a node")
    p.add_argument("--fabric-gbs", type=float, metavar="GB/s", help="per GPU and direction between nodes")
    p.add_argument(
        "--host-memory-gib", type=float, metavar="GIB", help="a worker pod's memory limit, to compare"
    )
    p.add_argument("--nodes", type=int, metavar="N", help="default 1")
    p.add_argument("--zero", type=int, choices=[0, 1, 2, 3], help="ZeRO stage (default 2)")
    p.add_argument("--offload", choices=OFFLOADS, help="DeepSpeed CPU offload (default none)")
    p.add_argument("--micro-batch", type=int, metavar="N", help="samples per GPU per step (default 1)")
    p.add_argument("--visual-tokens", type=int, metavar="N", help="visual tokens per sample (default 1024)")
    p.add_argument("--text-tokens", type=int, metavar="N", help="text tokens per sample (default 256)")
    p.add_argument("--method", choices=["image_lora", "image_lora_all", "lora", "full", "none"])
    p.add_argument("--rank", type=int, help="default 8")
    p.add_argument("--budget", type=float, help="Image-LoRA's KV-head budget: a fraction, or a count (>= 1)")
    p.add_argument("--lora-targets", help="LoRA: comma-separated leaf names or all-linear (default v_proj)")
    p.add_argument("--precision", choices=["bf16", "fp32"], help="default bf16")
    p.add_argument("--probe-batch", type=int, metavar="N", help="probe.batch_size (default 2)")
    p.add_argument("--probe-backend", choices=["actors", "zero3"], help="probe.backend (default actors)")
    p.add_argument("--eval-batch", type=int, metavar="N", help="eval.batch_size (default 4)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="eval.max_new_tokens (default 24)")
    p.add_argument("--eval-backend", choices=["auto", *M.EVAL_BACKENDS], help="eval.backend (default auto)")
    p.add_argument("--gpus-per-worker", type=int, metavar="N", help="ray.gpus_per_worker (default 1)")
    p.add_argument("--accumulation", type=int, metavar="N", help="train.grad_accum (default 1)")
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, help="gradient checkpointing")
    p.add_argument("--hpz", type=int, metavar="N", help="ZeRO++ hierarchical partition size (default 1: off)")
    p.add_argument(
        "--quantized-weights", action="store_true", default=None, help="ZeRO++ int8 weight gathers"
    )


def _request_from_flags(args: argparse.Namespace) -> PlanRequest:
    for name, (default, _) in RUN_FLAGS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    for name in ("nodes", "micro_batch", "visual_tokens", "rank", "probe_batch", "eval_batch", "max_new_tokens",
                 "gpus_per_worker", "accumulation", "hpz"):  # fmt: skip
        if getattr(args, name) < 1:
            raise ImageLoRAError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if args.text_tokens < 0 or not args.budget > 0:
        raise ImageLoRAError("plan: needs --text-tokens >= 0 and --budget > 0")
    if args.budget > 1 and not float(args.budget).is_integer():
        raise ImageLoRAError(f"--budget {args.budget:g}: a fraction <= 1 or a whole count of KV heads")
    model = _model_from_flags(args)
    if model is None:
        raise ImageLoRAError(
            "plan: give --config FILE, --model (a config.json or checkpoint dir) or --family and --size"
        )
    targets = args.lora_targets if args.lora_targets == "all-linear" else tuple(args.lora_targets.split(","))
    return PlanRequest(
        config=model[0], name=model[1], gpus_per_node=args.gpus_per_node, nodes=args.nodes, zero=args.zero,
        offload=args.offload, micro_batch=args.micro_batch, visual_tokens=args.visual_tokens,
        text_tokens=args.text_tokens, method=args.method, rank=args.rank, budget=args.budget,
        lora_targets=targets, precision=args.precision, gpu_memory_gib=args.gpu_memory_gib,
        probe_batch=args.probe_batch, probe_backend=args.probe_backend, eval_batch=args.eval_batch,
        max_new_tokens=args.max_new_tokens, eval_backend=args.eval_backend, gpus_per_worker=args.gpus_per_worker,
        accumulation=args.accumulation, gradient_checkpointing=args.checkpointing, hpz=args.hpz,
        quantized_weights=bool(args.quantized_weights), hardware=_hardware(args),
    )  # fmt: skip


def _hardware(args: argparse.Namespace) -> Hardware:
    return hardware(args.gpu, tflops=args.tflops, memory_gib=args.gpu_memory_gib, nvlink_gbs=args.nvlink_gbs,
                    fabric_gbs=args.fabric_gbs)  # fmt: skip


def plan_command(args: argparse.Namespace) -> int:
    """Build the plan from a run config or the CLI flags and print it."""
    if args.gpus_per_node < 1:
        raise ImageLoRAError(f"--gpus-per-node {args.gpus_per_node}: must be >= 1")
    if args.host_memory_gib is not None and args.host_memory_gib <= 0:
        raise ImageLoRAError("plan: --gpu-memory-gib and --host-memory-gib must be > 0")
    hw = _hardware(args)  # checks --gpu-memory-gib and the other figures
    args.gpu_memory_gib = hw.memory_gib
    if args.config is None:
        if args.overrides:
            raise ImageLoRAError(f"plan: overrides ({args.overrides[0]} ...) need --config FILE")
        req = _request_from_flags(args)
    else:
        from imagelora_dist.config import load_config

        for name, (_, key) in RUN_FLAGS.items():
            if getattr(args, name) is not None:
                flag = "--" + name.replace("_", "-")
                raise ImageLoRAError(
                    f"plan --config: {flag} comes from the config's {key} (override it: {key}=...)"
                )
        cfg = load_config(args.config, args.overrides)
        req = request_from_config(cfg, _model_from_flags(args), args.gpus_per_node, args.gpu_memory_gib, hw)
    print(render_plan(make_plan(req, host_limit_gib=args.host_memory_gib), args.host_memory_gib), end="")
    return 0
