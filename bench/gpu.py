"""Image-LoRA vs peft LoRA on a Qwen2.5-VL-7B-shaped model with random bf16 weights, on one GPU.

    python bench/gpu.py [--out DIR] [--steps 8] [--shape 7b|tiny] [--device cuda|cpu]

No weights are downloaded: the model is built from a Qwen2.5-VL-7B-shaped config (28 decoder layers,
hidden 3584, 28 query / 4 KV heads, MLP 18944, vocab 152064; 32-block vision tower of width 1280) with
random bf16 weights. Inputs are screenshot-shaped: packed patches for a 1k- and a 2.7k-visual-token
screen, a short instruction and a short answer (labels on the answer only). Each method trains its
adapter with AdamW for `--steps` steps after 2 warm-up steps; reported per (screen, method): tokens/s,
step time, peak memory, MFU against 790 TFLOP/s (H200 dense bf16).

MFU counts the FLOPs the step must do with a frozen base: decoder forward 2*N*T plus attention
4*T^2*d per layer; backward activation gradients (no weight gradients of frozen weights) of the same
size for the layers at or above the lowest adapted one, attention backward 2x its forward; the LM head
forward and its input gradient; the vision tower forward (2*N_vis per patch + its attention). Adapter
FLOPs are negligible and not counted. `image_lora_upper_prefix` adds `speed.prefix_cache` (the batch repeats,
so every timed step is served from the cache): its MFU counts only the FLOPs it still runs (no tower, no
layer below the lowest adapted one). `--shape tiny --device cpu` runs the same code on the tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from imagelora_dist.models.prefix_cache import PrefixCache, attach_prefix_cache, sample_digests
from imagelora_dist.models.registry import decoder_layers, resolve_model
from imagelora_dist.models.vision_cache import pixel_digests
from imagelora_dist.train.methods import attach_method

PEAK_TFLOPS = 790.0
SHAPES = {
    "7b": dict(layers=28, hidden=3584, heads=28, kv=4, mlp=18944, vocab=152064, v_depth=32, v_hidden=1280,
               v_mlp=3420, v_heads=16, screens={"1k": (1120, 840), "2.7k": (1932, 1400)}),
    "tiny": dict(layers=6, hidden=256, heads=8, kv=4, mlp=512, vocab=4096, v_depth=2, v_hidden=128, v_mlp=256,
                 v_heads=4, screens={"1k": (448, 336), "2.7k": (672, 504)}),
}  # fmt: skip


def build(shape: dict, device: str) -> Qwen2_5_VLForConditionalGeneration:
    """Random-weight bf16 model of the given shape, directly on the device."""
    head_dim = shape["hidden"] // shape["heads"]
    half = head_dim // 2  # M-RoPE splits head_dim/2 frequencies over (t, h, w), as the real 7B ([16, 24, 24])
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    text = dict(hidden_size=shape["hidden"], num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                num_key_value_heads=shape["kv"], intermediate_size=shape["mlp"], vocab_size=shape["vocab"],
                max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope})  # fmt: skip
    depth = shape["v_depth"]
    vision = dict(depth=depth, hidden_size=shape["v_hidden"], intermediate_size=shape["v_mlp"],
                  num_heads=shape["v_heads"], out_hidden_size=shape["hidden"], patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[i for i in (7, 15, 23, 31) if i < depth] or [depth - 1])  # fmt: skip
    v = shape["vocab"]
    ids = dict(
        image_token_id=v - 1, video_token_id=v - 4, vision_start_token_id=v - 3, vision_end_token_id=v - 2
    )
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(prev)
    return model.eval()


def screen_batch(size: tuple[int, int], batch: int, device: str, vocab: int) -> dict[str, torch.Tensor]:
    """Packed patches of `batch` screenshots plus chat-shaped token ids; labels on a 12-token answer."""
    w, h = size
    gh, gw = h // 14, w // 14
    n_visual = gh * gw // 4
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(10, vocab - 10, (40,), generator=gen)
    answer = torch.randint(10, vocab - 10, (12,), generator=gen)
    row = torch.cat([prompt[:20], torch.tensor([vocab - 3]), torch.full((n_visual,), vocab - 1),
                     torch.tensor([vocab - 2]), prompt[20:], answer])  # fmt: skip
    labels = torch.full_like(row, -100)
    labels[-answer.numel() :] = answer
    return {
        "input_ids": row.repeat(batch, 1).to(device),
        "attention_mask": torch.ones(batch, row.numel(), dtype=torch.long, device=device),
        "labels": labels.repeat(batch, 1).to(device),
        "pixel_values": torch.randn(batch * gh * gw, 3 * 2 * 14 * 14, generator=gen).to(
            device, torch.bfloat16
        ),
        "image_grid_thw": torch.tensor([[1, gh, gw]] * batch, device=device),
    }


def step_flops(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], lowest: int, prefix: bool = False
) -> float:
    """FLOPs of one frozen-base adapter step (see the module docstring); with `prefix`, the ones it still
    runs when the prefix cache serves the lowest adapted layer's input (no tower, no layer below)."""
    spec = resolve_model(model)
    layers = decoder_layers(model)
    b, t = batch["input_ids"].shape
    d = model.config.text_config.hidden_size
    per_layer = sum(p.numel() for p in layers[0].parameters() if p.dim() == 2)
    fwd_layer = 2 * per_layer * t + 4 * t * t * d
    bwd_layer = 2 * per_layer * t + 8 * t * t * d
    vocab = model.config.text_config.vocab_size
    head = 2 * vocab * d * t
    visual = model.model.visual
    patches = int(batch["image_grid_thw"].prod(-1).sum()) // b
    v_params = sum(p.numel() for p in visual.parameters() if p.dim() == 2)
    v_fwd = 2 * v_params * patches + 4 * patches * patches * visual.config.hidden_size * len(visual.blocks)
    total = spec.num_layers * fwd_layer + (spec.num_layers - lowest) * bwd_layer + 2 * head + v_fwd
    if prefix:
        total -= lowest * fwd_layer + v_fwd
    return float(b * total)


