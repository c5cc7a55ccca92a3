"""Data-parallel eval on Ray: a model replica per worker, chunks of samples handed out, merged in order.

`eval.workers` actors (default: one per GPU of the cluster, 2 on a CPU-only one) each load the model with
its adapter once (eval/inference.py; `eval.backend: device_map` spreads a replica over a worker's GPUs)
and read the chunks they are given from the shards themselves (eval/chunks.py). The driver holds only the
plan: chunk numbers, and for a stratified sample the chosen positions; a worker that cannot read the
shards (a driver-local path on another node) gets each chunk's raw samples with the request, and only
those. Chunks go out one at a time as workers free up; the batch of a failed worker goes back in the queue
and that worker is benched until Ray has restarted it (its node may be gone); once the queue is empty an
idle worker takes a copy of a chunk still running elsewhere, the first copy back counts.

Every finished chunk is written to the chunk store at once (`eval.storage`, default <output_dir>/eval),
under a key of everything the predictions depend on, so a lost node costs only its unfinished chunks and a
re-run reuses what is there. Samples are generated with the same code, batch boundaries and thread count
wherever they run, and the driver merges the chunks in sample order (`eval.run.summarize`), so
eval_report.json is byte-identical for any worker count.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray

from imagelora_dist.config import RunConfig
from imagelora_dist.data.answer_formats import resolve_answer_format
from imagelora_dist.data.drops import DataLossError
from imagelora_dist.data.reader import decode_samples
from imagelora_dist.data.shards import ShardIndex, index_bytes, index_location, is_url
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.eval.chunks import ChunkStore, PositionReader
from imagelora_dist.eval.hand_out import TEXT_ITEM, TEXT_NAME, EvalFailed, EvalHandOut, Plan
from imagelora_dist.eval.sampling import stratified_positions, stratum_of
from imagelora_dist.faults import FAULT_MARKER_ENV, crash_if
from imagelora_dist.hand_out import workers_that_fit
from imagelora_dist.ray_runtime import multi_node

Log = Callable[[str], None]

# Fault injection (imagelora_dist.faults): the eval worker dies when it starts this chunk.
FAULT_CHUNK_ENV = "IMAGELORA_FAULT_EVAL_CHUNK"
# Straggler drill: "W:S" makes eval worker W sleep S seconds before each chunk.
SLOW_WORKER_ENV = "IMAGELORA_FAULT_EVAL_SLOW"
# How long the hand-out waits for a failed worker to come back when no other worker is scoring.
STALL_S = 120.0


def index_digest(shards: str) -> str:
    """sha256 of the shard set's index.json bytes, read where the reader reads it (local or URL)."""
    try:
        return hashlib.sha256(index_bytes(shards)).hexdigest()
    except OSError as exc:
        raise ImageLoRAError(f"eval shards: cannot read {index_location(shards)} ({exc})") from None


BIG_FILE = 256 << 20


