"""Does an interrupted run end where an uninterrupted one does? One process, the tiny model, 4 steps.

    python bench/resume_check.py [--device cpu|cuda] [--shards DIR] [--out DIR]

Runs (a) 4 steps; (b) 2 steps, then resumed from DeepSpeed's checkpoint; (c) 2 steps, DeepSpeed's files
deleted, then resumed from the world-size-independent `portable_state.safetensors`; (d) 1 step with
micro-batches of 1, then resumed with micro-batches of 2 (the rest of the epoch split anew). Prints and
writes `resume_check.json`: the largest difference of (b) and (c) from (a) (0.0 when the resume is exact
and the kernels deterministic), the data cursors of (d), the steps each resumed run trained (3 and 4;
2-4 for (d)) and whether (b)'s stored step-2 files stayed as they were. tests/integration/test_train.py.py runs it on the CPU; on a GPU
run it with DeepSpeed installed (bench/gpu_wheels.sh; experiments/fidelity/gpu_pretrain.sh runs it first).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from the checkout, installed or not


def main(argv: list[str] | None = None) -> int:
    """Run the four trainings and report the differences."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--shards", help="a 4-sample shard directory (default: synthesized into the work dir)")
    ap.add_argument("--out", default=None, help="where resume_check.json and the work dir go (default: temp)")
    args = ap.parse_args(argv)
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    import torch

    from imagelora_dist.config import load_config
    from imagelora_dist.pipeline import ensure_train_shards
    from imagelora_dist.train.loop import WorkerContext, train_worker

    out = Path(args.out or tempfile.mkdtemp(prefix="resume-check-"))
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, [f"output_dir={out / 'work'}", "data.synth.num_samples=4", "data.synth.workers=1",
                             "data.shuffle_buffer=0", "train.steps=4", "train.method=image_lora_all",
                             "train.checkpoint_every=1", "train.lr=0.01", "tracking.enabled=false"])  # fmt: skip
    shards = args.shards or ensure_train_shards(cfg, log=lambda m: None)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": shards})})
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    ctx = WorkerContext(device=device)

    def quiet(_: str) -> None:
        pass

    def diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
        return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)

    def files(folder: Path) -> dict[str, tuple[int, str]]:
        return {f.name: (f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
                for f in sorted(folder.iterdir()) if f.is_file()}  # fmt: skip

    steps: dict[str, list[int]] = {}

    def watch(name: str) -> Callable[[str], None]:
        """print, recording the steps the loop itself says it trained (a resume that ignored the checkpoint
        would train from step 1 again, and still reach the same adapter on this deterministic run)."""
        steps[name] = []

        def log(line: str) -> None:
            found = re.match(r"\[train\] step (\d+)/", line)
            if found:
                steps[name].append(int(found.group(1)))
            print(line)

        return log

    work = out / "work"
    full = train_worker(cfg, ctx, shards, ckpt_dir=work / "a", log=quiet)[0].adapter_state()
    train_worker(cfg, ctx, shards, ckpt_dir=work / "b", stop_after=2, log=quiet)
    stored = files(work / "b" / "step-000002")
    resumed = train_worker(cfg, ctx, shards, ckpt_dir=work / "b", resume=True, log=watch("deepspeed"))
    resumed = resumed[0].adapter_state()
    # DeepSpeed's files are an optimisation only: without them the portable state resumes the same run.
    train_worker(cfg, ctx, shards, ckpt_dir=work / "c", stop_after=2, log=quiet)
    deleted = [f.name for f in (work / "c" / "step-000002").glob("*_states.pt")]
    for name in deleted:
        (work / "c" / "step-000002" / name).unlink()
    portable = train_worker(cfg, ctx, shards, ckpt_dir=work / "c", resume=True, log=watch("portable"))
    portable = portable[0].adapter_state()
    # Another micro-batch mid-epoch: 1 of 4 batches of 1 read, so the rest (3 samples) gives 1 batch of 2.
    one = cfg.model_copy(update={"train": cfg.train.model_copy(update={"micro_batch_size": 1})})
    train_worker(one, ctx, shards, ckpt_dir=work / "d", stop_after=1, log=quiet)
    train_worker(cfg, ctx, shards, ckpt_dir=work / "d", resume=True, log=watch("micro_batch"))
    cursors = [json.loads((work / "d" / f"step-00000{i}" / "cursor.json").read_text()) for i in (1, 2, 4)]
    report = {
        "device": str(device),
        "deepspeed_resume_max_diff": diff(full, resumed),
        "portable_resume_max_diff": diff(full, portable),
        "deleted": deleted,
        "cursors": cursors,
        "resumed_steps": steps,  # the steps each resumed run's loop logged
        "stored_step_untouched": files(work / "b" / "step-000002") == stored,
    }
    (out / "resume_check.json").write_text(json.dumps(report, indent=1))
    print("RESUME_CHECK", json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
