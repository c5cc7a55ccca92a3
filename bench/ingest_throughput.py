"""`shard` at scale on CPU: records/s here and on Ray Data with 1 and 2 workers, the driver's peak memory at
two record counts, and bytes per target grouped vs ungrouped.

    python bench/ingest_throughput.py [--records 100000] [--small 25000] [--per-screen 5] [--block-rows 2000]

Input: a generated JSON Lines file of `--records` records, `--per-screen` consecutive records per
screenshot (distinct 96x64 PNGs on disk; small so generating and reading them is quick and the cost
measured is the converter's per record: parse, box checks, image check, pixel hash, tar). Each run is a
fresh process converting the whole file into a fresh folder: in this process (no Ray), then on a local
2-CPU Ray with Ray Data at 1 and 2 blocks at a time. records/s = records / wall time of `convert_blocks`
(Ray Data start included, Ray start excluded). Driver memory: the peak RSS of the driver process (Ray Data
run, 2 workers) at `--small` and `--records` records; the workers read and write the shards, so it should
not grow with the input (a ratio near 1.0 is the target).

Bytes per target: 120 screens of 1280x800 GUI-like PNGs with 6 targets each, converted flat and with
`--group-by-screen`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _screen(seed: int, size: tuple[int, int]) -> bytes:
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", size, (rng.randrange(200, 256),) * 3)
    draw = ImageDraw.Draw(img)
    w, h = size
    for _ in range(max(4, w * h // 40000)):  # buttons and fields
        x, y = rng.randrange(w - 40), rng.randrange(h - 20)
        draw.rectangle([x, y, x + rng.randrange(20, 200), y + rng.randrange(10, 40)],
                       fill=tuple(rng.randrange(256) for _ in range(3)), outline=(0, 0, 0))  # fmt: skip
        draw.text((x + 3, y + 3), f"item {rng.randrange(1000)}", fill=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_input(root: Path, records: int, per_screen: int, size: tuple[int, int]) -> Path:
    """`records` JSONL records on screenshots under root/img, `per_screen` consecutive ones per screenshot."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    screens = -(-records // per_screen)
    with open(root / "data.jsonl", "w") as f:
        for s in range(screens):
            (root / "img" / f"s{s}.png").write_bytes(_screen(s, size))
            for k in range(min(per_screen, records - s * per_screen)):
                x = 4 + 12 * k % (size[0] - 16)
                line = {"img_filename": f"s{s}.png", "instruction": f"click item {s}.{k}", "data_type": "button",
                        "bbox": [x, 4, x + 10, 14]}  # fmt: skip
                f.write(json.dumps(line) + "\n")
    return root / "data.jsonl"


def child(jsonl: str, out: str, workers: int, ray_data: bool, block_rows: int, group: bool) -> None:
    """In a fresh process: one conversion; print records/s, the driver's peak RSS and the output size."""
    from imagelora_dist.data.convert import ConvertOptions
    from imagelora_dist.data.convert_blocks import BlockOptions, convert_blocks

    if ray_data:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    opts = BlockOptions(ConvertOptions(max_count=10**6, max_size=2**40), block_rows, group)
    start = time.perf_counter()
    report = convert_blocks(jsonl, out, opts, image_dir=str(Path(jsonl).parent / "img"), workers=workers,
                            use_ray=ray_data, progress=None)  # fmt: skip
    wall = time.perf_counter() - start
    print(json.dumps({
        "records": report.total_records, "targets": report.written, "wall_s": wall,
        "records_per_s": report.total_records / wall, "shards": len(report.index.shards),
        "bytes": sum(s.bytes for s in report.index.shards), "screens": report.screens,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))  # fmt: skip


def run(jsonl: Path, out: Path, workers: int, ray_data: bool, block_rows: int, group: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", str(jsonl), str(out), str(workers), str(int(ray_data)),
           str(block_rows), str(int(group))]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Print one JSON line per run and a summary."""
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--small", type=int, default=25_000)
    p.add_argument("--per-screen", type=int, default=5)
    p.add_argument("--block-rows", type=int, default=2000)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        big = make_input(root / "big", a.records, a.per_screen, (96, 64))
        small = make_input(root / "small", a.small, a.per_screen, (96, 64))
        print(json.dumps({"generated_s": time.perf_counter() - t0}), flush=True)
        rows = {}
        for name, jsonl, workers, ray_data in (
            ("here", big, 1, False), ("ray1", big, 1, True), ("ray2", big, 2, True), ("ray2-small", small, 2, True),
        ):  # fmt: skip
            rows[name] = run(jsonl, root / f"out-{name}", workers, ray_data, a.block_rows)
            print(json.dumps({"run": name, **rows[name]}), flush=True)
        same = all(
            (root / "out-ray1" / f.name).read_bytes() == f.read_bytes() for f in (root / "out-ray2").iterdir()
        )
        gui = make_input(root / "gui", 720, 6, (1280, 800))
        flat = run(gui, root / "gui-flat", 1, False, 1000)
        grouped = run(gui, root / "gui-grouped", 1, False, 1000, group=True)
        print(json.dumps({
            "ray1_vs_ray2_identical": same,
            "speedup_2_workers": rows["ray2"]["records_per_s"] / rows["ray1"]["records_per_s"],
            "driver_rss_ratio": rows["ray2"]["peak_rss_mb"] / rows["ray2-small"]["peak_rss_mb"],
            "bytes_per_target_flat": flat["bytes"] / flat["targets"],
            "bytes_per_target_grouped": grouped["bytes"] / grouped["targets"],
        }))  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        j, o, w, r, b, g = sys.argv[2:8]
        child(j, o, int(w), bool(int(r)), int(b), bool(int(g)))
    else:
        main()
