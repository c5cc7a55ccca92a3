"""`shard` at scale: input blocks converted independently (in this process or on Ray Data), a manifest,
re-runs that convert only what is missing, and `--verify`.

The driver cuts the input into blocks of `block_rows` rows (ingest_blocks.py) and hands them out; it
never holds a record. Block i becomes shard `{prefix}-{i:06d}.tar` (and `-01`, `-02`... when its samples
exceed `max_count` or `max_size`) with keys `{i:06d}-{j:06d}`, so the output is byte-identical for any
number of workers. Every shard is written whole (a temp name then a rename locally; one PUT on an object
store). `manifest.json` records per block its rows, and per shard its samples, targets, bytes and sha256,
plus the block's skipped records by reason and duplicate screenshots; it is rewritten as blocks finish,
and `index.json` is written last, so a reader never sees a partial set. A re-run with the same input and
options keeps every shard that matches the manifest (size and sha256, checked on the workers) and
converts the rest; `verify` checks a set against its manifest.

Within a block: record ids must be unique (ids are not compared across blocks), duplicate screenshots
(same pixels under another name, screen_groups.py) are counted, and with `group_by_screen` every distinct
screenshot is stored once with all its targets.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imagelora_dist.data.convert import SHOW_PROBLEMS, ConversionReport, ConvertOptions, Problem, row_samples
from imagelora_dist.data.ingest_blocks import Block, block_rows, plan_blocks
from imagelora_dist.data.ingest_records import ImageLoader, Skip, image_ref
from imagelora_dist.data.ingest_sources import Row
from imagelora_dist.data.screen_groups import Screens
from imagelora_dist.data.shards import (
    INDEX_NAME,
    ShardIndex,
    ShardInfo,
    is_url,
    open_url_stream,
    shard_bytes,
    shard_name,
    tar_archive_size,
    tar_member_size,
    url_filesystem,
    write_bytes_at,
)
from imagelora_dist.errors import ImageLoRAError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "imagelora-shard-manifest"
# Blocks between manifest rewrites (what a killed run can keep): at least SAVE_EVERY, and a tenth of those
# already saved, so the manifest's rewrites add up to a few times its final size, not its square
# (OS-Atlas at 1,000 rows a block: 13k blocks).
SAVE_EVERY = 32


@dataclass(frozen=True)
class BlockOptions:
    """What decides a block's shards (a manifest made with other options is not reused)."""

    convert: ConvertOptions
    block_rows: int = 1000
    group_by_screen: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the manifest and the index's meta)."""
        return {
            **asdict(self.convert),
            "block_rows": self.block_rows,
            "group_by_screen": self.group_by_screen,
        }


def join(base: str, name: str) -> str:
    """`base/name` for a local folder or a URL prefix."""
    return f"{str(base).rstrip('/')}/{name}"


def read_bytes_at(location: str) -> bytes | None:
    """A whole file at a local path or URL, or None when there is none."""
    try:
        if not is_url(location):
            return Path(location.removeprefix("file://")).read_bytes()
        with open_url_stream(location) as f:
            return f.read()
    except (FileNotFoundError, OSError):
        return None


def shard_problem(out: str, shard: Mapping[str, Any]) -> str | None:
    """Why a shard of the manifest does not match what is stored (missing, size, sha256), or None."""
    data = read_bytes_at(join(out, shard["url"]))
    if data is None:
        return f"{shard['url']}: missing"
    if len(data) != shard["bytes"]:
        return f"{shard['url']}: {len(data)} bytes, the manifest says {shard['bytes']}"
    if hashlib.sha256(data).hexdigest() != shard["sha256"]:
        return f"{shard['url']}: sha256 differs from the manifest"
    return None


