"""`imagelora-dist` command line. Exit codes: 0 ok, 2 bad input/config (one line), 1 anything else."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.offline_env import apply_offline_env


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
        "synth", help="render synthetic GUI screenshots (grounding + referring) into WebDataset shards"
    )
    _add_config_args(p)
    p.add_argument(
        "--out", metavar="DIR", help="output directory (default: data.train, else <output_dir>/data/train)"
    )
    p.add_argument(
        "--workers", type=int, metavar="N", help="processes (default: data.synth.workers, else all cores)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p = sub.add_parser(
        "shard",
        help="convert GUI-grounding data (JSONL, JSON array, parquet) into WebDataset shards with index.json",
        description="Reads ScreenSpot / ScreenSpot-v2 / ScreenSpot-Pro JSON arrays, JSON Lines, SeeClick / "
        "OS-Atlas records with an `elements` list, and Hugging Face parquet exports (images embedded). Bad "
        "records are reported with their file and line or row and skipped; with --strict the exit code is "
        "1 when any record was skipped.",
    )
    p.add_argument(
        "--input",
        "--jsonl",
        dest="input",
        metavar="PATH",
        help="a .jsonl, .json array or .parquet file, or a folder of them (Hugging Face: the dataset folder); "
        "local or s3://",
    )
    p.add_argument(
        "--images",
        metavar="DIR",
        help="folder the records' image paths are relative to (default: the input's folder; "
        "not needed for embedded images)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="output directory (or s3:// prefix) for shards, manifest.json and index.json",
    )
    # Checked by ConvertOptions rather than argparse `choices`, so a bad value is one error line (exit 2).
    p.add_argument(
        "--bbox-format", default="xyxy", metavar="{xyxy,xywh}", help="box layout (ScreenSpot: xywh)"
    )
    p.add_argument(
        "--normalized",
        nargs="?",
        const="1",
        default="auto",
        metavar="{auto,pixels,1,1000}",
        help="box and point units: pixels, 0..1, 0..1000, or auto (all values in [0, 1] -> normalized)",
    )
    p.add_argument("--max-count", type=int, default=1000, metavar="N", help="samples per shard at most")
    p.add_argument("--max-size", default="1G", metavar="SIZE", help="bytes per shard at most (e.g. 500M, 2G)")
    p.add_argument("--prefix", default="train", help="shard file prefix")
    p.add_argument("--strict", action="store_true", help="exit 1 when any record was skipped")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.add_argument(
        "--block-rows",
        type=int,
        metavar="N",
        help="input rows per block, the unit one worker converts (default: --max-count)",
    )
    p.add_argument(
        "--group-by-screen",
        action="store_true",
        help="store each screenshot once with all its targets (the reader still yields every target)",
    )
    p.add_argument(
        "--address",
        metavar="ADDR",
        help="convert on this Ray cluster with Ray Data (inside a Ray job: RAY_ADDRESS is used anyway)",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="blocks converted at once on Ray Data (without --address or a Ray job: a local Ray of N CPUs)",
    )
    p.add_argument(
        "--verify",
        metavar="DIR",
        help="check the shards in DIR against its manifest.json (exit 2, one line per bad shard)",
    )
    p = sub.add_parser(
        "probe", help="score every KV head with the influence probe and write head_selection.json"
    )
    _add_config_args(p)
    p = sub.add_parser("train", help="train the adapter (train.method) with DeepSpeed ZeRO on Ray Train")
    _add_config_args(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in train.storage (also on another "
        "train.workers, micro-batch or ZeRO stage); a run resubmitted with its own config does so anyway",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="delete the checkpoints stored under this run's name and train from step 0",
    )
    p = sub.add_parser(
        "eval",
        help="evaluate <output_dir>/adapter: grounding accuracy (also per data source x element type), "
        "referring exact match, text preservation",
    )
    _add_config_args(p)
    p = sub.add_parser(
        "run", help="run the pipeline (probe -> train -> eval); no config: the embedded default"
    )
    _add_config_args(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue training from the latest checkpoint (also on another train.workers)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="delete the stored training checkpoints of this run's name and train from step 0",
    )
    p = sub.add_parser(
        "study",
        help="run a sweep (settings x methods x seeds) into one MLflow experiment; `compare` then reports it",
        description="Each cell is a pipeline run of the spec's base config with the cell's overrides; cells "
        "already done are skipped. The cells' runs carry labels that `imagelora-dist compare` turns into "
        "study.md (a table of mean and spread over seeds) and plots.",
    )
    p.add_argument("spec", metavar="SPEC", help="study spec YAML (base config, ratios, methods, seeds)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="spec overrides, e.g. seeds=[0]")
    p.add_argument(
        "--only", action="append", default=[], metavar="CELL", help="run only this cell (repeatable)"
    )
    p = sub.add_parser(
        "plan",
        help="per-GPU and host memory of a run (probe, train, eval) and whether it fits: --config FILE "
        "[key=value ...], or --family/--size or --model with flags",
        description="Builds the model from its config on the meta device (no weights), counts its parameters "
        "and the adapter's, and estimates per-GPU memory: base weights, adapter weights/gradients/Adam "
        "moments, activations with and without gradient checkpointing, one probe worker, eval on its backend "
        "(KV cache included; eval.backend auto resolved), and host memory per worker while loading and "
        "training. --config plans that run from its own settings. Training every parameter (--method full) "
        "uses DeepSpeed's own estimators.",
    )
    from imagelora_dist.plan import add_plan_arguments

    add_plan_arguments(p)
    p = sub.add_parser("config", help="print the resolved config (after overrides) as YAML")
    _add_config_args(p)
    p = sub.add_parser(
        "compare",
        help="table of the runs of an MLflow experiment (params, FLOPs, accuracy...), then their grounding "
        "accuracy per data source x element type side by side",
    )
    _add_config_args(p)
    p.add_argument(
        "--experiment",
        metavar="NAME",
        help="MLflow experiment (default: tracking.experiment or the config name)",
    )
    p.add_argument("--out", metavar="DIR", help="where to write compare.html (default: output_dir)")
    p = sub.add_parser(
        "infer",
        help="answer screenshot + instruction with a trained adapter (a directory or an MLflow run)",
        description="Greedy answers with the adapter attached (Image-LoRA acts at prefill only; decoding is "
        "the base model's). Single mode prints the answer; batch mode writes each JSONL record plus its "
        "answer, in order. Without --config, --model or --family the model is the adapter's own base "
        "(its checkpoint directory, or a tiny model of its family).",
        epilog="examples:\n"
        "  imagelora-dist infer --adapter runs/tiny-default/adapter --image shot.png "
        "--instruction 'Click the Save button.'\n"
        "  imagelora-dist infer --adapter mlflow-run:<run_id> --tracking-uri sqlite:///mlruns.db \\\n"
        "      --jsonl questions.jsonl --output answers.jsonl --batch-size 8\n"
        "  imagelora-dist infer --adapter runs:/<run_id>/adapter --model /models/Qwen2.5-VL-7B-Instruct "
        "--image shot.png --instruction '...'\n"
        "  imagelora-dist infer --adapter runs/qwen7b/adapter --input s3://bucket/screens --out preds.jsonl "
        "eval.workers=8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)
    p.add_argument(
        "--adapter",
        required=True,
        metavar="SOURCE",
        help="adapter directory, runs:/<run_id>/<artifact path>, or mlflow-run:<run_id> (its adapter/ "
        "artifact, else its nested train run's)",
    )
    p.add_argument("--image", metavar="FILE", help="single mode: the screenshot")
    p.add_argument("--instruction", metavar="TEXT", help="single mode: the question about it")
    p.add_argument(
        "--jsonl",
        metavar="FILE",
        help='batch mode: one {"image": path, "instruction": text} per line (ScreenSpot field names too)',
    )
    p.add_argument("--output", metavar="FILE", help="batch mode: JSONL to write (written atomically)")
    p.add_argument(
        "--input",
        metavar="SHARDS_OR_JSONL",
        help="at scale: a shard set (dir or s3:// with index.json) or a JSONL file, answered on Ray workers "
        "(eval.workers, eval.backend), resumable; needs --out",
    )
    p.add_argument(
        "--out", metavar="FILE", help="with --input: one JSON line per input with its click, in order"
    )
    p.add_argument(
        "--errors", metavar="FILE", help="with --input: bad inputs, one line each (OUT.errors.jsonl)"
    )
    p.add_argument(
        "--images", metavar="DIR", help="folder relative image paths start from (default: the JSONL's)"
    )
    p.add_argument("--answer-key", default="answer", metavar="KEY", help="output field of the answer")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per generate call (eval.batch_size)")
    p.add_argument(
        "--max-new-tokens", type=int, metavar="N", help="answer length limit (eval.max_new_tokens)"
    )
    p.add_argument("--model", metavar="DIR", help="local checkpoint directory (sets model.path)")
    p.add_argument("--family", metavar="NAME", help="a tiny random model of this family (tests, demos)")
    p.add_argument(
        "--tracking-uri", metavar="URI", help="MLflow store for run ids (tracking.uri, $MLFLOW_TRACKING_URI)"
    )
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    sub.add_parser("families", help="list the supported model families")
    return parser


def _run(args: argparse.Namespace) -> int:
    from imagelora_dist.config import load_config

    if args.command == "families":
        from imagelora_dist.models.families import FAMILIES

        for fam in FAMILIES.values():
            print(f"{fam.name:<12} model types: {', '.join(fam.model_types)}")
        return 0
    if args.command == "shard":
        return _shard(args)
    if args.command == "plan":
        from imagelora_dist.plan import plan_command

        return plan_command(args)
    if args.command == "study":
        from imagelora_dist.study import study_command

        return study_command(args.spec, args.overrides, args.only)
    cfg = load_config(args.config, args.overrides)
    if args.command == "config":
        import yaml

        print(yaml.safe_dump(cfg.model_dump(), sort_keys=False), end="")
        return 0
    if args.command == "compare":
        from imagelora_dist.compare import compare_main
        from imagelora_dist.tracking import resolve_tracking_uri

        experiment = args.experiment or cfg.tracking.experiment or cfg.name
        path = compare_main(resolve_tracking_uri(cfg.tracking), experiment, args.out or cfg.output_dir)
        print(f"[compare] wrote {path}")
        return 0
    if args.command == "infer":
        from imagelora_dist.infer import infer_command

        model_keys = [o.split("=", 1)[0].strip() for o in args.overrides]
        from_adapter = args.config is None and not any(k.startswith("model.") for k in model_keys)
        return infer_command(cfg, args, model_from_adapter=from_adapter)
    from imagelora_dist import pipeline

    if args.command == "synth":
        from imagelora_dist.data.synth import synthesize

        out = args.out or pipeline.train_shards(cfg)
        workers = args.workers or cfg.data.synth.workers
        index = synthesize(pipeline.synth_spec(cfg), out, workers=workers, overwrite=args.overwrite)
        print(f"[synth] wrote {index.total_samples} samples in {len(index.shards)} shards to {out}")
    elif args.command in ("probe", "train", "eval", "run"):
        stages = None if args.command == "run" else (args.command,)
        results = pipeline.run_pipeline(
            cfg, stages=stages, resume=getattr(args, "resume", False), restart=getattr(args, "restart", False)
        )
        print(f"[{args.command}] done: {', '.join(f'{k} -> {r.output}' for k, r in results.items())}")
        if "eval" in results:
            print_eval_breakdown(results["eval"].output)
        print_where_to_look(cfg)
    return 0


def print_eval_breakdown(report: object) -> None:
    """Print the ScreenSpot-style accuracy table (data source x element type) of an eval_report.json."""
    import json
    from pathlib import Path

    from imagelora_dist.eval.breakdown import breakdown_table

    print(breakdown_table(json.loads(Path(str(report)).read_text())), end="")


def print_where_to_look(cfg: object) -> None:
    """Say how to open the run's MLflow store."""
    from imagelora_dist.tracking import resolve_tracking_uri

    if cfg.tracking.enabled:
        uri = resolve_tracking_uri(cfg.tracking)
        if uri.startswith(("http://", "https://")):  # a tracking server: its own UI
            print(f"[{cfg.name}] MLflow: {uri}")
        else:
            print(f"[{cfg.name}] MLflow: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")