def run_method(
    model, method: str, batch, steps: int, device: str, upper: bool, prefix: bool = False
) -> dict[str, float]:
    """Train one adapter for `steps` timed steps; returns its figures (the adapter is removed after).

    `prefix`: `speed.prefix_cache` on (upper selection only); the first, untimed step fills it."""
    spec = resolve_model(model)
    selection = None
    lowest = spec.num_layers // 2 if upper else 0
    flops = step_flops(model, batch, lowest, prefix)  # before attaching: the adapter wraps v_proj
    if method == "image_lora":
        first = spec.num_layers // 2 if upper else 0
        selection = {layer: list(range(spec.num_kv_heads)) for layer in range(first, spec.num_layers)}
    targets = "all-linear" if method == "lora_all_linear" else ["v_proj"]
    adapted = attach_method(model, "lora" if method.startswith("lora") else "image_lora", rank=16, alpha=32.0,
                            selection=selection, lora_targets=targets, seed=0)  # fmt: skip
    opt = torch.optim.AdamW(adapted.parameters, lr=1e-4)
    cache = detach_cache = keys = None
    if prefix:
        cache = PrefixCache()
        detach_cache = attach_prefix_cache(model, cache, lowest)
        digests = pixel_digests(batch["pixel_values"], batch["image_grid_thw"])
        rows = batch["input_ids"].shape[0]
        keys = sample_digests(batch["input_ids"], batch["attention_mask"], [1] * rows, digests)
    times = []
    torch.cuda.reset_peak_memory_stats() if device == "cuda" else None
    for i in range(steps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if cache is not None:
            cache.expect(keys)
        loss = adapted.model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    tokens = batch["input_ids"].numel()
    result = {
        "step_s": step,
        "tokens_per_s": tokens / step,
        "mfu": flops / step / (PEAK_TFLOPS * 1e12),
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan"),
        "trainable_params": float(sum(p.numel() for p in adapted.parameters)),
        "loss": float(loss),
    }
    if detach_cache is not None:
        result["prefix_hits"] = float(cache.hits)
        detach_cache()
    if adapted.handle is not None:
        adapted.handle.detach()
    else:
        adapted.peft_model.unload()
    del opt, adapted
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    """Run every (screen, method) and print + write the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/out"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    shape = SHAPES[args.shape]
    t0 = time.perf_counter()
    model = build(shape, args.device)
    model.requires_grad_(False)
    print(f"[gpu] built {args.shape} model in {time.perf_counter() - t0:.0f}s on {args.device}", flush=True)
    rows = {}
    for screen, size in shape["screens"].items():
        batch = screen_batch(size, args.batch, args.device, shape["vocab"])
        n_visual = int((batch["input_ids"][0] == shape["vocab"] - 1).sum())
        for method, upper, prefix in (("image_lora", False, False), ("image_lora", True, False),
                                      ("image_lora", True, True), ("lora_v_proj", False, False),
                                      ("lora_all_linear", False, False)):  # fmt: skip
            name = f"{method}{'_upper' if upper else '_all'}" if method == "image_lora" else method
            name += "_prefix" if prefix else ""
            r = run_method(model, method, batch, args.steps, args.device, upper, prefix)
            r["visual_tokens"] = n_visual
            r["tokens"] = batch["input_ids"].shape[1]
            rows[f"{screen}/{name}"] = r
            print(f"[gpu] {screen:>4} {name:<23} {r['step_s'] * 1e3:8.1f} ms  {r['tokens_per_s']:9.0f} tok/s  "
                  f"MFU {r['mfu']:6.1%}  peak {r['peak_gb']:6.1f} GB  params {int(r['trainable_params']):,}",
                  flush=True)  # fmt: skip
    # (c) of the speed work: the same step with the unfused reference attention, to show what SDPA buys.
    screen, size = next(iter(shape["screens"].items()))
    model.set_attn_implementation("eager")
    r = run_method(model, "image_lora", screen_batch(size, args.batch, args.device, shape["vocab"]), args.steps,
                   args.device, False)  # fmt: skip
    model.set_attn_implementation("sdpa")
    rows[f"{screen}/image_lora_all_eager_attention"] = r
    print(f"[gpu] {screen:>4} image_lora_all with eager attention: {r['step_s'] * 1e3:.1f} ms "
          f"(SDPA: {rows[f'{screen}/image_lora_all']['step_s'] * 1e3:.1f} ms)", flush=True)  # fmt: skip
    for screen in shape["screens"]:
        for ours_name in ("image_lora_all", "image_lora_upper", "image_lora_upper_prefix"):
            ours = rows[f"{screen}/{ours_name}"]
            for peer in ("lora_v_proj", "lora_all_linear"):
                p = rows[f"{screen}/{peer}"]
                print(f"[gpu] {screen:>4} {ours_name} / {peer}: time {ours['step_s'] / p['step_s']:.2f}x  "
                      f"memory {ours['peak_gb'] / p['peak_gb']:.2f}x")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "shape": args.shape, "batch": args.batch, "steps": args.steps}  # fmt: skip
    (out / "gpu_bench.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"[gpu] wrote {out / 'gpu_bench.json'} in {time.perf_counter() - t0:.0f}s total", file=sys.stderr)


if __name__ == "__main__":
    main()
