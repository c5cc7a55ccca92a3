"""`imagelora-dist` command line. Exit codes: 0 ok, 2 bad input/config (one line), 1 anything else."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from imagelora_dist.errors import ImageLoRAError

_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML run config (default: the embedded tiny CPU config)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. probe.method=gate selection.budget=4",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="imagelora-dist",
        description="Image-LoRA fine-tuning of vision-language models: probe heads, select, (train, eval).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "probe", help="score every KV head with the influence probe and write head_selection.json"
    )
    _add_config_args(p)
    p = sub.add_parser(
        "run", help="run the pipeline (today: probe -> select); with no config, the embedded default"
    )
    _add_config_args(p)
    p = sub.add_parser("config", help="print the resolved config (after overrides) as YAML")
    _add_config_args(p)
    sub.add_parser("families", help="list the supported model families")
    return parser


def _run(args: argparse.Namespace) -> int:
    from imagelora_dist.config import load_config

    if args.command == "families":
        from imagelora_dist.models.registry import FAMILIES

        for fam in FAMILIES.values():
            print(f"{fam.name:<12} model types: {', '.join(fam.model_types)}")
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.command == "config":
        import yaml

        print(yaml.safe_dump(cfg.model_dump(), sort_keys=False), end="")
        return 0
    from imagelora_dist import pipeline

    if args.command == "probe":
        pipeline.run_probe_select(cfg)
    elif args.command == "run":
        outputs = pipeline.run_pipeline(cfg)
        print(f"[run] done: {', '.join(f'{k} -> {v}' for k, v in outputs.items())}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `imagelora-dist` console script and `python -m imagelora_dist`."""
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except ImageLoRAError as exc:
        print(f"imagelora-dist: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