def convert_block(
    block: Block, options: BlockOptions, image_dir: str, out: str, kept: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Convert one block into its shards under `out` and return its manifest entry; with `kept` (the
    entry of an earlier run) return that instead when all its shards still match."""
    if kept is not None and not any(shard_problem(out, s) for s in kept["shards"]):
        return {**kept, "kept": True}
    images = ImageLoader(Path(image_dir))
    screens = Screens()
    samples: list[dict[str, Any]] = []
    problems: list[list[Any]] = []
    skipped: Counter[str] = Counter()
    seen_ids: set[str] = set()
    records = written = 0

    def skip(row: Row, reason: str, element: int | None) -> None:
        skipped[reason.split(":", 1)[0]] += 1
        if len(problems) < SHOW_PROBLEMS:
            problems.append([block.label, row.unit, row.number, reason, element])

    for row in block_rows(block):
        records += 1
        for result in row_samples(row, images, options.convert, stem=block.stem, source=block.name,
                                  data_source=block.data_source):  # fmt: skip
            if isinstance(result, Skip):
                skip(row, str(result), result.element)
                continue
            element, sample = result
            sample_id = sample["json"]["id"]
            if sample_id in seen_ids:
                skip(row, f"duplicate id: {sample_id!r}", element)
                continue
            seen_ids.add(sample_id)
            _, ref = image_ref(row.record)
            name = ref.strip() if isinstance(ref, str) else "sha256:" + hashlib.sha256(ref).hexdigest()
            try:
                screens.add(sample, name)
            except (
                OSError,
                ValueError,
            ) as exc:  # load_image_bytes decoded it; a second decode failing is odd
                skip(row, f"unreadable image: {name} ({exc})", element)
                continue
            written += 1
            if not options.group_by_screen:
                samples.append(sample)
    if options.group_by_screen:
        samples = list(screens.groups.values())
    shards = _write_block(block, samples, options, out)
    return {
        "block": block.spec(),
        "records": records,
        "written": written,
        "screens": len(screens.groups),
        "duplicates": screens.duplicates,
        "skipped": dict(sorted(skipped.items())),
        "shards": shards,
        "problems": problems,
    }


def _size(sample: Mapping[str, Any]) -> int:
    return sum(
        tar_member_size(len(json.dumps(v).encode("utf-8")) if k == "json" else len(v))
        for k, v in sample.items()
        if k != "__key__"
    )


def _write_block(
    block: Block, samples: list[dict[str, Any]], options: BlockOptions, out: str
) -> list[dict[str, Any]]:
    """Cut the block's samples into shards by max_count and max_size, write them, describe them."""
    parts: list[list[dict[str, Any]]] = []
    members = 0
    for j, sample in enumerate(samples):
        size = _size(sample)
        if not parts or (
            len(parts[-1]) + 1 > options.convert.max_count
            or tar_archive_size(members + size) > options.convert.max_size
        ):
            parts.append([])
            members = 0
        sample["__key__"] = f"{block.index:06d}-{j:06d}"
        parts[-1].append(sample)
        members += size
    shards = []
    for k, part in enumerate(parts):
        name = shard_name(options.convert.prefix, block.index)
        if k:
            name = name.removesuffix(".tar") + f"-{k:02d}.tar"
        data, count = shard_bytes(part)
        write_bytes_at(join(out, name), data)
        targets = sum(len(s["json"].get("targets", [None])) for s in part)
        shards.append(
            {
                "url": name,
                "samples": count,
                "targets": targets,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    return shards


# --- the driver ------------------------------------------------------------------------------------


def convert_blocks(
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: BlockOptions,
    *,
    image_dir: str | os.PathLike | None = None,
    workers: int = 1,
    use_ray: bool = False,
    overwrite: bool = False,
    progress: Callable[[str], Any] | None = print,
) -> ConversionReport:
    """Convert `input_path` (a file or folder, local or URL) into shards, manifest.json and index.json in
    `out_dir` (local or URL); on Ray Data with `use_ray` (at most `workers` blocks at a time), else here."""
    say = progress or (lambda _msg: None)
    source, out = str(input_path), str(out_dir).rstrip("/")
    if image_dir is not None and not Path(image_dir).is_dir():
        raise ImageLoRAError(f"{image_dir}: image folder not found")
    if not is_url(out) and Path(out).exists() and not Path(out).is_dir():
        raise ImageLoRAError(f"{out}: output path exists and is not a folder")
    blocks = plan_blocks(source, options.block_rows)
    if image_dir is None:
        image_dir = source if not is_url(source) and Path(source).is_dir() else str(Path(source).parent)
    kept = _earlier_entries(out, source, options, overwrite)
    old_urls = _listed_shards(out)
    if not is_url(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    _drop_index(out)  # before any shard changes: no reader may mix an old index with new shards
    tasks = [(b, kept.get(_block_key(b.spec()))) for b in blocks]
    say(f"{source}: {len(blocks)} blocks of {options.block_rows} rows ({sum(1 for _, k in tasks if k)} kept "
        f"from an earlier run if they still match){' on Ray Data' if use_ray else ''}")  # fmt: skip
    entries: dict[int, dict[str, Any]] = {}
    errors: dict[int, str] = {}  # a bad block does not stop the others: a re-run then converts only it
    run = (
        _run_ray(tasks, options, str(image_dir), out, workers)
        if use_ray
        else _run_here(tasks, options, str(image_dir), out)
    )
    saved = 0
    try:
        for entry in run:
            if "error" in entry:
                errors[entry["block"]["index"]] = entry["error"]
                continue
            entries[entry["block"]["index"]] = entry
            if len(entries) - saved >= max(SAVE_EVERY, saved // 10):
                _save_manifest(out, source, options, entries)
                saved = len(entries)
                say(f"{len(entries)} of {len(blocks)} blocks converted")
    finally:
        if entries:
            _save_manifest(out, source, options, entries)
    if errors:
        first = min(errors)
        more = f" (and {len(errors) - 1} more blocks)" if len(errors) > 1 else ""
        raise ImageLoRAError(f"{errors[first]}{more}; a re-run converts only the blocks not done")
    report = _report(entries, options)
    if report.written == 0:
        first = report.problems[0] if report.problems else None
        raise ImageLoRAError(
            f"{source}: no valid records ({report.total_records} records, {report.skipped} skipped"
            + (f"; first: {first.where}: {first.reason}" if first else "")
            + ")"
        )
    for problem in report.problems[:SHOW_PROBLEMS]:
        say(f"{problem.where}: skipped: {problem.reason}")
    index = ShardIndex(
        shards=[
            ShardInfo(s["url"], s["samples"], s["bytes"])
            for i in sorted(entries)
            for s in entries[i]["shards"]
        ],
        meta={
            "created_by": "imagelora-dist shard",
            "source": Path(source).name,
            "options": options.to_dict(),
            "skipped": report.skipped,
            "targets": report.written,
            "duplicates": report.duplicates,
            "group_by_screen": options.group_by_screen,
        },
    )
    write_bytes_at(join(out, INDEX_NAME), (json.dumps(index.to_dict(), indent=2) + "\n").encode())
    if not is_url(out):  # an overwritten set's shards that the new one does not have
        for url in old_urls - {s.url for s in index.shards}:
            (Path(out) / url).unlink(missing_ok=True)
    report.index = index
    say(report.summary())
    return report


def _block_key(spec: Mapping[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True)


def _read_manifest(out: str) -> dict[str, Any] | None:
    data = read_bytes_at(join(out, MANIFEST_NAME))
    if data is None:
        return None
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ImageLoRAError(f"{join(out, MANIFEST_NAME)}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ImageLoRAError(f"{join(out, MANIFEST_NAME)}: not a {MANIFEST_FORMAT} (format field)")
    return manifest


def _earlier_entries(out: str, source: str, options: BlockOptions, overwrite: bool) -> dict[str, Any]:
    """Block entries of an earlier run into `out` that may be kept: same input, same options."""
    manifest = _read_manifest(out)
    if manifest is None:
        if read_bytes_at(join(out, INDEX_NAME)) is not None and not overwrite:
            raise ImageLoRAError(f"{out}: already holds {INDEX_NAME} (pass overwrite to replace it)")
        return {}
    same = manifest.get("input") == source and manifest.get("options") == options.to_dict()
    if not same:
        if not overwrite:
            raise ImageLoRAError(
                f"{join(out, MANIFEST_NAME)}: made from another input or with other options "
                "(pass overwrite to replace it)"
            )
        return {}
    return {_block_key(e["block"]): e for e in manifest.get("blocks", [])}


def _listed_shards(out: str) -> set[str]:
    """Plain shard names of the index and manifest already in `out` (what an overwrite replaces)."""
    names: set[str] = set()
    try:
        names |= {s.url for s in ShardIndex.read(out).shards}
    except ImageLoRAError:
        pass
    try:
        names |= {s["url"] for e in (_read_manifest(out) or {}).get("blocks", []) for s in e["shards"]}
    except ImageLoRAError:
        pass
    return {n for n in names if "/" not in n and "\\" not in n and ":" not in n and not n.startswith(".")}


def _drop_index(out: str) -> None:
    if is_url(out):
        fs, path = url_filesystem(join(out, INDEX_NAME))
        try:
            fs.delete_file(path)
        except (FileNotFoundError, OSError):
            pass
    else:
        (Path(out) / INDEX_NAME).unlink(missing_ok=True)


def _save_manifest(out: str, source: str, options: BlockOptions, entries: Mapping[int, Any]) -> None:
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "input": source,
        "options": options.to_dict(),
        "blocks": [{k: v for k, v in entries[i].items() if k != "kept"} for i in sorted(entries)],
    }
    write_bytes_at(join(out, MANIFEST_NAME), (json.dumps(manifest, indent=1) + "\n").encode())


def _task(block: Block, kept: Any, options: BlockOptions, image_dir: str, out: str) -> dict[str, Any]:
    """One block's entry, or {"error": ...} for an input error (sent back as data, not as an exception)."""
    try:
        return convert_block(block, options, image_dir, out, kept)
    except ImageLoRAError as exc:
        return {"error": str(exc), "block": block.spec()}


def _run_here(
    tasks: list[tuple[Block, Any]], options: BlockOptions, image_dir: str, out: str
) -> Iterator[Any]:
    for block, kept in tasks:
        yield _task(block, kept, options, image_dir, out)


def _run_ray(
    tasks: list[tuple[Block, Any]], options: BlockOptions, image_dir: str, out: str, workers: int
) -> Iterator[Any]:
    """The blocks' entries from Ray Data tasks (as they finish), at most `workers` blocks at a time."""
    import ray.data

    items = [{"task": json.dumps([b.spec(), k])} for b, k in tasks]

    def run_one(row: dict[str, Any]) -> dict[str, Any]:
        spec, kept = json.loads(row["task"])
        return {"entry": json.dumps(_task(Block(**spec), kept, options, image_dir, out))}

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map(
        run_one, compute=ray.data.TaskPoolStrategy(size=max(1, workers)), num_cpus=1
    )
    for row in ds.iter_rows():
        yield json.loads(row["entry"])


def _report(entries: Mapping[int, Mapping[str, Any]], options: BlockOptions) -> ConversionReport:
    report = ConversionReport(strict=options.convert.strict)
    reasons: Counter[str] = Counter()
    for i in sorted(entries):
        e = entries[i]
        report.total_records += e["records"]
        report.written += e["written"]
        report.duplicates += e["duplicates"]
        report.screens += e["screens"]
        reasons.update(e["skipped"])
        report.problems += [Problem(*p) for p in e["problems"]]
    report.skipped = sum(reasons.values())
    report.reasons = reasons
    report.grouped = options.group_by_screen
    return report


def verify(out_dir: str | os.PathLike) -> tuple[int, list[str]]:
    """(shards checked, one line per shard that does not match `manifest.json` or is not in the index)."""
    out = str(out_dir).rstrip("/")
    manifest = _read_manifest(out)
    if manifest is None:
        raise ImageLoRAError(f"{join(out, MANIFEST_NAME)}: no manifest to verify against")
    shards = [s for e in manifest.get("blocks", []) for s in e["shards"]]
    bad = [p for p in (shard_problem(out, s) for s in shards) if p]
    try:
        listed = {s.url for s in ShardIndex.read(out).shards}
    except ImageLoRAError as exc:
        return len(shards), [*bad, str(exc)]
    bad += [f"{s['url']}: not in {INDEX_NAME}" for s in shards if s["url"] not in listed]
    return len(shards), bad
