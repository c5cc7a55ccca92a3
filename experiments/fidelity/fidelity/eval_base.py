"""Re-evaluate a pre-trained base on its held-out set, with today's scoring (pretrain-base skips a done base).

    python -m fidelity.eval_base --config configs/pretrain_base_shapes_fmt.yaml [KEY=VALUE ...] [--out FILE]

Loads `<output_dir>/base` and scores it on `<output_dir>/data/pretrain-eval` (or `eval.shards`) exactly as
`python -m fidelity.pretrain` does at the end of training: per task exact match, answer loss, how much of
it the image explains, and for `point` the click hit rate beside a random click's. Prints one line per
task; `--out` also writes the scores as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fidelity.pretrain import BASE_DIR, held_out_shards, score_base
from imagelora_dist.config import load_config
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models import load_vlm


def main(argv: list[str] | None = None) -> int:
    """Score the base named by the config; 2 on a bad config or a missing base."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", help="write the scores as JSON here too")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        base = Path(cfg.output_dir) / BASE_DIR
        if not (base / "config.json").is_file():
            raise ImageLoRAError(f"{base}: no trained base here (run pretrain-base with this config first)")
        model, processor = load_vlm(base)
        scores = score_base(cfg, model, processor, held_out_shards(cfg))
    except ImageLoRAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{base}: {scores['eval_samples']} held-out samples, exact match {scores['accuracy']:.3f}")
    for task, t in scores["tasks"].items():
        line = f"{task:<14} n {t['count']:>3}  exact {t['accuracy']:.2f}  image_gain {t['image_gain']:+.3f}"
        if "click_hit_rate" in t:
            line += (f"  click hit {t['click_hit_rate']:.3f} (random {t['random_click_hit_rate']:.3f})"
                     f"  median dist {t['median_click_dist']:.0f} (centre {t['centre_click_median_dist']:.0f})")  # fmt: skip
        print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(scores, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
