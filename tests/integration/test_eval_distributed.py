"""Eval at scale on a local Ray: replicas scoring chunks, merged in order; a worker lost mid-eval; finished
chunks reused by a re-run; the ZeRO-3 backend against a replica; a stratified sample; train.method full."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imagelora_dist.config import load_config
from imagelora_dist.eval.chunks import ChunkStore
from imagelora_dist.pipeline import absolute_paths, eval_shards, run_eval

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-dist")
    overrides = [
        f"output_dir={out}",
        "train.method=none",  # the base model: no adapter to train first
        "eval.synth_samples=10",
        "eval.chunk_size=3",  # 4 chunks, the last one short
        "eval.batch_size=2",
        "eval.max_new_tokens=4",
        "eval.text_task_problems=2",
        "tracking.enabled=false",
        "data.synth.workers=1",
        "ray.cpus_per_worker=0.5",  # 3 workers fit the 2-CPU local Ray
    ]
    return absolute_paths(load_config(None, overrides))


def _with(cfg, **kw):
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update=kw)})


@pytest.fixture(scope="module")
def one_worker(local_ray, cfg, tmp_path_factory):
    """(report bytes, log) of one worker scoring everything: the reference the other runs must equal."""
    lines: list[str] = []
    result = run_eval(_with(cfg, workers=1, storage=str(tmp_path_factory.mktemp("store1"))), log=lines.append)
    return result.output.read_bytes(), lines


def test_report_is_byte_identical_for_1_2_3_workers_and_equals_one_process(one_worker, cfg, tmp_path):
    from imagelora_dist.eval import evaluate, shard_samples
    from imagelora_dist.models.build import build_model

    reference, _ = one_worker
    for workers in (2, 3):
        lines: list[str] = []
        result = run_eval(
            _with(cfg, workers=workers, storage=str(tmp_path / f"s{workers}")), log=lines.append
        )
        assert f"[eval] {workers} workers" in "\n".join(lines)
        assert result.output.read_bytes() == reference, workers
    # The same predictions as a plain in-process evaluate() over the shards (no Ray, no chunks).
    report = json.loads(reference)
    assert report["eval_samples"] == 10
    model, processor = build_model(cfg.model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker runs
    try:
        whole = evaluate(model, processor, shard_samples(eval_shards(cfg)), max_pixels=cfg.data.max_pixels,
                         batch_size=2, max_new_tokens=4)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert [p["generated"] for p in report["predictions"]] == [p["generated"] for p in whole["predictions"]]
    assert [p["id"] for p in report["predictions"]] == [p["id"] for p in whole["predictions"]]


def test_a_worker_lost_mid_eval_costs_only_its_chunk(one_worker, cfg, tmp_path, monkeypatch):
    from imagelora_dist.eval.distributed import FAULT_CHUNK_ENV, SLOW_WORKER_ENV
    from imagelora_dist.faults import FAULT_MARKER_ENV

    monkeypatch.setenv(FAULT_CHUNK_ENV, "1")  # worker 1 dies on its first chunk, chunk 1, once
    monkeypatch.setenv(FAULT_MARKER_ENV, str(tmp_path / "crashed"))
    # Worker 0 is still on chunk 0 when the crash is seen: chunk 1 must come back through the queue (not
    # as a copy an idle worker took), and the restarted worker 1 takes work again.
    monkeypatch.setenv(SLOW_WORKER_ENV, "0:6")
    lines: list[str] = []
    result = run_eval(_with(cfg, workers=2, storage=str(tmp_path / "s")), log=lines.append)
    text = "\n".join(lines)
    assert (tmp_path / "crashed").exists()  # the fault fired
    assert "[eval] worker 1 failed on chunk 1" in text and "it goes back in the queue" in text, text
    per_worker = next(x for x in lines if x.startswith("[eval] chunks per worker:"))
    assert per_worker.startswith("[eval] chunks per worker: [") and ", 0]" not in per_worker, per_worker
    assert result.output.read_bytes() == one_worker[0]  # every sample exactly once, the same report


def test_a_rerun_reuses_finished_chunks_and_redoes_only_the_missing(one_worker, cfg, tmp_path):
    store = tmp_path / "s"
    c = _with(cfg, workers=2, storage=str(store))
    run_eval(c, log=lambda m: None)
    (key,) = [p for p in store.iterdir() if p.is_dir()]
    files = sorted(key.glob("chunk-*.json"))
    assert [f.name for f in files] == [ChunkStore.chunk_name(i) for i in range(4)]
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    (key / ChunkStore.chunk_name(2)).unlink()  # as if its worker's node was lost before it finished
    lines: list[str] = []
    result = run_eval(c, log=lines.append)
    text = "\n".join(lines)
    assert "reusing 3 finished chunks of 4" in text, text
    assert "[eval] 1 workers" in text  # one chunk left: one worker, not a whole new fan-out
    for f in files:
        if f.name != ChunkStore.chunk_name(2):
            assert f.stat().st_mtime_ns == stamps[f.name], f.name  # untouched
    assert result.output.read_bytes() == one_worker[0]
    lines.clear()
    run_eval(c, log=lines.append)  # everything stored: no worker starts at all
    assert "reusing 4 finished chunks of 4" in "\n".join(lines) and not any("workers (" in x for x in lines)


def test_zero3_group_gives_a_replicas_predictions(one_worker, cfg, tmp_path):
    lines: list[str] = []
    result = run_eval(_with(cfg, backend="zero3", storage=str(tmp_path / "z")), log=lines.append)
    assert "[eval] ZeRO-3 group of 2 ranks" in "\n".join(lines)
    got, want = json.loads(result.output.read_bytes()), json.loads(one_worker[0])
    assert got["predictions"] == want["predictions"]  # greedy answers agree on CPU
    assert got["text_max_abs_logit_diff"] == 0.0 and got["eval_samples"] == 10


def test_a_smaller_num_samples_is_a_stratified_sample(one_worker, cfg, tmp_path):
    lines: list[str] = []
    result = run_eval(_with(cfg, num_samples=4, storage=str(tmp_path / "s")), log=lines.append)
    report = json.loads(result.output.read_bytes())
    assert report["eval_sample"] == {"stratified": True, "samples": 4, "of": 10,
                                     "by": "task x data source x element type", "seed": 0}  # fmt: skip
    everything = [p["id"] for p in json.loads(one_worker[0])["predictions"]]
    ids = [p["id"] for p in report["predictions"]]
    assert len(ids) == 4 and ids != everything[:4]  # not the first 4 in file order
    assert ids == [i for i in everything if i in ids]  # in sample order
    tasks = {p["task"] for p in report["predictions"]}
    assert tasks == {p["task"] for p in json.loads(one_worker[0])["predictions"]}  # both tasks kept


def test_full_fine_tune_is_evaluated_from_its_checkpoint(local_ray, cfg, tmp_path):
    from imagelora_dist.models import build_tiny_vlm

    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    with torch.no_grad():
        model.lm_head.weight.add_(0.25)  # "trained": text logits move
    adapter = Path(cfg.output_dir) / "adapter"
    model.save_pretrained(adapter)
    processor.save_pretrained(adapter)
    try:
        full = cfg.model_copy(update={"train": cfg.train.model_copy(update={"method": "full"})})
        result = run_eval(_with(full, workers=1, storage=str(tmp_path / "s")), log=lambda m: None)
    finally:
        import shutil

        shutil.rmtree(adapter)
    report = json.loads(result.output.read_bytes())
    assert report["eval_samples"] == 10
    assert report["text_max_abs_logit_diff"] > 0  # against the base: the full model's text changed


def test_device_map_backend_loads_a_checkpoint_through_accelerate(one_worker, cfg, tmp_path):
    from imagelora_dist.models import build_tiny_vlm

    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)  # the tiny base, saved as a checkpoint
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    overrides = {"path": str(tmp_path / "ckpt"), "dtype": "float32"}
    c = cfg.model_copy(update={
        "model": cfg.model.model_copy(update=overrides),
        "data": cfg.data.model_copy(update={"answer_format": "point"}),  # the tiny base's, not the family's
    })  # fmt: skip
    lines: list[str] = []
    result = run_eval(
        _with(c, backend="device_map", workers=1, storage=str(tmp_path / "s")), log=lines.append
    )
    assert "backend device_map" in "\n".join(lines)
    got, want = json.loads(result.output.read_bytes()), json.loads(one_worker[0])
    assert [p["generated"] for p in got["predictions"]] == [p["generated"] for p in want["predictions"]]
