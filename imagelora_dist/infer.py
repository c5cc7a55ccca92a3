"""`imagelora-dist infer`: screenshot + instruction -> answer, with a trained adapter attached.

The adapter comes from a local directory or from MLflow (`runs:/<run_id>/<artifact path>`, or
`mlflow-run:<run_id>`: the run's `adapter/` artifact, else that of its nested `train` run). Its kind is read
from `adapter_config.json`: Image-LoRA (`adapter_type: image_lora`, our safetensors) or a peft LoRA
(`peft_type: LORA`, from `save_pretrained`). Answers come from the evaluation's own greedy, left-padded
generation (`eval.generate.generate_answers`), so `infer` and `eval` answer alike.

Grounding questions are asked in the configured `data.answer_format` (`auto`: the family's own), with the
output request the collator appends in training, and each answer is parsed back with that format's parser
to a click in pixels of the input screenshot (`answer_clicks`). A question is grounding unless its JSONL
record says `"task": "referring"` or it is a referring question (`What is the element in the box (...)`).
With the default `point` format the prompt and the printed/written answers are as they always were.

Image-LoRA acts at prefill only, by construction: its delta is added at visual-token rows, and visual
tokens exist only in the prompt; each decode step feeds one new text token per sequence, which the
adapter passes through bit for bit. The KV cache holds the adapted prefill values; decoding is unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch import nn

from imagelora_dist.adapter.io import CONFIG_NAME
from imagelora_dist.config import RunConfig
from imagelora_dist.data.answer_formats import (
    POINT,
    QWEN25_ABS,
    check_answer_format,
    click_pixels,
    model_image_size,
    resolve_answer_format,
)
from imagelora_dist.data.convert import IMAGE_KEYS, INSTRUCTION_KEYS
from imagelora_dist.data.shards import MAX_IMAGE_PIXELS, atomic_write_bytes
from imagelora_dist.data.tasks import GROUNDING
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.eval.batch_infer import question_prompt, question_task
from imagelora_dist.eval.generate import generate_answers
from imagelora_dist.eval.inference import (  # noqa: F401 - IMAGE_LORA, PEFT_LORA, adapter_kind: infer's API too
    IMAGE_LORA,
    PEFT_LORA,
    adapter_kind,
    attach_adapter,
    inference_device,
    load_inference_model,
)
from imagelora_dist.eval.run import NATIVE_MIN_NEW_TOKENS

RUNS_PREFIX = "runs:/"
RUN_PREFIX = "mlflow-run:"
MLFLOW_URL_PREFIX = "mlflow://"  # the same as mlflow-run:, as people write a run's address
ADAPTER_ARTIFACT = "adapter"  # where the pipeline logs the trained adapter (pipeline.run_pipeline)
TRAIN_STAGE = "train"
PROGRESS_INTERVAL_S = 5.0

Progress = Callable[[str], None]
Click = tuple[float, float]


class InferenceError(ImageLoRAError):
    """Bad inference input (an image, a JSONL line, an adapter source): one line, exit 2."""


@dataclass
class InferItem:
    """One question: the input record (written back with the answer), its image file and instruction."""

    record: dict[str, Any]
    image: Path
    instruction: str
    where: str  # how errors name it: "FILE:LINE" or "--image"


# --- adapter sources --------------------------------------------------------------------------------------


def parse_run_source(source: str) -> tuple[str, str | None] | None:
    """(run id, artifact path or None) of an MLflow adapter source; None for a local path."""
    if source.startswith(RUNS_PREFIX):
        run_id, _, artifact = source[len(RUNS_PREFIX) :].lstrip("/").partition("/")
        artifact = artifact.strip("/")
        if not run_id:
            raise InferenceError(f"--adapter {source!r}: expected runs:/<run_id>/<artifact path>")
        return run_id, artifact or None
    prefix = next((x for x in (RUN_PREFIX, MLFLOW_URL_PREFIX) if source.startswith(x)), None)
    if prefix is not None:
        run_id = source[len(prefix) :].strip()
        if not run_id or "/" in run_id:
            raise InferenceError(f"--adapter {source!r}: expected mlflow-run:<run_id>")
        return run_id, None
    return None


@contextlib.contextmanager
def resolve_adapter(source: str, tracking_uri: str) -> Iterator[Path]:
    """A local directory holding the adapter named by `source`; MLflow artifacts live in a temp dir
    for the duration of the block (the adapter is read into memory when it is loaded)."""
    parsed = parse_run_source(source)
    if parsed is None:
        path = Path(source).expanduser()
        adapter_kind(path)  # exists and is an adapter of a known kind
        yield path
        return
    run_id, artifact = parsed
    from imagelora_dist.run_queries import open_client

    client = open_client(tracking_uri)
    if artifact is None:
        run_id, artifact = _find_adapter_run(client, run_id, tracking_uri)
    else:
        _get_run(client, run_id, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="imagelora-adapter-") as tmp:
        try:
            with _no_progress_bar():  # an adapter is small; keep stderr to our own lines
                local = Path(client.download_artifacts(run_id, artifact, tmp))
        except Exception as exc:  # MlflowException, OSError: the artifact is not there or not readable
            raise InferenceError(
                f"--adapter {source}: cannot download artifact {artifact!r} of MLflow run {run_id} "
                f"({_first_line(exc)})"
            ) from None
        adapter_kind(local)
        yield local


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(key)
    os.environ.setdefault(key, "false")  # an explicit user setting wins
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)


def _get_run(client: Any, run_id: str, tracking_uri: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise InferenceError(f"MLflow run {run_id!r} not found in {tracking_uri}") from None
        raise


def _has_adapter(client: Any, run_id: str) -> bool:
    files = client.list_artifacts(run_id, ADAPTER_ARTIFACT)
    return any(Path(f.path).name == CONFIG_NAME for f in files)


def _find_adapter_run(client: Any, run_id: str, tracking_uri: str) -> tuple[str, str]:
    """The run (`run_id`, else its newest nested `train` run) that logged an `adapter/` artifact."""
    from imagelora_dist.tracking import PARENT_TAG, STAGE_TAG

    run = _get_run(client, run_id, tracking_uri)
    if _has_adapter(client, run_id):
        return run_id, ADAPTER_ARTIFACT
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{run_id}'",
        order_by=["attributes.start_time DESC"],
    )
    trains = [c for c in children if c.data.tags.get(STAGE_TAG, c.info.run_name) == TRAIN_STAGE]
    for child in trains:
        if _has_adapter(client, child.info.run_id):
            return child.info.run_id, ADAPTER_ARTIFACT
    hint = ""
    if any(c.data.tags.get("imagelora.skipped") == "true" for c in trains):
        hint = " (its train stage was skipped: the adapter is in the run that trained it)"
    raise InferenceError(
        f"MLflow run {run_id}: no {ADAPTER_ARTIFACT}/{CONFIG_NAME} artifact in it or in a nested "
        f"{TRAIN_STAGE!r} run{hint}"
    )


# --- model + adapter --------------------------------------------------------------------------------------


def model_config_from_adapter(cfg: RunConfig, adapter_dir: str | Path) -> RunConfig:
    """`cfg` with its model section taken from the adapter: its base checkpoint when that directory exists
    here, else a tiny model of its family (only Image-LoRA adapters record a family)."""
    config = json.loads((Path(adapter_dir) / CONFIG_NAME).read_text())
    base = str(config.get("base_model_name_or_path") or "")
    if base:
        if not (Path(base).expanduser() / "config.json").is_file():
            raise InferenceError(
                f"{adapter_dir}: the adapter was trained on {base!r}, which is not a model directory here; "
                "pass --model PATH"
            )
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": base})})
    family = config.get("family")
    if family:
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"family": family, "path": None})})
    return cfg


def with_model(cfg: RunConfig, model_path: str | None = None, family: str | None = None) -> RunConfig:
    """`cfg` with `--model PATH` (a local checkpoint) or `--family NAME` (a tiny model) applied."""
    if model_path and family:
        raise InferenceError(
            "give --model PATH (a local checkpoint) or --family NAME (a tiny model), not both"
        )
    if model_path:
        path = str(Path(model_path).expanduser().absolute())
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": path})})
    if family:
        from imagelora_dist.models import TINY_FAMILIES

        if family not in TINY_FAMILIES:
            raise InferenceError(f"--family {family!r}: unknown; tiny families: {', '.join(TINY_FAMILIES)}")
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"family": family, "path": None})})
    return cfg


def load_for_inference(
    cfg: RunConfig, adapter_dir: str | Path, device: str = "auto"
) -> tuple[nn.Module, Any, str]:
    """The configured model with the adapter in `adapter_dir` on `device` (eval/inference.py, the layer eval
    loads through too): (model, processor, adapter kind)."""
    try:
        inference_device(device)
    except ImageLoRAError as exc:
        raise InferenceError(f"--{exc}") from None
    loaded = load_inference_model(cfg.model, adapter_dir, device=device)
    return loaded.model, loaded.processor, loaded.kind


def model_family(model: nn.Module, default: str) -> str:
    """The loaded model's family, from its config's `model_type`; `default` when that names none."""
    from imagelora_dist.models.registry import family_for_model_type

    try:
        return family_for_model_type(str(getattr(model.config, "model_type", ""))).name
    except (AttributeError, ImageLoRAError):
        return default


# --- inputs -----------------------------------------------------------------------------------------------


def _pick(record: dict[str, Any], keys: Sequence[str]) -> tuple[str | None, Any]:
    for key in keys:
        if record.get(key) is not None:
            return key, record[key]
    return None, None


def _check_image(path: Path, where: str) -> None:
    """Fail early (before the model loads) on a missing file or one PIL cannot identify."""
    if not path.is_file():
        raise InferenceError(f"{where}: image not found: {path}")
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 (the header is read here)
    except Exception as exc:  # PIL raises many types for non-images
        raise InferenceError(f"{where}: unreadable image {path} ({_first_line(exc)})") from None


def load_image(item: InferItem) -> Image.Image:
    """The item's image decoded as RGB, with errors naming the file and the input line."""
    try:
        with Image.open(item.image) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise InferenceError(
                    f"{item.where}: image {item.image} is {im.width}x{im.height} (> {MAX_IMAGE_PIXELS} pixels)"
                )
            return im.convert("RGB")
    except InferenceError:
        raise
    except Exception as exc:
        raise InferenceError(f"{item.where}: unreadable image {item.image} ({_first_line(exc)})") from None


