"""Where a training step spends its time: torch.profiler over the suite's image-heavy configuration.

    python bench/profile_step.py [--method image_lora_1head+cache] [--rows 15]

Runs `bench/suite.py`'s worker setup in this process (tiny Qwen2.5-VL, DeepSpeed ZeRO-2 on CPU, world
size 1, micro-batch 4, 16 image-heavy screenshots, 12 steps), profiles steps 8-11 (after the first
epoch, so the caches are warm) and prints the ops by self CPU time.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import suite  # noqa: E402  (the suite's ratios, methods and head selections)


def main() -> None:
    """Profile one configuration and print the op table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="image_lora_1head+cache", choices=list(suite.METHODS))
    ap.add_argument("--rows", type=int, default=15, help="ops to print")
    args = ap.parse_args()
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", HF_HUB_OFFLINE="1")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from imagelora_dist.config import load_config
    from imagelora_dist.selection import HeadSelection
    from imagelora_dist.train.loop import WorkerContext, train_worker

    selection, overrides = suite.METHODS[args.method]
    with tempfile.TemporaryDirectory() as tmp:
        shards, out = Path(tmp, "data"), Path(tmp, "run")
        out.mkdir()
        subprocess.run([sys.executable, "-m", "imagelora_dist", "synth", "--out", str(shards), *suite.SYNTH,
                        *suite.RATIOS["image-heavy"]], check=True, capture_output=True)  # fmt: skip
        cfg = load_config(None, [f"output_dir={out}", f"data.train={shards}", "train.steps=12", *suite.COMMON,
                                 *overrides])  # fmt: skip
        if selection in suite.HEADS:
            HeadSelection(suite.HEADS[selection], hkv=4, num_layers=6).to_json(out / "head_selection.json")
        torch.set_num_threads(2)
        prof = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=6, warmup=1, active=4))
        prof.start()
        train_worker(cfg, WorkerContext(), str(shards), ckpt_dir=out / "ckpt",
                     report=lambda m, tag: prof.step(), log=lambda m: None)  # fmt: skip
        prof.stop()
    print(
        prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60
        )
    )


if __name__ == "__main__":
    main()
