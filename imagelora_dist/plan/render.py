"""The plan as the text `imagelora-dist plan` prints (and configs/*.plan.txt keep)."""

from __future__ import annotations

from imagelora_dist.plan.estimate import Plan


def _column(terms: dict[str, float], limit: float, of: str = "") -> list[str]:
    rows = [f"  {name:<44} {value:9.3f}" for name, value in terms.items()]
    total = sum(terms.values())
    verdict = "fits" if total <= limit else "does NOT fit"
    rows.append(f"  {'total':<44} {total:9.3f}  of {limit:g} GiB{of}: {verdict} ({100 * total / limit:.0f}%)")
    return rows


def _probe_header(plan: Plan) -> str:
    r = plan.request
    if r.probe_backend == "zero3":
        return f"per probe worker (probe.backend zero3: one ZeRO-3 group of {r.ray_workers or plan.gpus} ranks, batch {r.probe_batch}) (GiB)"
    return f"per probe worker (one whole replica per actor, batch {r.probe_batch}) (GiB)"


def _eval_header(plan: Plan) -> str:
    r = plan.request
    backend = plan.eval_backend
    how = {
        "replicas": "a whole replica per GPU",
        "zero3": f"one ZeRO-3 group of {r.ray_workers or plan.gpus} ranks, generation synchronized",
        "device_map": f"a replica over {r.gpus_per_worker} GPUs of a worker",
    }[backend]
    chosen = f"eval.backend {r.eval_backend}" + (f" -> {backend}" if r.eval_backend == "auto" else "")
    return (
        f"per eval GPU ({chosen}: {how}; batch {r.eval_batch} x ({r.visual_tokens + r.text_tokens} prompt + "
        f"{r.max_new_tokens} new tokens)) (GiB)"
    )


def _eval_summary(plan: Plan) -> str:
    r = plan.request
    parts = []
    for name, total in plan.eval_totals.items():
        if name == "device_map" and r.gpus_per_worker <= 1:
            parts.append("device_map n/a (1 GPU per worker)")
        else:
            parts.append(f"{name} {total:.1f} ({'fits' if total <= r.gpu_memory_gib else 'does NOT fit'})")
    return "  per GPU by backend: " + ", ".join(parts)


def _eval_workers(plan: Plan) -> str:
    r = plan.request
    if plan.eval_backend == "zero3":
        return f"  eval workers: 1 group of {r.ray_workers or plan.gpus} ranks (eval.workers does not apply)"
    per = max(1, r.gpus_per_worker) if plan.eval_backend == "device_map" else 1
    workers = r.eval_workers or max(1, plan.gpus // per)
    source = "eval.workers" if r.eval_workers else "one per GPU of the run" if per == 1 else "one per worker"
    return f"  eval workers: {workers} ({source}), {per} GPU(s) each"


def _host_section(plan: Plan, limit: float | None) -> list[str]:
    out = ["per worker, host memory (GiB)"]
    for phase, terms in plan.host.items():
        out.append(f"  {phase}")
        out += [f"    {name:<42} {value:9.3f}" for name, value in terms.items()]
        out.append(f"    {'total':<42} {sum(terms.values()):9.3f}")
    peak = plan.host_peak_gib
    line = f"  host peak per worker: {peak:.1f} GiB"
    if limit is not None:
        line += f" of {limit:g} GiB (pod limit): " + ("fits" if peak <= limit else "does NOT fit")
    out.append(line)
    ds = plan.request.deepspeed
    if ds is not None and ds.stage == 3:
        where = (
            "staged on the host"
            if ds.offload == "optimizer+params"
            else "on the GPU (parameters not offloaded)"
        )
        out.append(
            f"  DeepSpeed limits: stage3_max_live_parameters {ds.max_live_parameters:.3g}, "
            f"stage3_prefetch_bucket_size {ds.prefetch_bucket_size:.3g}: {where}"
        )
    return out


def render_plan(plan: Plan, host_limit_gib: float | None = None) -> str:
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
    ]
    if r.method == "none":
        out += ["no training (train.method: none): the base model is evaluated", ""]
    else:
        gc = r.gradient_checkpointing
        out += [
            f"training {what}: {plan.trainable:,} trainable parameters",
            "",
            f"per GPU, training (GiB){'':<21}  checkpointing off" + (" (this config)" if gc is False else ""),
            *_column(plan.train, r.gpu_memory_gib),
            "  with gradient checkpointing (train.gradient_checkpointing: true"
            + (", this config" if gc else "")
            + f"): activations {plan.train_checkpointed['activations']:.2f}, "
            f"total {sum(plan.train_checkpointed.values()):.2f} GiB: "
            + ("fits" if plan.fits(plan.train_checkpointed) else "does NOT fit"),
            "",
        ]
    if r.with_probe:
        out += [_probe_header(plan), *_column(plan.probe, r.gpu_memory_gib), ""]
    else:
        out += [f"no probe ({r.method} needs no head selection)", ""]
    out += [
        _eval_header(plan),
        *_column(plan.eval, r.gpu_memory_gib),
        _eval_summary(plan),
        _eval_workers(plan),
        "",
        *_host_section(plan, host_limit_gib),
    ]
    if plan.deepspeed_estimate is not None:
        out.append(f"  DeepSpeed's estimate also needs {plan.deepspeed_estimate['cpu_gib_per_node']:.1f} GiB of CPU "
                   "memory per node")  # fmt: skip
    return "\n".join(out) + "\n"