def _parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise ImageLoRAError(f"--max-size: cannot read {text!r} as a size (e.g. 500M, 2G, 1048576)") from None


def _shard(args: argparse.Namespace) -> int:
    from imagelora_dist.data.convert import ConvertOptions
    from imagelora_dist.data.convert_blocks import BlockOptions, convert_blocks, verify

    if args.verify:
        checked, bad = verify(args.verify)
        for line in bad:
            print(f"imagelora-dist: error: {line}", file=sys.stderr)
        print(f"{args.verify}: {checked} shards checked, {len(bad)} problem{'s' if len(bad) != 1 else ''}")
        return 2 if bad else 0
    for flag in ("input", "out"):
        if not getattr(args, flag):
            raise ImageLoRAError(f"shard needs --{flag} (or --verify DIR)")
    if args.workers is not None and args.workers < 1:
        raise ImageLoRAError(f"--workers must be >= 1, got {args.workers}")
    if args.max_count < 1:
        raise ImageLoRAError(f"--max-count must be >= 1, got {args.max_count}")
    options = ConvertOptions(
        bbox_format=args.bbox_format,
        normalized=args.normalized,
        max_count=args.max_count,
        max_size=_parse_size(args.max_size),
        prefix=args.prefix,
        strict=args.strict,
    )
    block_rows = args.block_rows if args.block_rows is not None else args.max_count
    if block_rows < 1:
        raise ImageLoRAError(f"--block-rows must be >= 1, got {block_rows}")
    use_ray = bool(args.address or os.environ.get("RAY_ADDRESS") or (args.workers or 1) > 1)
    if use_ray:
        from imagelora_dist.config import load_config
        from imagelora_dist.ray_runtime import ensure_ray

        overrides = [f"ray.address={args.address}"] if args.address else []
        if args.workers and not args.address:
            overrides.append(f"ray.num_cpus={args.workers}")
        ensure_ray(load_config(None, overrides))
    report = convert_blocks(
        args.input,
        args.out,
        BlockOptions(options, block_rows=block_rows, group_by_screen=args.group_by_screen),
        image_dir=args.images,
        workers=args.workers or 1,
        use_ray=use_ray,
        overwrite=args.overwrite,
    )
    return report.exit_code  # convert_blocks printed the summary


def _runtime_failures() -> tuple[type[BaseException], ...]:
    """Failures of the environment rather than the input: one line, exit 1 (imports kept lazy)."""
    out: list[type[BaseException]] = []
    try:
        from imagelora_dist.tracking import TrackingUnavailable

        out.append(TrackingUnavailable)
    except ImportError:
        pass
    try:
        from imagelora_dist.probe.distributed import ProbeFailed

        out.append(ProbeFailed)
    except ImportError:
        pass
    try:
        from imagelora_dist.errors import TrainingFailed
        from imagelora_dist.train.loop import TrainingDiverged

        out.extend([TrainingFailed, TrainingDiverged])
    except ImportError:
        pass
    return tuple(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `imagelora-dist` console script and `python -m imagelora_dist`."""
    apply_offline_env()
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except ImageLoRAError as exc:
        print(f"imagelora-dist: error: {exc}", file=sys.stderr)
        return 2
    except _runtime_failures() as exc:
        print(f"imagelora-dist: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
