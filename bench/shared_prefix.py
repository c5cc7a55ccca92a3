"""Shared-prefix training (data.targets_per_sample) vs separate samples: targets/s and peak memory.

The same screens, K targets each: `separate` trains a micro-batch of the K targets of one screen as K rows
(the vision tower and the screen's tokens K times); `packed` trains them as one sequence (data/packing.py,
models/shared_prefix.py: the prefix once, K branches). Image-heavy (a 672x672 screenshot = 576 visual tokens,
~30 text tokens a target) on a tiny-but-not-trivial Qwen2.5-VL, Image-LoRA on every KV head, AdamW, sdpa.
A step = forward + backward + AdamW step; the collation (image processor, packing) runs in the data loader
and is timed apart. Interleaved rounds, median time per round over all screens, as wall time and as this
process's CPU time (robust to other load on the machine). Memory: the bytes the forward saves for the
backward (activations, logits), which set a step's peak; on CUDA also torch's peak allocation.

    python bench/shared_prefix.py [--k 6] [--screens 4] [--rounds 8] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402

from imagelora_dist import attach_image_lora, build_tiny_vlm, resolve_model  # noqa: E402
from imagelora_dist.data.collate import Sample, collate  # noqa: E402
from imagelora_dist.data.packing import pack_batch, screen_groups  # noqa: E402
from imagelora_dist.data.screens import make_screen  # noqa: E402
from imagelora_dist.models.shared_prefix import attach_shared_prefix  # noqa: E402
from imagelora_dist.models.tiny import TinySize  # noqa: E402

SIZE = TinySize(layers=8, hidden=512, heads=8, kv_heads=2, vision_layers=4, vision_hidden=256, vision_heads=4)
SIDE = 672  # 48x48 patches of 14, merged 2x2: 576 visual tokens


def screen_samples(k: int, screens: int) -> list[list[Sample]]:
    """Per screen, k targets asking about that one screenshot."""
    out = []
    for s in range(screens):
        image = make_screen(s, SIDE, SIDE, elements=8).image
        out.append(
            [
                Sample(
                    f"Click element {j} of this window, the one labelled item {j}.",
                    f"click({37 * j},{91 * j})",
                    [image],
                )
                for j in range(k)
            ]
        )
    return out


def batches(processor, spec, k: int, screens: int, method: str) -> tuple[list[dict], float]:
    """Each screen's micro-batch for `method`, and the collation seconds per target."""
    processor.tokenizer.padding_side = "right"
    pixels = {"size": {"shortest_edge": SIDE * SIDE, "longest_edge": SIDE * SIDE}}
    visual = torch.tensor(spec.visual_token_ids)
    out, t0 = [], time.perf_counter()
    for samples in screen_samples(k, screens):
        batch = collate(processor, samples, **pixels)
        if method == "packed":
            batch, _ = pack_batch(batch, screen_groups(["screen"] * k, k), [1] * k, visual)
        out.append(batch)
    return out, (time.perf_counter() - t0) / (k * screens)


def build(device: str, packed: bool):
    """The model with Image-LoRA on every KV head, its optimizer, processor and spec."""
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0, size=SIZE)
    model.to(device)
    spec = resolve_model(model)
    handle = attach_image_lora(model, None, rank=8, alpha=16)
    if packed:
        attach_shared_prefix(model)
    model.train()
    opt = torch.optim.AdamW(list(handle.parameters()), lr=1e-4)
    return model, opt, processor, spec


def step(model, opt, batch: dict, device: str) -> float:
    """Forward, backward, AdamW step; returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
    loss.backward()
    opt.step()
    return float(loss.detach())


def saved_for_backward_mb(model, batch: dict, device: str) -> float:
    """Bytes the forward keeps for the backward (activations, logits): what sets the step's peak memory."""
    storages: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=6, help="targets per screen")
    parser.add_argument("--screens", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds over all screens")
    parser.add_argument("--device", default="cpu")
    # One thread by default: on a shared machine an OpenMP thread that waits for a descheduled peer spins,
    # which inflates wall and CPU time alike; one thread measures the compute.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, opt, processor, spec = build(args.device, packed=True)  # the hook leaves unpacked batches alone
    data, collate_s, times, losses = {}, {}, {}, {}
    for method in ("separate", "packed"):
        data[method], collate_s[method] = batches(processor, spec, args.k, args.screens, method)
        times[method] = []
    first = data["separate"][0]
    tokens = {m: int(data[m][0]["attention_mask"].sum()) for m in data}
    print(f"K={args.k} targets/screen, {args.screens} screens; rows per micro-batch: separate "
          f"{first['input_ids'].shape[0]}, packed {data['packed'][0]['input_ids'].shape[0]}; tokens per screen: "
          f"separate {tokens['separate']}, packed {tokens['packed']}; "
          f"visual per screen {int((first['input_ids'][0] == spec.image_token_id).sum())}")  # fmt: skip
    with torch.no_grad():  # the two layouts are the same computation: check before timing
        for method in data:
            losses[method] = float(model(**{k: v.to(args.device) for k, v in data[method][0].items()}).loss)
    print(f"loss on screen 0: separate {losses['separate']:.6f}, packed {losses['packed']:.6f}")
    for method in data:  # warm-up
        step(model, opt, data[method][0], args.device)
    for _ in range(args.rounds):
        for method in data:
            t0, c0 = time.perf_counter(), time.process_time()
            for batch in data[method]:
                step(model, opt, batch, args.device)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times[method].append((time.perf_counter() - t0, time.process_time() - c0))
    targets = args.k * args.screens
    rate = {m: targets / statistics.median(w for w, _ in t) for m, t in times.items()}
    cpu_rate = {m: targets / statistics.median(c for _, c in t) for m, t in times.items()}
    memory = {m: saved_for_backward_mb(model, data[m][0], args.device) for m in data}
    peak = {}
    if args.device == "cuda":
        for m in data:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step(model, opt, data[m][0], args.device)
            peak[m] = (torch.cuda.max_memory_allocated() - base) / 2**20
    print(f"{datetime_now()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, threads {torch.get_num_threads()}, device {args.device}")  # fmt: skip
    print(
        "| layout | targets/s (wall) | targets per CPU-second | saved for backward per screen | collate ms/target |"
    )
    print("|---|---|---|---|---|")
    for m in data:
        print(f"| {m} | {rate[m]:.3f} | {cpu_rate[m]:.3f} | {memory[m]:.0f} MB | {1000 * collate_s[m]:.1f} |")
    print(f"packed / separate: targets/s x{rate['packed'] / rate['separate']:.2f} (wall), "
          f"x{cpu_rate['packed'] / cpu_rate['separate']:.2f} (CPU time); saved for backward "
          f"x{memory['packed'] / memory['separate']:.2f}")  # fmt: skip
    if peak:
        print(
            f"CUDA peak over the loaded model: separate {peak['separate']:.0f} MB, packed {peak['packed']:.0f} MB"
        )


def datetime_now() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


if __name__ == "__main__":
    main()
