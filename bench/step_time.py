"""Training-step time of Image-LoRA vs peft LoRA (v_proj, all linear) on the same tiny Qwen2.5-VL.

One run, interleaved rounds, median step time per method, printed as ratios against the peer.
A step is forward + backward + AdamW step on the adapter parameters of a frozen model.

    python bench/step_time.py [--visual-tokens 256] [--batch 4] [--rank 8] [--rounds 30]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from imagelora_dist import HeadSelection, attach_image_lora, build_tiny_vlm, resolve_model  # noqa: E402
from imagelora_dist.adapter.accounting import compare_costs, decoder_lora_targets  # noqa: E402
from imagelora_dist.data.collate import Sample, collate  # noqa: E402
from imagelora_dist.data.screens import make_screen  # noqa: E402

# The paper's LoRA baseline: the text decoder only (peft's plain "all-linear" would also adapt the ViT).
TARGETS = {"lora_v_proj": ["v_proj"], "lora_all_linear": "all-linear"}


def make_batch(processor, visual_tokens: int, batch: int) -> dict[str, torch.Tensor]:
    """`batch` screenshots whose Qwen grid gives exactly `visual_tokens` tokens each."""
    side = int(round((visual_tokens**0.5) * 28))
    samples = []
    for i in range(batch):
        s = make_screen(i, side, side, elements=6)
        samples.append(Sample(s.instruction, s.answer, [s.image]))
    pixels = side * side
    return collate(processor, samples, size={"shortest_edge": pixels, "longest_edge": pixels})


def build_methods(
    base: torch.nn.Module, spec, rank: int, alpha: float, peer_dropout: float = 0.0
) -> dict[str, tuple[torch.nn.Module, list]]:
    """Each method on its own copy of the same frozen model."""
    methods = {}
    m = copy.deepcopy(base)
    sel = HeadSelection.from_layers({layer: [0] for layer in range(spec.num_layers)}, spec)
    handle = attach_image_lora(m, sel, rank=rank, alpha=alpha)
    methods["image_lora"] = (m, list(handle.parameters()))
    # Upper half only: nothing below the lowest adapted layer needs gradients, so autograd stops there.
    m = copy.deepcopy(base)
    upper = HeadSelection.from_layers(
        {layer: [0] for layer in range(spec.num_layers // 2, spec.num_layers)}, spec
    )
    handle = attach_image_lora(m, upper, rank=rank, alpha=alpha)
    methods["image_lora_upper"] = (m, list(handle.parameters()))
    for name, names in TARGETS.items():
        regex = decoder_lora_targets(base, names)
        m = copy.deepcopy(base)
        pm = peft.get_peft_model(
            m, peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=peer_dropout, target_modules=regex)
        )
        methods[name] = (pm, [p for p in pm.parameters() if p.requires_grad])
    return methods


def step(model, opt, batch) -> None:
    """One training step."""
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--visual-tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--peer-dropout",
        type=float,
        default=0.0,
        help="peft lora_dropout (0 = fair; ms-swift/axolotl often use 0.05)",
    )
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    spec = resolve_model(base)
    batch = make_batch(processor, args.visual_tokens, args.batch)
    methods = build_methods(base, spec, args.rank, args.alpha, args.peer_dropout)
    opts = {name: torch.optim.AdamW(params, lr=1e-4) for name, (_, params) in methods.items()}
    for name, (model, _) in methods.items():
        model.train()
        for _ in range(args.warmup):
            step(model, opts[name], batch)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, (model, _) in methods.items():  # interleaved: drift hits every method alike
            t0 = time.perf_counter()
            step(model, opts[name], batch)
            times[name].append(time.perf_counter() - t0)
    sel = HeadSelection.from_layers({layer: [0] for layer in range(spec.num_layers)}, spec)
    costs = {c.method: c for c in compare_costs(base, sel, args.rank, batch["input_ids"])}
    upper = HeadSelection.from_layers(
        {layer: [0] for layer in range(spec.num_layers // 2, spec.num_layers)}, spec
    )
    costs["image_lora_upper"] = compare_costs(base, upper, args.rank, batch["input_ids"], lora_targets={})[0]
    med = {name: statistics.median(ts) for name, ts in times.items()}
    n_visual = int((batch["input_ids"] == spec.image_token_id).sum())
    print(
        f"# {datetime.date.today()}  {platform.processor() or platform.machine()}  threads={args.threads}  "
        f"torch {torch.__version__}  transformers {transformers.__version__}  peft {peft.__version__}"
    )
    print(
        f"# tiny qwen2_5_vl: {spec.num_layers} layers, hidden {spec.hidden_size}, {spec.num_kv_heads} KV heads; "
        f"batch {args.batch} x {batch['input_ids'].shape[1]} tokens, {n_visual // args.batch} visual/sample "
        f"({n_visual / batch['input_ids'].numel():.0%}); rank {args.rank}; image_lora = all layers, 1 KV head each; "
        f"peft lora_dropout {args.peer_dropout}"
    )
    print(f"{'method':<17} {'step ms':>8} {'params':>9} {'adapter FLOPs':>14}")
    for name in methods:
        c = costs[name]
        print(f"{name:<17} {med[name] * 1e3:8.1f} {c.trainable_params:9,} {c.train_flops:14,}")
    print(f"{'ratio':<40} {'time':>6} {'params':>7} {'FLOPs':>7}   target (time)")
    for ours, peer, target in RATIOS:
        a, b = costs[ours], costs[peer]
        print(
            f"{ours + ' / ' + peer:<40} {med[ours] / med[peer]:6.2f} {a.trainable_params / b.trainable_params:7.3f} "
            f"{a.train_flops / b.train_flops:7.3f}   <= {target}"
        )
    with torch.no_grad():
        vision = _median_ms(
            lambda: base.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
        )
    print(f"# frozen vision tower forward alone: {vision:.1f} ms per step, identical in every method")


RATIOS = (
    ("image_lora", "lora_v_proj", 0.85),
    ("image_lora", "lora_all_linear", 0.65),
    ("image_lora_upper", "lora_all_linear", 0.5),
)


def _median_ms(fn, n: int = 7) -> float:
    fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


if __name__ == "__main__":
    main()
