"""The plan's time model: compute and communication of a training step, a probe batch and an eval batch.

Compute (FLOPs per GPU; a multiply-add is 2): the frozen forward (decoder linears 2 x parameters x tokens,
causal attention 2 x seq^2 x query width per layer and sample, the LM head), the backward through the
activations only (a frozen linear needs dX, not dW: 1x its forward; attention 2x), gradient checkpointing's
recompute of the decoder forward, the vision tower's forward under no_grad (2 x its parameters x patches; its
windowed attention left out), and the adapter's own forward + backward (6 FLOPs per trained parameter and
token it sees). MFU counts everything but the recompute. Time: FLOPs / (peak x matmul_efficiency).

Communication (bytes each rank receives, split by link): under ZeRO-3 every micro-batch gathers each
non-persistent parameter for its forward (stage3_param_persistence_threshold: smaller ones stay whole), and
checkpointing's recompute gathers each decoder layer again; the trained gradients (fp32) are reduced every
micro-batch (reduce-scatter; ZeRO-1/2: all-reduce, and the updated partitions all-gathered after the step).
An all-gather of S bytes over n ranks, g per node, brings S(g-1)/n over NVLink and S(n-g)/n over the fabric;
hierarchical partitioning (ZeRO++ hpZ) keeps a node-local copy so the recompute gathers only inside the
node; quantized weight gathers (qwZ) halve the bytes. Links run in parallel with each other and with the
compute (ZeRO-3 prefetches): a step takes the longest of the three, which names what bounds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imagelora_dist.plan.hardware import Hardware
from imagelora_dist.plan.memory import DeepSpeedLimits

GB = 1e9


@dataclass
class StageTime:
    """Per step (or batch) of one stage: FLOPs per GPU by part, bytes per rank by collective and link."""

    name: str
    samples: int  # samples the whole run processes in one step
    flops: dict[str, float] = field(default_factory=dict)
    comm: dict[str, tuple[float, float]] = field(default_factory=dict)  # name: (NVLink bytes, fabric bytes)
    volume: dict[str, float] = field(default_factory=dict)  # all-gather / reduce: whole tensors' bytes
    useful_flops: float = 0.0  # per GPU, what MFU counts
    compute_s: float = 0.0
    memory_s: float = 0.0  # time bound by reading weights from HBM (generation)
    link_s: tuple[float, float] = (0.0, 0.0)

    @property
    def step_s(self) -> float:
        """The step's predicted time: its slowest part (the others overlap with it)."""
        return max(self.compute_s, self.memory_s, *self.link_s, 1e-12)

    @property
    def bound(self) -> str:
        """What holds the step back."""
        parts = {"compute": self.compute_s, "HBM reads": self.memory_s, "NVLink": self.link_s[0],
                 "inter-node fabric": self.link_s[1]}  # fmt: skip
        return max(parts, key=lambda k: parts[k])

    @property
    def samples_per_s(self) -> float:
        """Screenshots a second, the whole run."""
        return self.samples / self.step_s

    def mfu(self, hw: Hardware) -> float:
        """Model FLOPs utilization: useful FLOPs per GPU over the step time at the GPU's peak."""
        return self.useful_flops / (self.step_s * hw.bf16_tflops * 1e12)

    def finish(self, hw: Hardware) -> StageTime:
        """Turn FLOPs and bytes into times on `hw`."""
        self.compute_s = sum(self.flops.values()) / (hw.bf16_tflops * 1e12 * hw.matmul_efficiency)
        intra = sum(v[0] for v in self.comm.values()) / (hw.nvlink_gbs * GB * hw.link_efficiency)
        inter = sum(v[1] for v in self.comm.values()) / (hw.fabric_gbs * GB * hw.link_efficiency)
        self.link_s = (intra, inter)
        return self


def gather_split(
    full_bytes: float, ranks: int, per_node: int, within_node: bool = False
) -> tuple[float, float]:
    """(NVLink, fabric) bytes one rank receives in an all-gather (or reduce-scatter) of `full_bytes` over
    `ranks`, `per_node` of them on each node; `within_node`: over the node's ranks only (hpZ)."""
    if within_node or ranks <= per_node:
        n = min(ranks, per_node)
        return full_bytes * (n - 1) / n, 0.0
    return full_bytes * (per_node - 1) / ranks, full_bytes * (ranks - per_node) / ranks


