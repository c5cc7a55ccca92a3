"""Host memory while loading a checkpoint under ZeRO-3: each rank's peak RSS above its RSS just before
loading (its fixed cost), over the checkpoint's size, for 1, 2 and 4 ranks (a local gloo group, no Ray:
tests/zero3_ranks.py). `partitioned` is load_partitioned (each rank reads only its partitions' bytes);
`from_pretrained` is transformers' own ZeRO-3 loading (rank 0 reads every tensor whole), the reference.

Checkpoints (bf16, written with save_pretrained into a temp dir, deleted after):
  1gib    a Qwen2.5-VL-layout model of ~1 GiB (the tiny builder, 28 layers of width 1536)
  smoke3b Qwen2.5-VL-3B's exact layout (bench/smoke_3b.py's checkpoint, ~7 GiB on disk)

    python bench/loading_memory.py [--models 1gib,smoke3b] [--ranks 1,2,4] [--loaders partitioned,from_pretrained]

Prints one line per (model, loader, ranks) and writes bench/out/loading_memory.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _save(model: torch.nn.Module, processor: object, path: Path) -> None:
    model.to(torch.bfloat16).save_pretrained(str(path))
    processor.save_pretrained(str(path))


def write_checkpoints(root: Path, which: str) -> Path:
    """The `which` checkpoint and, beside it, the same family's tiny one (`warm`, loaded first so that the
    model's code is imported before the measured load)."""
    from imagelora_dist.models import build_tiny_vlm
    from imagelora_dist.models.tiny import TinySize

    if not (root / "warm").exists():
        _save(*build_tiny_vlm("qwen2_5_vl", seed=0), root / "warm")
    path = root / which
    if which == "1gib":
        size = TinySize(layers=28, hidden=1536, heads=12, kv_heads=2)
        _save(*build_tiny_vlm("qwen2_5_vl", seed=0, size=size), path)
    elif which == "smoke3b":
        sys.path.insert(0, str(REPO / "bench"))
        from smoke_3b import write_checkpoint

        write_checkpoint(path)
    else:
        raise SystemExit(f"unknown model {which!r} (1gib, smoke3b)")
    return path


def main() -> None:
    """Measure and print/write the per-rank peaks."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="1gib,smoke3b")
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--loaders", default="partitioned,from_pretrained")
    ap.add_argument("--out", default=str(REPO / "bench" / "out"))
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from zero3_ranks import run_group

    results = []
    root = Path(tempfile.mkdtemp(prefix="loading-memory-"))
    try:
        for which in args.models.split(","):
            path = write_checkpoints(root, which)
            ckpt = sum(f.stat().st_size for f in path.glob("*.safetensors"))
            for loader in args.loaders.split(","):
                for world in (int(w) for w in args.ranks.split(",")):
                    jobs = [
                        {"name": "warm", "dtype": "bfloat16", "path": str(root / "warm"), "loader": loader},
                        {"name": "big", "dtype": "bfloat16", "path": str(path), "loader": loader},
                    ]
                    out = root / f"out-{which}-{loader}-{world}"
                    start = time.perf_counter()
                    run_group(world, jobs, out, gather=False, timeout=3600)
                    wall = time.perf_counter() - start
                    ranks = [json.loads((out / f"big.rank{r}.json").read_text()) for r in range(world)]
                    grew = [(r["peak"] - r["before"]) / ckpt for r in ranks]
                    row = {"model": which, "checkpoint_gib": ckpt / 2**30, "loader": loader, "ranks": world,
                           "peak_over_checkpoint": grew, "partition_over_checkpoint": [r["partition"] / ckpt for r in ranks],
                           "fixed_cost_gib": [r["before"] / 2**30 for r in ranks], "wall_s": wall}  # fmt: skip
                    results.append(row)
                    print(f"{which} ({ckpt / 2**30:.2f} GiB) {loader:15s} {world} rank(s): peak above fixed cost / "
                          f"checkpoint = {', '.join(f'{g:.2f}' for g in grew)} (max {max(grew):.2f}); "
                          f"{wall:.0f} s", flush=True)  # fmt: skip
            shutil.rmtree(path)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "loading_memory.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