def dir_digest(path: Path | None) -> str | None:
    """sha256 over a directory's files (names and bytes; files over BIG_FILE by size and mtime): the
    adapter's identity, or a full checkpoint's."""
    if path is None:
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        stat = f.stat()
        if stat.st_size > BIG_FILE:  # a full checkpoint's weights: named by size and mtime, not read
            h.update(f"{stat.st_size}\0{stat.st_mtime_ns}".encode())
        else:
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def eval_key(
    cfg: RunConfig, data_id: str, adapter_id: str | None, positions: Sequence[int], backend: str
) -> str:
    """The chunk store key: everything the stored predictions depend on (not the worker count)."""
    if isinstance(positions, range):
        chosen = f"range({positions.start},{positions.stop})"
    else:
        chosen = hashlib.sha256(",".join(map(str, positions)).encode()).hexdigest()
    parts = {
        "model": cfg.model.model_dump(mode="json"),
        "method": cfg.train.method,
        "adapter": adapter_id,
        "data": data_id,
        "positions": chosen,
        "max_pixels": cfg.data.max_pixels,
        "answer_format": resolve_answer_format(
            cfg.data.answer_format, cfg.model.family, bool(cfg.model.path)
        ),
        "eval": cfg.eval.model_dump(
            include={"max_new_tokens", "batch_size", "chunk_size", "text_task_problems"}
        ),
        "seed": cfg.data.seed,
        "backend": backend,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def straggle(worker: int) -> None:
    """Sleep as SLOW_WORKER_ENV asks, when it names this worker."""
    spec = os.environ.get(SLOW_WORKER_ENV, "")
    if spec.partition(":")[0] == str(worker):
        time.sleep(float(spec.partition(":")[2] or 0))


def decode_chunk(raws: list[tuple[int, dict | None, str]]) -> tuple[list[dict], dict[str, int], list[str]]:
    """The decodable samples of a chunk, and what was dropped: counts by reason, the first reasons."""
    decoded, dropped, reasons = [], {}, []
    for position, raw, why in raws:
        if raw is not None:
            try:
                decoded.extend(decode_samples(raw))  # a screen-grouped sample: all its targets
                continue
            except (KeyError, ValueError, OSError) as exc:  # PIL and JSON errors are ValueError/OSError
                why = f"undecodable: sample {raw.get('__key__')} ({str(exc).splitlines()[0][:200]})"
        reason = why.partition(":")[0] or "missing"
        dropped[reason] = dropped.get(reason, 0) + 1
        reasons.append(f"position {position}: {why}")
    return decoded, dropped, reasons[:5]


def score_decoded(loaded: Any, cfg: RunConfig, decoded: list[dict]) -> list[dict[str, Any]]:
    """The scored entries of decoded samples, `eval.batch_size` per generate call."""
    from imagelora_dist.eval.run import score_samples

    fmt = resolve_answer_format(cfg.data.answer_format, cfg.model.family, bool(cfg.model.path))
    return score_samples(loaded.model, loaded.processor, decoded, max_pixels=cfg.data.max_pixels,
                         batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
                         answer_format=fmt)  # fmt: skip


def score_chunk(loaded: Any, cfg: RunConfig, raws: list[tuple[int, dict | None, str]]) -> dict[str, Any]:
    """Decode and score one chunk's raw samples: the scored entries in order, and what was dropped, by reason."""
    decoded, dropped, reasons = decode_chunk(raws)
    return {"scored": score_decoded(loaded, cfg, decoded), "dropped": dropped, "reasons": reasons}


def text_results(loaded: Any, cfg: RunConfig) -> dict[str, Any]:
    """Text preservation and the text task of a loaded model (the same on every worker)."""
    from imagelora_dist.eval.text_preservation import default_text_prompts, text_max_abs_logit_diff

    out: dict[str, Any] = {
        "text_max_abs_logit_diff": text_max_abs_logit_diff(
            loaded.model, loaded.processor, default_text_prompts(), loaded.disabled
        )
    }
    if cfg.eval.text_task_problems:
        from imagelora_dist.eval.text_task import text_task_scores

        out.update(text_task_scores(loaded.model, loaded.processor, loaded.disabled,
                                    count=cfg.eval.text_task_problems, seed=cfg.data.seed,
                                    batch_size=cfg.eval.batch_size))  # fmt: skip
    return out


def open_source(source: dict[str, Any], trust_index_urls: bool = False) -> Any:
    """A reader of the work's inputs by position: shard samples (eval, batch inference) or JSONL lines."""
    if source["kind"] == "jsonl":
        from imagelora_dist.eval.batch_infer import JsonlSource

        return JsonlSource(source["path"], source.get("images"))
    return PositionReader(source["path"], trust_index_urls=trust_index_urls)


def source_digest(source: dict[str, Any]) -> str:
    """The content identity of the inputs: the shard index's bytes, or the JSONL file's."""
    if source["kind"] == "jsonl":
        from imagelora_dist.eval.batch_infer import jsonl_digest

        return jsonl_digest(source["path"])
    return index_digest(source["path"])


def question_items(source: dict[str, Any], raws: list) -> list[tuple[int, dict[str, Any] | None, str]]:
    """A chunk's raw inputs as questions (a shard sample's record and image bytes; JSONL items as read)."""
    from imagelora_dist.eval.batch_infer import shard_question

    items = []
    for position, raw, why in raws:
        if raw is not None and source["kind"] == "shards":
            try:
                raw = shard_question(raw)
            except (KeyError, ValueError) as exc:
                raw, why = None, f"sample {position}: {exc}"
        items.append((position, raw, why or "missing"))
    return items


def answer_settings(cfg: RunConfig, source: dict[str, Any]) -> dict[str, Any]:
    """The generation settings of batch inference (eval's, with the output's answer key)."""
    fmt = resolve_answer_format(cfg.data.answer_format, cfg.model.family, bool(cfg.model.path))
    return {"answer_format": fmt, "max_pixels": cfg.data.max_pixels, "batch_size": cfg.eval.batch_size,
            "max_new_tokens": cfg.eval.max_new_tokens, "answer_key": source.get("answer_key", "answer")}  # fmt: skip


def answer_inputs(loaded: Any, cfg: RunConfig, source: dict[str, Any], raws: list) -> dict[str, Any]:
    """Batch inference on a chunk's inputs: answered lines and error lines (eval/batch_infer.py)."""
    from imagelora_dist.eval.batch_infer import answer_prepared, prepare_questions

    settings = answer_settings(cfg, source)
    good, errors = prepare_questions(question_items(source, raws), settings["answer_format"])
    return {"lines": answer_prepared(loaded, good, **settings), "errors": errors}


class EvalActor:
    """One model replica with its adapter, reading chunks of the inputs by position: eval's shards, or batch
    inference's shards / JSONL (`source["mode"]`)."""

    def __init__(self, cfg: dict[str, Any], threads: int, source: dict[str, Any], data_id: str, adapter: Any,
                 worker: int, device_map: str | None = None) -> None:  # fmt: skip
        import torch

        from imagelora_dist.eval.inference import load_inference_model

        torch.set_num_threads(max(1, threads))
        self.cfg = RunConfig.model_validate(cfg)
        self.worker, self.source = worker, source
        self._scratch = tempfile.TemporaryDirectory(prefix="imagelora-eval-")
        adapter_dir = adapter_here(adapter, Path(self._scratch.name))
        self.loaded = load_inference_model(self.cfg.model, adapter_dir, device_map=device_map)
        self.reader: Any = None
        try:  # this node reads the inputs itself only if it sees the same content there
            if source_digest(source) == data_id:
                self.reader = open_source(source, self.cfg.data.trust_index_urls)
        except (ImageLoRAError, OSError):
            self.reader = None

    def ready(self) -> tuple[int, bool]:
        """(process id, whether this worker reads the inputs itself) once the model is loaded."""
        return os.getpid(), self.reader is not None

    def score(self, item: int, positions: list[int], raws: list | None = None) -> tuple[dict[str, Any], int]:
        """The result of work item `item` (a chunk, or TEXT_ITEM) and this worker's number."""
        if item == TEXT_ITEM:
            return text_results(self.loaded, self.cfg), self.worker
        crash_if(FAULT_CHUNK_ENV, str(item))
        straggle(self.worker)
        if raws is None:
            if self.reader is None:
                raise EvalFailed(f"eval worker {self.worker} cannot read the inputs and got none")
            raws = self.reader.read(positions)
        if self.source.get("mode") == "infer":
            result = answer_inputs(self.loaded, self.cfg, self.source, raws)
        else:
            result = score_chunk(self.loaded, self.cfg, raws)
        return {"chunk": item, "positions": positions, **result}, self.worker


def adapter_here(adapter: Any, scratch: Path) -> Path | None:
    """The adapter directory on this node: the path sent, or the files sent, unpacked into `scratch`."""
    if adapter is None or isinstance(adapter, str):
        return None if adapter is None else Path(adapter)
    for name, data in adapter.items():
        target = (scratch / "adapter" / name).resolve()
        if not target.is_relative_to((scratch / "adapter").resolve()):
            raise ImageLoRAError(f"refusing to unpack {name!r} outside {scratch}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return scratch / "adapter"


def adapter_payload(adapter_dir: Path | None, log: Log) -> str | dict[str, bytes] | None:
    """What workers get to find the adapter: its path, or on a multi-node cluster (a node may not see the
    driver's disk) its files, which travel with the request (an adapter is kilobytes; a full checkpoint
    is the whole model: put it on shared storage)."""
    if adapter_dir is None:
        return None
    if is_url(str(adapter_dir)) or not multi_node():
        return str(adapter_dir)
    files = {
        str(f.relative_to(adapter_dir)): f.read_bytes() for f in sorted(adapter_dir.rglob("*")) if f.is_file()
    }
    log(f"[eval] sending the adapter with the workers ({sum(map(len, files.values())) / 2**20:.1f} MB)")
    return files


def default_workers(cfg: RunConfig) -> int:
    """eval.workers, else one per GPU of the cluster (device_map: per gpus_per_worker GPUs), else 2."""
    if cfg.eval.workers:
        return cfg.eval.workers
    gpus = ray.cluster_resources().get("GPU", 0)
    return max(1, int(gpus)) if gpus >= 1 else 2


def worker_resources(cfg: RunConfig, backend: str) -> tuple[float, float]:
    """(CPUs, GPUs) per eval worker: a replica takes one GPU, a device-map replica gpus_per_worker."""
    gpus = cfg.ray.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    if backend == "replicas" and gpus > 1:
        gpus = 1.0
    return cfg.ray.cpus_per_worker, gpus


def evaluate_on_workers(
    cfg: RunConfig, shards: str, adapter_dir: Path | None, backend: str, log: Log = print
) -> dict[str, Any]:
    """The eval report of `shards` scored by `eval.workers` replicas (`backend` replicas or device_map)."""
    data_id = index_digest(shards)
    total = ShardIndex.read(shards).total_samples
    positions = sample_positions(cfg, shards, total, log)
    plan = make_plan(cfg, data_id, dir_digest(adapter_dir), positions, backend)
    todo = todo_items(plan, log)
    fresh: dict[int, dict[str, Any]] = {}
    rate = float("nan")
    if todo:
        source = {"mode": "eval", "kind": "shards", "path": shards}
        fresh, rate = score_on_actors(cfg, source, data_id, adapter_dir, backend, plan, todo, log)
    return {**merge(plan, fresh, total, cfg, log), "_samples_per_s": rate}


def score_on_actors(cfg: RunConfig, source: dict[str, Any], data_id: str, adapter_dir: Path | None, backend: str,
                    plan: Plan, todo: list[int], log: Log) -> tuple[dict[int, dict[str, Any]], float]:  # fmt: skip
    """Score (or answer) the work items `todo` on replicas; (results by item, samples per second)."""
    cpus, gpus = worker_resources(cfg, backend)
    n_workers = workers_that_fit(min(default_workers(cfg), len(todo)), cpus, gpus, log, stage="eval")
    adapter = adapter_payload(adapter_dir, log)
    options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": cfg.ray.max_retries,
                               "max_task_retries": 0}  # fmt: skip
    fault = {
        k: os.environ[k] for k in (FAULT_CHUNK_ENV, FAULT_MARKER_ENV, SLOW_WORKER_ENV) if k in os.environ
    }
    if fault:
        options["runtime_env"] = {"env_vars": fault}
    actor_cls = ray.remote(EvalActor).options(**options)
    cfg_dict = cfg.model_dump(mode="json")
    device_map = "auto" if backend == "device_map" else None
    actors = [actor_cls.remote(cfg_dict, int(cpus), source, data_id, adapter, w, device_map) for w in range(n_workers)]  # fmt: skip
    driver_reader: Any = None
    try:
        readable = [r for _, r in ray.get([a.ready.remote() for a in actors])]
        if not all(readable):
            driver_reader = open_source(source, cfg.data.trust_index_urls)
            log(f"[eval] {readable.count(False)} of {n_workers} workers cannot read {source['path']}: their "
                "chunks' inputs are sent with them")  # fmt: skip
        log(f"[eval] {n_workers} workers ({cpus:g} CPU, {gpus:g} GPU each, backend {backend}); "
            f"{len(plan.positions)} samples in {plan.chunks} chunks of {plan.chunk_size}")  # fmt: skip
        hand_out = EvalHandOut(actors, readable, plan, driver_reader, todo, cfg.ray.max_retries,
                               max(STALL_S, cfg.ray.autoscale_wait_s), log)  # fmt: skip
        fresh, per_worker, seconds = hand_out.run()
    finally:
        for a in actors:
            ray.kill(a)
        if driver_reader is not None:
            driver_reader.close()
    done_samples = sum(len(r["positions"]) for i, r in fresh.items() if i != TEXT_ITEM)
    rate = done_samples / max(seconds, 1e-9)
    log(f"[eval] chunks per worker: {per_worker}; {rate:.2f} samples/s")
    return fresh, rate


def infer_plan(cfg: RunConfig, source: dict[str, Any], adapter_dir: Path | None, out: Path, backend: str,
               log: Log) -> tuple[str, Plan, list[int]]:  # fmt: skip
    """(input identity, chunks and their store, chunks not yet answered) of a batch inference."""
    data_id = source_digest(source)
    reader = open_source(source, cfg.data.trust_index_urls)
    total = reader.total
    reader.close()
    plan = make_plan(
        cfg, data_id, dir_digest(adapter_dir), range(total), f"{backend}/infer/{source.get('answer_key')}"
    )
    if cfg.eval.storage is None:  # beside the output, not in a run's directory
        plan.store = ChunkStore(f"{out}.chunks/{plan.store.root.rsplit('/', 1)[-1]}")
    finished = {c for c in plan.store.finished_chunks() if c < plan.chunks}
    if finished:
        log(f"[infer] reusing {len(finished)} answered chunks of {plan.chunks} from {plan.store}")
    return data_id, plan, [c for c in range(plan.chunks) if c not in finished]


def write_answers(plan: Plan, fresh: dict[int, dict[str, Any]], out: Path, errors: Path) -> tuple[int, int]:
    """`out` and `errors` from every chunk in input order (this run's or stored), written whole."""
    from imagelora_dist.data.shards import atomic_write_bytes

    lines: list[str] = []
    bad: list[str] = []
    for c in range(plan.chunks):
        payload = fresh.get(c) or plan.store.get(ChunkStore.chunk_name(c))
        if payload is None or payload.get("positions") != plan.chunk(c):
            raise EvalFailed(f"inference chunk {c} is missing from {plan.store}")
        lines += payload["lines"]
        bad += payload["errors"]
    atomic_write_bytes(out, "".join(f"{x}\n" for x in lines).encode())
    atomic_write_bytes(errors, "".join(f"{x}\n" for x in bad).encode())
    return len(lines), len(bad)


def infer_on_workers(cfg: RunConfig, source: dict[str, Any], adapter_dir: Path | None, out: Path, errors: Path,
                     backend: str, log: Log = print) -> tuple[int, int]:  # fmt: skip
    """Batch inference over `source` (eval/batch_infer.py) on replicas: `out` gets one JSON line per answered
    input and `errors` one per bad input, both in input order (written whole); (answered, errors)."""
    data_id, plan, todo = infer_plan(cfg, source, adapter_dir, out, backend, log)
    fresh: dict[int, dict[str, Any]] = {}
    if todo:
        fresh, _ = score_on_actors(
            cfg, {**source, "mode": "infer"}, data_id, adapter_dir, backend, plan, todo, log
        )
    return write_answers(plan, fresh, out, errors)


def select_from_shards(shards: str, wanted: int, seed: int, trust_index_urls: bool = False) -> list[int]:
    """The stratified sample's positions (eval/sampling.py), read from the records of `shards` alone."""
    reader = PositionReader(shards, trust_index_urls=trust_index_urls)
    strata = []
    try:
        for _, raw, _ in reader.read(range(reader.total)):
            try:
                record = json.loads(raw["json"]) if raw is not None else {}
            except (KeyError, ValueError):
                record = {}
            strata.append(stratum_of(record if isinstance(record, dict) else {}))
    finally:
        reader.close()
    return stratified_positions(strata, wanted, seed)


def sample_positions(cfg: RunConfig, shards: str, total: int, log: Log) -> Sequence[int]:
    """The positions eval scores: all (a range), or eval.num_samples of them stratified, chosen by a Ray
    task that reads the records (the driver holds only the chosen positions)."""
    wanted = cfg.eval.num_samples
    if wanted is None or wanted >= total:
        return range(total)
    args = (shards, wanted, cfg.data.seed, cfg.data.trust_index_urls)
    options: dict[str, Any] = {"num_cpus": cfg.ray.cpus_per_worker}
    if not is_url(shards):
        # A path the driver named may be visible on its node only: the task runs there, still in a
        # process of its own, so the records never pass through the driver's memory.
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    positions = ray.get(ray.remote(select_from_shards).options(**options).remote(*args))
    log(f"[eval] a stratified sample of {len(positions)} of the {total} samples "
        f"(task x data source x element type, seed {cfg.data.seed})")  # fmt: skip
    return positions


def make_plan(
    cfg: RunConfig, data_id: str, adapter_id: str | None, positions: Sequence[int], backend: str
) -> Plan:
    """The chunks of `positions` and their store, keyed by everything the predictions depend on."""
    key = eval_key(cfg, data_id, adapter_id, positions, backend)
    return Plan(positions, cfg.eval.chunk_size, ChunkStore(f"{eval_storage(cfg)}/{key}"))


def todo_items(plan: Plan, log: Log) -> list[int]:
    """The work items not yet in the store: chunk numbers, and TEXT_ITEM for the text-only part."""
    finished = {c for c in plan.store.finished_chunks() if c < plan.chunks}
    text_done = TEXT_NAME in plan.store.names()
    if finished or text_done:
        log(f"[eval] reusing {len(finished)} finished chunks of {plan.chunks} from {plan.store}")
    return [c for c in range(plan.chunks) if c not in finished] + ([] if text_done else [TEXT_ITEM])


def eval_storage(cfg: RunConfig) -> str:
    """Where finished chunks are kept: eval.storage, else <output_dir>/eval."""
    return (cfg.eval.storage or str(Path(cfg.output_dir) / "eval")).rstrip("/")


def merge(
    plan: Plan, fresh: dict[int, dict[str, Any]], total: int, cfg: RunConfig, log: Log
) -> dict[str, Any]:
    """The report: every chunk's entries in sample order (this run's or stored), text results, drops."""
    from imagelora_dist.eval.run import summarize

    scored: list[dict[str, Any]] = []
    dropped: dict[str, int] = {}
    reasons: list[str] = []
    for c in range(plan.chunks):
        payload = fresh.get(c) or plan.store.get(ChunkStore.chunk_name(c))
        if payload is None or payload.get("positions") != plan.chunk(c):
            raise EvalFailed(f"eval chunk {c} is missing from {plan.store}")
        scored.extend(payload["scored"])
        for reason, n in payload["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + n
        reasons += payload["reasons"]
    text = fresh.get(TEXT_ITEM) or plan.store.get(TEXT_NAME)
    if text is None:
        raise EvalFailed(f"eval's text results are missing from {plan.store}")
    lost = sum(dropped.values())
    allowed = cfg.data.max_dropped_fraction
    if lost:
        line = (f"[eval] {lost} of {len(plan.positions)} eval samples could not be read "
                f"({', '.join(f'{k} {v}' for k, v in sorted(dropped.items()))}); first: {reasons[0]}")  # fmt: skip
        if lost > allowed * len(plan.positions):
            raise DataLossError(f"{line}; data.max_dropped_fraction={allowed:g} allows "
                                 f"{int(allowed * len(plan.positions))}; the scored chunks stay in {plan.store}")  # fmt: skip
        log(line)
    report = summarize(scored)
    report.update(text)
    report["eval_dropped_samples"] = lost
    for reason, n in sorted(dropped.items()):
        report[f"eval_dropped/{reason}"] = n
    if not isinstance(plan.positions, range):
        report["eval_sample"] = {"stratified": True, "samples": len(plan.positions), "of": total,
                                 "by": "task x data source x element type", "seed": cfg.data.seed}  # fmt: skip
    return report