def _add(
    t: StageTime, name: str, split: tuple[float, float], times: float = 1, kind: str = "", whole: float = 0.0
) -> None:
    """Count a collective `times` a step: the bytes a rank receives by link, and (`kind`) the whole
    tensor's bytes, what DeepSpeed's communication logger compares with."""
    if split[0] or split[1]:
        t.comm[name] = (split[0] * times, split[1] * times)
    if kind:
        t.volume[kind] = t.volume.get(kind, 0.0) + whole * times


def forward_flops(shape: dict[str, Any], samples: int, seq: int, visual: int) -> dict[str, float]:
    """Forward FLOPs of `samples` sequences of `seq` tokens (`visual` of them image tokens) by part."""
    tokens = samples * seq
    return {
        "decoder linears": 2.0 * shape["layer_params"] * shape["layers"] * tokens,
        "attention": 2.0 * shape["layers"] * samples * seq * seq * shape["q_width"],
        "LM head": 2.0 * shape["lm_head_params"] * tokens,
        "vision tower": 2.0 * shape["vision_parameters"] * samples * visual * shape["patches_per_token"],
    }


def zero3_gathers(
    shape: dict[str, Any], req: Any, trainable: int, micro_batches: int, checkpointing: bool
) -> dict[str, tuple[float, int, bool]]:
    """What ZeRO-3 gathers in one optimizer step: name -> (whole bytes, times a step, re-gathered in the
    backward). Parameters under stage3_param_persistence_threshold are gathered once a step (at the first
    forward after the update); the others at every micro-batch's forward, and a decoder layer again for its
    recompute/backward when more parameters run between its two uses than DeepSpeed keeps gathered ahead
    (the larger of stage3_max_reuse_distance and stage3_prefetch_bucket_size)."""
    ds = req.deepspeed or DeepSpeedLimits(stage=3)
    b = 2 if req.precision == "bf16" else 4
    threshold = ds.param_persistence_threshold
    big = sum(numel for numel in shape["param_numels"] if numel >= threshold)
    small = sum(shape["param_numels"]) - big
    # the adapter's tensors are fp32; its largest (A: hidden x rank) decides whether they persist
    adapter_persists = shape["hidden"] * req.rank < threshold
    adapter = 0.0 if req.method == "full" else 4.0 * trainable
    gathers = {
        "forward": (big * b + (0.0 if adapter_persists else adapter), micro_batches, False),
        "persistent parameters, once a step": (small * b + (adapter if adapter_persists else 0.0), 1, False),
    }
    layer = sum(shape["layer_numels"])
    layer_big = sum(numel for numel in shape["layer_numels"] if numel >= threshold)
    window = max(ds.max_reuse_distance, ds.prefetch_bucket_size)
    # between a layer's forward and its backward (or recompute) run the layers above it twice and the head
    again = sum(2 * above * layer + 2 * shape["lm_head_params"] > window for above in range(shape["layers"]))
    if again and layer_big:
        what = "recompute (checkpointing)" if checkpointing else "backward"
        gathers[f"{what}, {again} layers"] = (again * layer_big * b, micro_batches, True)
    return gathers


