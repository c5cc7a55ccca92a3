"""The plan as the text `imagelora-dist plan` prints (and configs/*.plan.txt keep)."""

from __future__ import annotations

from imagelora_dist.plan.estimate import GIB, Plan, plan_hardware
from imagelora_dist.plan.hardware import Hardware
from imagelora_dist.plan.options import current_key
from imagelora_dist.plan.timing import StageTime


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


def _stage_lines(title: str, t: StageTime, hw: Hardware) -> list[str]:
    flops = ", ".join(f"{name} {value / 1e12:.1f}" for name, value in t.flops.items())
    out = [f"  {title}",
           f"    compute per GPU (TFLOP): {flops}; total {sum(t.flops.values()) / 1e12:.1f} -> {t.compute_s:.3f} s"]  # fmt: skip
    if t.comm:
        moved = "; ".join(
            f"{name} {a / GIB:.2f}" + (f" + {c / GIB:.2f}" if c else "") for name, (a, c) in t.comm.items()
        )
        out.append(f"    communication per rank (GiB, NVLink + fabric): {moved} -> {t.link_s[0]:.3f} s NVLink, "
                   f"{t.link_s[1]:.3f} s fabric")  # fmt: skip
    if t.memory_s:
        out.append(f"    weight reads from HBM: {t.memory_s:.3f} s")
    out.append(f"    predicted {t.step_s:.3f} s, bound by {t.bound}; {t.samples_per_s:.1f} screenshots/s; "
               f"MFU {100 * t.mfu(hw):.0f}%")  # fmt: skip
    return out


def _time_section(plan: Plan) -> list[str]:
    r, hw = plan.request, plan_hardware(plan.request)
    out = [f"predicted time ({hw.name}: {hw.bf16_tflops:g} TFLOP/s bf16 peak x {hw.matmul_efficiency:g} reached, "
           f"HBM {hw.hbm_gbs:g} GB/s; per GPU NVLink {hw.nvlink_gbs:g} GB/s, inter-node fabric "
           f"{hw.fabric_gbs:g} GB/s, x {hw.link_efficiency:g} reached; links and compute overlap)"]  # fmt: skip
    if "probe" in plan.times:
        t = plan.times["probe"]
        batches = -(-r.probe_examples // t.samples)  # each GPU scores a batch of its own at a time
        out += _stage_lines(f"probe, one batch of {r.probe_batch} per GPU ({r.probe_backend}); "
                            f"probe.num_examples {r.probe_examples}: {batches} batches, {batches * t.step_s:.0f} s",
                            t, hw)  # fmt: skip
    if "train" in plan.times:
        t = plan.times["train"]
        out += _stage_lines(f"train, one optimizer step ({plan.gpus} GPUs x micro-batch {r.micro_batch} x "
                            f"accumulation {r.accumulation} = {t.samples} screenshots)", t, hw)  # fmt: skip
    t = plan.times["eval"]
    out += _stage_lines(f"eval, one batch of {r.eval_batch} per {plan.eval_backend} worker "
                        f"({r.max_new_tokens} new tokens)", t, hw)  # fmt: skip
    return out


def _alternatives_section(plan: Plan) -> list[str]:
    if not plan.alternatives:
        return []
    r = plan.request
    mine = current_key(r)
    best = plan.alternatives[0]
    out = ["", f"alternatives for the same {r.micro_batch * r.accumulation * plan.gpus} screenshots a step "
           "(fitting ones fastest first; GiB per GPU / host per worker)"]  # fmt: skip
    for o in plan.alternatives:
        if not o.fits and o.key() != mine:
            continue
        marks = [m for m, on in (("best", o is best and o.fits), ("this config", o.key() == mine)) if on]
        fit = "" if o.fits else "does NOT fit, "
        out.append(f"  {o.describe():<70} {o.gpu_gib:6.1f} / {o.host_gib:5.1f}  {fit}{o.time.step_s:7.3f} s "
                   f"{o.time.samples_per_s:7.1f}/s MFU {100 * o.time.mfu(plan_hardware(r)):3.0f}% "
                   f"{o.time.bound}" + (f"  <- {', '.join(marks)}" if marks else ""))  # fmt: skip
    hidden = sum(not o.fits and o.key() != mine for o in plan.alternatives)
    if hidden:
        out.append(f"  ({hidden} more do not fit)")
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
    out += ["", *_time_section(plan), *_alternatives_section(plan)]
    if plan.deepspeed_estimate is not None:
        out.append(f"  DeepSpeed's estimate also needs {plan.deepspeed_estimate['cpu_gib_per_node']:.1f} GiB of CPU "
                   "memory per node")  # fmt: skip
    return "\n".join(out) + "\n"
