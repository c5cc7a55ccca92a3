"""The pieces of eval at scale without Ray: the stratified sample, chunks read by position, the chunk store,
wrong-format counting, and the one inference layer (a full checkpoint, an adapter switched off)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from imagelora_dist.data.reader import decode_sample
from imagelora_dist.data.synth import SynthSpec, synthesize
from imagelora_dist.eval import evaluate
from imagelora_dist.eval.chunks import ChunkStore, PositionReader, chunk_count, chunk_positions
from imagelora_dist.eval.run import score_answer, shard_samples, summarize
from imagelora_dist.eval.sampling import allocate, stratified_positions

# --- the stratified sample ------------------------------------------------------------------------------


def test_allocation_is_proportional_with_every_stratum_kept():
    sizes = {
        ("g", "web", "icon"): 60,
        ("g", "web", "text"): 30,
        ("g", "ios", "icon"): 9,
        ("r", "web", "x"): 1,
    }
    take = allocate(sizes, 20)
    assert sum(take.values()) == 20
    assert all(take[k] >= 1 for k in sizes)  # 4 strata, 20 samples: none left out (not the first 20)
    # By hand: one each, then 16 over the rest in proportion 59:29:8:0 -> 9.6, 4.7, 1.3, 0 -> 9, 4, 1 + 2
    # by largest remainder (0.7 for text, 0.6 for web/icon).
    assert take == {
        ("g", "web", "icon"): 11,
        ("g", "web", "text"): 6,
        ("g", "ios", "icon"): 2,
        ("r", "web", "x"): 1,
    }
    assert allocate(sizes, 500) == sizes  # more than the set: everything


def test_stratified_positions_are_deterministic_sorted_and_not_the_first_n():
    strata = [("g", "mobile", "icon")] * 50 + [("g", "desktop", "text")] * 50  # a file sorted by platform
    chosen = stratified_positions(strata, 10, seed=3)
    assert chosen == sorted(chosen) and len(set(chosen)) == 10
    assert Counter(strata[p] for p in chosen) == {("g", "mobile", "icon"): 5, ("g", "desktop", "text"): 5}
    assert chosen == stratified_positions(strata, 10, seed=3)
    assert chosen != stratified_positions(strata, 10, seed=4)


# --- chunks and the chunk store -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval-shards")
    synthesize(SynthSpec(num_samples=10, samples_per_shard=4, width=224, height=168, seed=2), path, workers=1)
    return str(path)


def test_position_reader_matches_the_shards_in_index_order(shards):
    expected = [s["record"]["id"] for s in shard_samples(shards)]
    reader = PositionReader(shards)
    assert reader.total == 10
    # Forward within a shard, a jump back (reopens), a jump across shards.
    order = [0, 1, 5, 2, 9, 4]
    got = reader.read(order)
    assert [p for p, _, _ in got] == order
    assert [decode_sample(raw)["record"]["id"] for _, raw, _ in got] == [expected[p] for p in order]
    reader.close()
    assert [chunk_positions(range(10), c, 4) for c in range(chunk_count(10, 4))] == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9]
    ]  # fmt: skip


def test_a_missing_shard_is_reported_per_sample(shards, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    names = sorted(p.name for p in copy.glob("*.tar"))
    (copy / names[1]).unlink()
    got = PositionReader(str(copy)).read([3, 4, 8])
    assert got[0][1] is not None and got[2][1] is not None
    assert got[1][1] is None and got[1][2].startswith("missing:") and names[1] in got[1][2]


def test_chunk_store_keeps_whole_files_and_lists_chunks(tmp_path):
    store = ChunkStore(str(tmp_path / "k"))
    assert store.finished_chunks() == set()
    store.put(ChunkStore.chunk_name(3), {"chunk": 3, "scored": []})
    store.put("text.json", {"x": 1.5})
    assert store.finished_chunks() == {3}
    assert store.get(ChunkStore.chunk_name(3)) == {"chunk": 3, "scored": []}
    (tmp_path / "k" / ChunkStore.chunk_name(4)).write_text("{half")  # a torn file: redone, not trusted
    assert store.get(ChunkStore.chunk_name(4)) is None
    assert not list((tmp_path / "k").glob(".*tmp*"))


# --- scoring ----------------------------------------------------------------------------------------------


def _grounding(**kw):
    return {"id": "g", "task": "grounding", "bbox": [100, 50, 200, 150], "width": 1000, "height": 500,
            "element_type": "icon", "element_text": "", "data_source": "web", **kw}  # fmt: skip


def test_wrong_format_is_counted_apart_from_misses_per_group():
    ref = {"id": "r", "task": "referring", "bbox": [0, 0, 5, 5], "width": 10, "height": 10,
           "element_type": "button", "element_text": "OK", "data_source": "web"}  # fmt: skip
    scored = [
        score_answer(_grounding(id="hit"), "(150, 200)", "(150, 200)"),  # inside the box
        score_answer(_grounding(id="miss"), "(900, 900)", "(150, 200)"),  # a readable miss
        score_answer(_grounding(id="junk"), "the save button", "(150, 200)"),  # no click at all
        score_answer(_grounding(id="txt", element_type="text"), "nothing", "(150, 200)"),
        score_answer(ref, "button OK", "button: OK"),  # not `type: text`
    ]
    report = summarize(scored)
    assert [p["wrong_format"] for p in report["predictions"]] == [False, False, True, True, True]
    assert [p["correct"] for p in report["predictions"]] == [True, False, False, False, False]
    assert report["wrong_format_count"] == 3
    assert (report["grounding_wrong_format_count"], report["referring_wrong_format_count"]) == (2, 1)
    assert report["grounding_wrong_format/web/icon"] == 1
    assert report["grounding_wrong_format/web/text"] == 1
    assert report["grounding_wrong_format/web/all"] == 2
    # The per-group accuracy, recomputed from the predictions alone.
    icon = [p for p in report["predictions"] if p.get("element_type") == "icon"]
    assert report["grounding_acc/web/icon"] == sum(p["correct"] for p in icon) / len(icon)


def test_summarize_of_scored_chunks_equals_evaluate_in_one_piece(shards):
    from imagelora_dist.eval.run import score_samples
    from imagelora_dist.models import build_tiny_vlm

    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    kw = {"max_pixels": 112 * 112, "batch_size": 2, "max_new_tokens": 4}
    whole = evaluate(model, processor, shard_samples(shards), **kw)
    samples = list(shard_samples(shards))
    parts = []
    for c in range(chunk_count(len(samples), 4)):  # chunks scored separately, JSON round-tripped as stored
        chunk = [samples[p] for p in chunk_positions(range(len(samples)), c, 4)]
        parts += json.loads(json.dumps(score_samples(model, processor, chunk, **kw)))
    assert json.dumps(summarize(parts), sort_keys=True) == json.dumps(whole, sort_keys=True)


# --- the one inference layer ------------------------------------------------------------------------------


def test_a_full_checkpoint_loads_as_the_model_and_switches_back_to_the_base(tmp_path):
    from imagelora_dist.config import ModelConfig
    from imagelora_dist.eval.inference import FULL, adapter_kind, load_inference_model
    from imagelora_dist.eval.text_preservation import default_text_prompts, text_logits
    from imagelora_dist.models import build_tiny_vlm

    base_cfg = ModelConfig(family="qwen2_5_vl", seed=0, dtype="float32")
    tuned, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    base_logits = text_logits(tuned, processor, default_text_prompts()[:2])
    with torch.no_grad():  # "fine-tuned": one weight moved
        tuned.lm_head.weight.add_(0.5)
    tuned.save_pretrained(tmp_path / "full")
    processor.save_pretrained(tmp_path / "full")
    assert adapter_kind(tmp_path / "full") == FULL
    loaded = load_inference_model(base_cfg, tmp_path / "full", device="cpu")
    assert loaded.kind == FULL
    assert torch.equal(loaded.model.lm_head.weight, tuned.lm_head.weight)
    with loaded.disabled():
        off = text_logits(loaded.model, loaded.processor, default_text_prompts()[:2])
    on = text_logits(loaded.model, loaded.processor, default_text_prompts()[:2])
    assert all(torch.equal(a, b) for a, b in zip(off, base_logits, strict=True))  # the base, bit for bit
    assert any(not torch.equal(a, b) for a, b in zip(on, base_logits, strict=True))  # tuned again after


def test_dropped_eval_samples_are_counted_and_stop_eval_beyond_the_allowed_fraction(tmp_path):
    from imagelora_dist.config import RunConfig
    from imagelora_dist.data.drops import DataLossError
    from imagelora_dist.eval.distributed import merge
    from imagelora_dist.eval.hand_out import TEXT_ITEM, Plan

    entries = [score_answer(_grounding(id=f"s{i}"), "(150, 200)", "(150, 200)") for i in range(3)]
    fresh = {
        0: {"chunk": 0, "positions": [0, 1], "scored": entries[:2], "dropped": {}, "reasons": []},
        1: {"chunk": 1, "positions": [2, 3], "scored": entries[2:], "dropped": {"missing": 1},
            "reasons": ["position 3: missing: s3://b/eval-000001.tar (NoSuchKey)"]},
        TEXT_ITEM: {"text_max_abs_logit_diff": 0.0},
    }  # fmt: skip
    plan = Plan(range(4), 2, ChunkStore(str(tmp_path / "store")))
    with pytest.raises(DataLossError, match=r"1 of 4 eval samples could not be read \(missing 1\); first: "
                       r"position 3: missing: s3://b/eval-000001.tar .*max_dropped_fraction=0 allows 0"):  # fmt: skip
        merge(plan, fresh, 4, RunConfig(), log=lambda m: None)
    lines: list[str] = []
    allowing = RunConfig.model_validate({"data": {"max_dropped_fraction": 0.25}})
    report = merge(plan, fresh, 4, allowing, log=lines.append)
    assert report["eval_samples"] == 3 and report["eval_dropped_samples"] == 1
    assert report["eval_dropped/missing"] == 1
    assert any("1 of 4 eval samples could not be read" in line for line in lines)
