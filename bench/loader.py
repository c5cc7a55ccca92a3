"""Loader throughput (read + decode + collate) against what one training worker consumes.

    python bench/loader.py [--samples 192] [--batch 4]

Target: the loader sustains >= 3x the samples/s of an Image-LoRA training step on the tiny model, so data
never starves a step. Both are measured here, one after the other, on the same machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from imagelora_dist import HeadSelection, attach_image_lora, build_tiny_vlm, resolve_model  # noqa: E402
from imagelora_dist.data.collate import BatchCollator  # noqa: E402
from imagelora_dist.data.reader import ShardReader, make_loader  # noqa: E402
from imagelora_dist.data.synth import SynthSpec, synthesize  # noqa: E402


def loader_rate(path: str, collator: BatchCollator, batch: int, workers: int, epochs: int = 2) -> float:
    """Samples/s over `epochs` epochs, worker start-up included (as a training job sees it)."""
    reader = ShardReader.from_path(path, batch, shuffle_buffer=64)
    n, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        for b in make_loader(reader, epoch=epoch, num_workers=workers, collate_fn=collator):
            n += b["num_samples"]
    return n / (time.perf_counter() - t0)


def train_rate(model, collator: BatchCollator, path: str, batch: int, steps: int = 12) -> float:
    """Samples/s of Image-LoRA training steps (one KV head per layer) on batches from the shards."""
    spec = resolve_model(model)
    handle = attach_image_lora(
        model, HeadSelection.from_layers({i: [0] for i in range(spec.num_layers)}, spec)
    )
    opt = torch.optim.AdamW(list(handle.parameters()), lr=1e-4)
    reader = ShardReader.from_path(path, batch, shuffle_buffer=64)
    batches = [b["inputs"] for b in make_loader(reader, collate_fn=collator)]
    model.train()
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        model(**batches[i % len(batches)]).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    handle.detach()
    return batch / statistics.median(times)


def main() -> None:
    """Print loader and training rates and their ratio."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=192)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, processor = build_tiny_vlm("qwen2_5_vl")
    spec = resolve_model(model)
    collator = BatchCollator(processor, spec.visual_token_ids, max_pixels=448 * 448, max_length=4096)
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(SynthSpec(num_samples=args.samples, samples_per_shard=32), tmp, progress=None)
        train = train_rate(model, collator, tmp, args.batch)
        rates = {w: loader_rate(tmp, collator, args.batch, w) for w in (1, 2)}
    print(
        f"# {args.samples} synthetic 448x336 screenshots, batch {args.batch}, tiny qwen2_5_vl, {os.cpu_count()} cores"
    )
    print(f"training step (image_lora, 1 KV head/layer): {train:8.1f} samples/s")
    for w, r in rates.items():
        print(
            f"loader, {w} worker{'s' if w > 1 else ' '} (read+decode+collate): {r:8.1f} samples/s  = {r / train:.1f}x training  (target >= 3x)"
        )


if __name__ == "__main__":
    main()