def single_item(image: str, instruction: str) -> InferItem:
    """The single-mode question (`--image`, `--instruction`), checked."""
    if not instruction or not instruction.strip():
        raise InferenceError("--instruction: empty")
    path = Path(image).expanduser()
    _check_image(path, "--image")
    return InferItem({"image": image, "instruction": instruction}, path, instruction.strip(), "--image")


def read_jsonl(path: str | Path, images_dir: str | Path | None = None) -> list[InferItem]:
    """The questions of a JSONL file, one object per line, every line checked before any work.

    Image field: `image` (or another name `imagelora-dist shard` accepts: img_filename, img_path, ...), a
    path relative to `images_dir` (default: the JSONL's folder) or absolute; instruction field:
    `instruction` (or text, query, task). Blank lines are skipped; errors name FILE:LINE.
    """
    path = Path(path)
    base = Path(images_dir) if images_dir is not None else path.parent
    if images_dir is not None and not base.is_dir():
        raise InferenceError(f"--images {base}: folder not found")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise InferenceError(f"{path}: JSONL file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InferenceError(f"{path}: unreadable ({_first_line(exc)})") from None
    items: list[InferItem] = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InferenceError(f"{where}: invalid JSON ({exc.msg}, character {exc.pos + 1})") from None
        if not isinstance(record, dict):
            raise InferenceError(f"{where}: expected a JSON object, got a JSON {type(record).__name__}")
        img_key, img_ref = _pick(record, IMAGE_KEYS)
        if img_key is None:
            raise InferenceError(f"{where}: missing field image ({' | '.join(IMAGE_KEYS)})")
        if not isinstance(img_ref, str) or not img_ref.strip():
            raise InferenceError(f"{where}: field {img_key!r} is not a file path")
        ins_key, instruction = _pick(record, INSTRUCTION_KEYS)
        if ins_key is None:
            raise InferenceError(f"{where}: missing field instruction ({' | '.join(INSTRUCTION_KEYS)})")
        if not isinstance(instruction, str) or not instruction.strip():
            raise InferenceError(f"{where}: field {ins_key!r} is not a non-empty string")
        image = base / Path(img_ref.strip()).expanduser()  # an absolute path replaces the base
        _check_image(image, where)
        items.append(InferItem(record, image, instruction.strip(), where))
    if not items:
        raise InferenceError(f"{path}: no records")
    return items


# --- answering --------------------------------------------------------------------------------------------


def item_task(item: InferItem) -> str:
    """The item's task: its record's `task` when that names one, else referring for a referring question
    (`data.tasks.referring_instruction`), else grounding."""
    return question_task(item.record, item.instruction)


def item_prompt(item: InferItem, answer_format: str = POINT) -> str:
    """The text asked: a grounding instruction plus `answer_format`'s output request (as the collator
    builds it in training); a referring question as it is."""
    return question_prompt(item_task(item), item.instruction, answer_format)


def image_size(item: InferItem) -> tuple[int, int]:
    """(width, height) of the item's screenshot, from its header."""
    try:
        with Image.open(item.image) as im:
            return im.size
    except Exception as exc:  # PIL raises many types for non-images
        raise InferenceError(f"{item.where}: unreadable image {item.image} ({_first_line(exc)})") from None


def answer_clicks(
    items: Sequence[InferItem],
    answers: Sequence[str],
    answer_format: str = POINT,
    processor: Any = None,
    max_pixels: int | None = None,
) -> list[Click | None]:
    """Each grounding answer parsed in `answer_format` to a click in pixels of its input screenshot (a box
    answer's centre), rounded to 0.1 px; None for a referring item or an answer without a click.

    `processor` and `max_pixels` give the image size the model saw (needed by qwen25_abs only)."""
    clicks: list[Click | None] = []
    for item, text in zip(items, answers, strict=True):
        if item_task(item) != GROUNDING:
            clicks.append(None)
            continue
        width, height = image_size(item)
        seen = model_image_size(processor, width, height, max_pixels) if answer_format == QWEN25_ABS else None
        click = click_pixels(text, {"width": width, "height": height}, answer_format, seen)
        clicks.append(None if click is None else (round(click[0], 1), round(click[1], 1)))
    return clicks


def answer_items(
    model: nn.Module,
    processor: Any,
    items: Sequence[InferItem],
    *,
    batch_size: int = 4,
    max_new_tokens: int = 24,
    max_pixels: int | None = None,
    progress: Progress | None = None,
    progress_interval_s: float = PROGRESS_INTERVAL_S,
    answer_format: str = POINT,
) -> list[str]:
    """Greedy answers, in order, `batch_size` images decoded and generated at a time (eval's generation);
    grounding questions asked in `answer_format` (`item_prompt`)."""
    if batch_size < 1:
        raise InferenceError(f"--batch-size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise InferenceError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    answers: list[str] = []
    start = last = time.monotonic()
    for first in range(0, len(items), batch_size):
        chunk = items[first : first + batch_size]
        decoded = [
            {"image": load_image(it), "record": {"instruction": item_prompt(it, answer_format)}}
            for it in chunk
        ]
        answers += generate_answers(
            model,
            processor,
            decoded,
            max_new_tokens=max_new_tokens,
            max_pixels=max_pixels,
            batch_size=batch_size,
        )
        now = time.monotonic()
        done = len(answers) == len(items)
        if progress is not None and len(items) > batch_size and (done or now - last >= progress_interval_s):
            progress(f"[infer] {len(answers)}/{len(items)} answered ({len(answers) / (now - start):.2f}/s)")
            last = now
    return answers


def write_answers(
    path: str | Path,
    items: Sequence[InferItem],
    answers: Sequence[str],
    key: str,
    clicks: Sequence[Click | None] | None = None,
) -> Path:
    """JSONL of each input record plus `key: answer` (and with `clicks`, `{key}_click: [x, y]` pixels or
    null), in input order; temp file then rename."""
    extra = [{} for _ in items] if clicks is None else [{f"{key}_click": _xy(c)} for c in clicks]
    lines = [
        json.dumps({**it.record, key: text, **more}, ensure_ascii=False) + "\n"
        for it, text, more in zip(items, answers, extra, strict=True)
    ]
    path = Path(path)
    atomic_write_bytes(path, "".join(lines).encode("utf-8"))
    return path


def _xy(click: Click | None) -> list[float] | None:
    return None if click is None else [click[0], click[1]]


def click_line(item: InferItem, click: Click | None) -> str:
    """The `[infer]` line that gives a grounding answer's click in pixels of the input screenshot."""
    width, height = image_size(item)
    if click is None:
        return f"[infer] click: none found in the answer ({width}x{height} screenshot)"
    return f"[infer] click: ({click[0]:g}, {click[1]:g}) px in the {width}x{height} screenshot"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def infer_command(cfg: RunConfig, args: argparse.Namespace, model_from_adapter: bool = False) -> int:
    """The `infer` subcommand: answer `--image`/`--instruction` (printed) or every line of `--jsonl`."""
    from imagelora_dist.tracking import resolve_tracking_uri

    if getattr(args, "input", None) is not None:
        return batch_infer_command(cfg, args, model_from_adapter)
    if args.jsonl is None and args.image is None:
        raise InferenceError(
            "give --image FILE --instruction TEXT, --jsonl FILE --output FILE, or --input SHARDS_OR_JSONL --out FILE"
        )
    if args.jsonl is not None:
        if args.image is not None or args.instruction is not None:
            raise InferenceError("--jsonl answers a file of questions: drop --image/--instruction")
        if not args.output:
            raise InferenceError("--jsonl needs --output FILE (the records with their answers)")
        items = read_jsonl(args.jsonl, args.images)
    else:
        if args.instruction is None:
            raise InferenceError("--image needs --instruction TEXT")
        items = [single_item(args.image, args.instruction)]
    if args.tracking_uri:
        cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": args.tracking_uri})})
    batch_size = cfg.eval.batch_size if args.batch_size is None else args.batch_size
    max_new_tokens = cfg.eval.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens
    if batch_size < 1 or max_new_tokens < 1:  # before any model is loaded
        raise InferenceError(
            f"--batch-size and --max-new-tokens must be >= 1, got {batch_size}, {max_new_tokens}"
        )
    with resolve_adapter(args.adapter, resolve_tracking_uri(cfg.tracking)) as adapter_dir:
        if model_from_adapter and not (args.model or args.family):
            cfg = model_config_from_adapter(cfg, adapter_dir)
        cfg = with_model(cfg, args.model, args.family)
        model, processor, kind = load_for_inference(cfg, adapter_dir, args.device)
    # `auto` follows the loaded model: a checkpoint's family is its own, whatever model.family says.
    answer_format = resolve_answer_format(
        cfg.data.answer_format, model_family(model, cfg.model.family), bool(cfg.model.path)
    )
    check_answer_format(answer_format, processor)
    if answer_format != POINT and args.max_new_tokens is None:
        # As eval does: eval.max_new_tokens is sized for "(x, y)", a native answer is longer.
        max_new_tokens = max(max_new_tokens, NATIVE_MIN_NEW_TOKENS)
    what = cfg.model.path or f"tiny {cfg.model.family} (seed {cfg.model.seed})"
    _stderr(
        f"[infer] {kind} adapter from {args.adapter} on {what}; {len(items)} question(s); "
        f"answer format {answer_format}"
    )
    answers = answer_items(
        model,
        processor,
        items,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        max_pixels=cfg.data.max_pixels,
        progress=_stderr,
        answer_format=answer_format,
    )
    clicks = answer_clicks(items, answers, answer_format, processor, cfg.data.max_pixels)
    if args.jsonl is None:
        print(answers[0])
        if item_task(items[0]) == GROUNDING:
            _stderr(click_line(items[0], clicks[0]))
        return 0
    # `point` output records stay as they were; a native format's coordinates need the parse to be used.
    out = write_answers(
        args.output, items, answers, args.answer_key, None if answer_format == POINT else clicks
    )
    print(f"[infer] wrote {len(answers)} answers to {out}")
    return 0


def batch_infer_command(cfg: RunConfig, args: argparse.Namespace, model_from_adapter: bool = False) -> int:
    """`infer --input SHARDS_OR_JSONL --out FILE`: every question answered on Ray workers (eval's backends:
    replicas, device map or a ZeRO-3 group), chunks kept beside the output and reused by a re-run, lines in input order; a bad
    record gets one line in the errors file (`--errors`, default OUT.errors.jsonl), never a crash."""
    from imagelora_dist.eval.batch_infer import check_input
    from imagelora_dist.eval.distributed import infer_on_workers
    from imagelora_dist.pipeline import absolute_paths, resolve_eval_backend
    from imagelora_dist.ray_runtime import ensure_ray
    from imagelora_dist.tracking import resolve_tracking_uri

    if not args.out:
        raise InferenceError("--input needs --out FILE (one JSON line per input, in input order)")
    if args.image is not None or args.instruction is not None or args.jsonl is not None:
        raise InferenceError("--input answers a whole input: drop --image/--instruction/--jsonl")
    kind = check_input(args.input)
    if args.tracking_uri:
        cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": args.tracking_uri})})
    updates = {
        k: v for k, v in (("batch_size", args.batch_size), ("max_new_tokens", args.max_new_tokens)) if v
    }
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update=updates)})
    out = Path(args.out).expanduser().absolute()
    errors = (
        Path(args.errors).expanduser().absolute()
        if args.errors
        else out.with_name(out.name + ".errors.jsonl")
    )
    path = args.input if "://" in args.input else str(Path(args.input).expanduser().absolute())
    images = str(Path(args.images).expanduser().absolute()) if args.images else None
    source = {"kind": kind, "path": path, "images": images, "answer_key": args.answer_key}
    with resolve_adapter(args.adapter, resolve_tracking_uri(cfg.tracking)) as adapter_dir:
        if model_from_adapter and not (args.model or args.family):
            cfg = model_config_from_adapter(cfg, adapter_dir)
        cfg = absolute_paths(with_model(cfg, args.model, args.family))
        started = ensure_ray(cfg, _stderr)
        try:
            backend = resolve_eval_backend(cfg)
            _stderr(f"[infer] {args.input} ({kind}) with the adapter from {args.adapter}; backend {backend}")
            if backend == "zero3":
                from imagelora_dist.eval.zero3 import infer_zero3

                answered, bad = infer_zero3(cfg, source, Path(adapter_dir), out, errors, _stderr)
            else:
                answered, bad = infer_on_workers(
                    cfg, source, Path(adapter_dir), out, errors, backend, _stderr
                )
        finally:
            if started:
                import ray

                ray.shutdown()
    print(f"[infer] wrote {answered} answers to {out}" + (f"; {bad} bad inputs in {errors}" if bad else ""))
    return 0