def train_time(plan: Any, hw: Hardware, accumulation: int) -> StageTime:
    """One optimizer step of training: `accumulation` micro-batches of micro_batch samples on every GPU."""
    req, shape = plan.request, plan.model
    n, g = plan.gpus, req.gpus_per_node
    seq, visual = req.visual_tokens + req.text_tokens, req.visual_tokens
    t = StageTime("train", samples=req.micro_batch * accumulation * n)
    fwd = forward_flops(shape, req.micro_batch, seq, visual)
    vision = fwd.pop("vision tower")
    decoder = fwd["decoder linears"] + fwd["attention"]
    full = req.method == "full"
    backward = (
        (2 if full else 1) * fwd["decoder linears"]
        + 2 * fwd["attention"]
        + (2 if full else 1) * fwd["LM head"]
    )
    adapter_tokens = req.micro_batch * (visual if req.method.startswith("image_lora") else seq)
    adapter = 0.0 if full else 6.0 * plan.trainable * adapter_tokens
    per_micro = {"frozen forward (decoder + LM head)": sum(fwd.values()), "backward (activations)": backward,
                 "vision tower (forward, no grad)": vision, "adapter (forward + backward)": adapter}  # fmt: skip
    if req.gradient_checkpointing:
        per_micro["recompute (checkpointing)"] = decoder
    t.flops = {k: v * accumulation for k, v in per_micro.items() if v}
    t.useful_flops = sum(v for k, v in t.flops.items() if not k.startswith("recompute"))
    grad_bytes = 4.0 * plan.trainable  # fp32 gradients of the trained parameters
    if req.zero == 3:
        hpz = req.hpz > 1 and req.nodes > 1
        for name, (size, times, again) in zero3_gathers(
            shape, req, plan.trainable, accumulation, bool(req.gradient_checkpointing)
        ).items():
            local = hpz and again  # hpZ: the backward gathers from the node-local copy
            size *= 0.5 if req.quantized_weights else 1.0  # qwZ: int8 weights (plus block scales)
            label = f"parameter all-gather, {name}" + (" (hpZ: in the node)" if local else "")
            _add(t, label, gather_split(size, n, g, within_node=local), times, "all-gather", size)
        _add(
            t,
            "gradient reduce-scatter (fp32)",
            gather_split(grad_bytes, n, g),
            accumulation,
            "reduce",
            grad_bytes,
        )
    elif n > 1:
        # ZeRO-0/1/2: the fp32 gradients all-reduced every micro-batch (a reduce-scatter's bytes twice);
        # ZeRO-1/2 then all-gather the updated partitions once a step
        _add(
            t,
            "gradient all-reduce (fp32)",
            gather_split(2 * grad_bytes, n, g),
            accumulation,
            "reduce",
            grad_bytes,
        )
        if req.zero in (1, 2):
            _add(t, "updated parameters all-gather (fp32)", gather_split(grad_bytes, n, g), 1, "all-gather",
                 grad_bytes)  # fmt: skip
    return t.finish(hw)


def probe_time(plan: Any, hw: Hardware) -> StageTime:
    """One probe batch on every probe worker: forward and backward to the rank-1 probe's B."""
    req, shape = plan.request, plan.model
    seq = req.visual_tokens + req.text_tokens
    zero3 = req.probe_backend == "zero3"
    workers = req.ray_workers or plan.gpus
    t = StageTime("probe", samples=req.probe_batch * workers)  # actors, or a group's ranks: a batch each
    fwd = forward_flops(shape, req.probe_batch, seq, req.visual_tokens)
    t.flops = {"forward": sum(fwd.values()),
               "backward (activations)": fwd["decoder linears"] + 2 * fwd["attention"] + fwd["LM head"]}  # fmt: skip
    t.useful_flops = sum(t.flops.values())
    if zero3:
        g = min(req.gpus_per_node, workers)
        for name, (size, times, _) in zero3_gathers(shape, req, plan.trainable, 1, False).items():
            _add(
                t, f"parameter all-gather, {name}", gather_split(size, workers, g), times, "all-gather", size
            )
    return t.finish(hw)


def eval_time(plan: Any, hw: Hardware) -> StageTime:
    """One eval batch on every eval worker: the prompt's prefill, then max_new_tokens decode steps, each
    reading every weight (from HBM, or gathered over the group under zero3)."""
    req, shape = plan.request, plan.model
    b = 2 if req.precision == "bf16" else 4
    seq = req.visual_tokens + req.text_tokens
    backend = plan.eval_backend
    ranks = req.ray_workers or plan.gpus
    per = max(1, req.gpus_per_worker) if backend == "device_map" else 1
    workers = 1 if backend == "zero3" else (req.eval_workers or max(1, plan.gpus // per))
    samples = req.eval_batch * (ranks if backend == "zero3" else workers)
    t = StageTime("eval", samples=samples)
    fwd = forward_flops(shape, req.eval_batch, seq, req.visual_tokens)
    decode = 2.0 * (shape["layer_params"] * shape["layers"] + shape["lm_head_params"]) * req.eval_batch
    t.flops = {"prefill": sum(fwd.values()), "decode": decode * req.max_new_tokens}
    t.useful_flops = sum(t.flops.values())
    weights = shape["parameters"] * b
    if backend == "zero3":
        g = min(req.gpus_per_node, ranks)
        _add(t, "parameter all-gather, every decode step", gather_split(weights, ranks, g),
             req.max_new_tokens + 1)  # fmt: skip
        t.memory_s = req.max_new_tokens * weights / ranks / (hw.hbm_gbs * GB)
    else:  # a device_map replica's GPUs run their layers one after the other: a whole replica's reads
        t.memory_s = req.max_new_tokens * weights / (hw.hbm_gbs * GB)
    return t.finish(hw)
