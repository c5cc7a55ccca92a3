"""A real-shape checkpoint end to end (`make smoke-3b`, minutes on CPU): Qwen2.5-VL-3B's exact layout
(36 layers, hidden 2048, 16 heads, 2 KV heads, head_dim 128, its 32-block vision tower) with random bf16
weights and the offline tokenizer's small vocabulary, written with save_pretrained, then loaded through
model.path, probed, trained 2 steps under ZeRO-3 on 2 workers (partitioned loading), evaluated, and
used by `infer`. Writes bench/out/smoke_3b.json: per-rank parameter memory, peak RSS, stage times.

    python bench/smoke_3b.py [--out DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def write_checkpoint(path: Path) -> int:
    """Save a random bf16 model of Qwen2.5-VL-3B's shape and the offline processor; its parameter count."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from imagelora_dist.models.known_shapes import known_config
    from imagelora_dist.models.processors import build_family_processor

    processor = build_family_processor("qwen2_5_vl")
    tok = processor.tokenizer
    ids = dict(zip(("image", "video", "start", "end", "eot", "im_end"), tok.convert_tokens_to_ids(
        ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|endoftext|>", "<|im_end|>"]
    ), strict=True))  # fmt: skip
    fields = known_config("qwen2_5_vl", "3b")
    fields.pop("model_type")
    fields["text_config"].update(vocab_size=len(tok), bos_token_id=ids["eot"], eos_token_id=ids["im_end"],
                                 pad_token_id=ids["eot"])  # fmt: skip
    fields.update(image_token_id=ids["image"], video_token_id=ids["video"], vision_start_token_id=ids["start"],
                  vision_end_token_id=ids["end"])  # fmt: skip
    config = AutoConfig.for_model("qwen2_5_vl", **fields)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    count = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(path))
    processor.save_pretrained(str(path))
    del model
    return count


def _run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=log.parent, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - start


def main() -> int:
    """Write the checkpoint, run the pipeline and infer on it, record memory and times."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "bench" / "out"), help="where smoke_3b.json goes")
    ap.add_argument("--keep", action="store_true", help="keep the ~7 GB checkpoint and the run directory")
    args = ap.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    work = Path(tempfile.mkdtemp(prefix="smoke-3b-"))
    ckpt, run, log = work / "Qwen2.5-VL-3B-shape", work / "run", work / "smoke_3b.log"
    result: dict = {"date": time.strftime("%Y-%m-%d"), "work": str(work)}
    try:
        start = time.perf_counter()
        result["parameters"] = write_checkpoint(ckpt)
        result["checkpoint_s"] = round(time.perf_counter() - start, 1)
        result["checkpoint_gb"] = round(sum(f.stat().st_size for f in ckpt.iterdir()) / 1e9, 2)
        cli = [sys.executable, "-m", "imagelora_dist"]
        common = [
            f"output_dir={run}", f"model.path={ckpt}", "model.dtype=bfloat16", "train.precision=bf16",
            f"tracking.uri=sqlite:///{work}/mlruns.db", f"tracking.artifact_root={work}/mlartifacts",
            "data.synth.num_samples=8", "data.synth.samples_per_shard=4", "data.synth.width=224",
            "data.synth.height=224", "data.max_pixels=50176", "probe.num_examples=2", "probe.batch_size=1",
            "ray.num_workers=1", "ray.num_cpus=2", "train.deepspeed=zero3", "train.workers=2",
            "train.micro_batch_size=1", "train.steps=2", "train.checkpoint_every=2", "selection.budget=36",
            "eval.num_samples=2", "eval.batch_size=1", "eval.max_new_tokens=4", "eval.text_task_problems=0",
        ]  # fmt: skip
        result["pipeline_s"] = round(_run([*cli, "run", *common], log), 1)
        shot = work / "shot.png"
        from PIL import Image

        Image.new("RGB", (224, 224), "white").save(shot)
        result["infer_s"] = round(_run([*cli, "infer", "--adapter", str(run / "adapter"), "--model", str(ckpt),
                                        "--image", str(shot), "--instruction", "Click the OK button."], log), 1)  # fmt: skip
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{work}/mlruns.db")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        train = next(r for r in runs if r.data.tags.get("imagelora.stage") == "train")
        result["train_metrics"] = {
            k: v for k, v in train.data.metrics.items() if "memory" in k or k == "loss"
        }
        result["peak_rss_gb_children"] = round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2
        )
    finally:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if log.exists():
            shutil.copy(log, out / "smoke_3b.log")
        (out / "smoke_3b.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
