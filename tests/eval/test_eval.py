"""Evaluation: metrics, batched greedy generation, text preservation, and the evaluate() loop."""

from __future__ import annotations

import json
import math

import pytest
import torch

from imagelora_dist.adapter.accounting import decoder_lora_targets
from imagelora_dist.adapter.image_lora import attach_image_lora
from imagelora_dist.data.collate import Sample, collate
from imagelora_dist.data.reader import ShardReader, decode_sample, make_loader
from imagelora_dist.data.synth import SynthSpec, make_sample, synthesize
from imagelora_dist.data.tasks import grounding_answer
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.eval import (
    chance_baselines,
    click_distance,
    default_text_prompts,
    evaluate,
    generate_answers,
    grounding_hit,
    image_lora_disabled,
    normalize_answer,
    peft_disabled,
    referring_match,
    referring_parts,
    text_logits,
    text_max_abs_logit_diff,
)
from imagelora_dist.models import build_tiny_vlm, resolve_model
from imagelora_dist.selection import HeadSelection

MAX_PIXELS = 112 * 112


def _record(**kw):
    base = {
        "id": "r0",
        "task": "grounding",
        "bbox": [100, 50, 200, 150],
        "width": 1000,
        "height": 500,
        "element_type": "button",
        "element_text": "Save",
    }
    return {**base, **kw}


def _decoded(n: int, seed: int = 0, **spec_kw) -> list[dict]:
    spec = SynthSpec(num_samples=n, width=224, height=168, seed=seed, **spec_kw)
    out = []
    for i in range(n):
        raw = make_sample(spec, i)
        raw["json"] = json.dumps(raw["json"]).encode()
        out.append(decode_sample(raw))
    return out


# --- metrics --------------------------------------------------------------------------------------------


def test_grounding_hit_inside_outside_border():
    rec = (
        _record()
    )  # bbox x in [100, 200] px of 1000 -> [100, 200] normalised; y [50, 150] of 500 -> [100, 300]
    assert grounding_hit("(150, 200)", rec)
    assert grounding_hit("Click at ( 150 ,200 ) please", rec)
    assert grounding_hit("(100, 100)", rec)  # top-left corner, inclusive
    assert grounding_hit("(200, 300)", rec)  # bottom-right corner, inclusive
    assert not grounding_hit("(99, 200)", rec)
    assert not grounding_hit("(201, 200)", rec)
    assert not grounding_hit("(150, 99)", rec)
    assert not grounding_hit("(150, 301)", rec)
    assert not grounding_hit("(1500, 200)", rec)  # outside the image entirely
    # Only the first point counts.
    assert grounding_hit("(150, 200) or (900, 900)", rec)
    assert not grounding_hit("(900, 900) or (150, 200)", rec)


def test_grounding_hit_unparseable():
    rec = _record()
    for text in ("", "150, 200", "the save button", "(150; 200)", "(a, b)", "[150, 200]"):
        assert not grounding_hit(text, rec), text


def test_grounding_gold_answers_hit_on_synth():
    for d in _decoded(12, seed=3):
        rec = d["record"]
        gold = grounding_answer(rec["bbox"], rec["width"], rec["height"])
        assert grounding_hit(gold, rec), rec["id"]


def test_click_distance_to_the_target_centre():
    rec = _record()  # centre (150, 100) px of 1000 x 500 -> (150, 200) in [0, 1000) coordinates
    assert click_distance("(150, 200)", rec) == 0
    assert click_distance("at (153, 204)", rec) == pytest.approx(5.0)  # a 3-4-5 triangle
    assert click_distance("(150, 200) or (0, 0)", rec) == 0  # the first point, as grounding_hit reads it
    far = 1000 * math.sqrt(2)
    for text in ("", "the save button", "(150; 200)"):
        assert click_distance(text, rec) == pytest.approx(far), text
    assert click_distance("(9999, 9999)", rec) == pytest.approx(far)  # never farther than no answer at all


def test_chance_baselines_match_random_clicks_and_answer_counts():
    boxes = [([100, 50, 200, 150], 1000, 500), ([0, 0, 112, 84], 224, 168), ([10, 20, 40, 100], 224, 168)]
    grounding = [_record(bbox=b, width=w, height=h) for b, w, h in boxes]
    # An independent estimate: every click of a fine grid over [0, 1000)^2, scored by grounding_hit.
    grid = [(x, y) for x in range(0, 1000, 4) for y in range(0, 1000, 4)]
    rates = [sum(grounding_hit(f"({x}, {y})", r) for x, y in grid) / len(grid) for r in grounding]
    referring = [
        _record(task="referring", element_type=t, element_text=c)
        for t, c in (("circle", "red"), ("square", "blue"), ("circle", "Red"), ("circle", "red"))
    ]
    out = chance_baselines(grounding + referring)
    assert out["grounding_chance"] == pytest.approx(sum(rates) / len(rates), abs=0.005)
    # Centres (150, 200), (250, 250), (111.6, 357.1): distances to (500, 500) and their median.
    dists = sorted(
        math.dist(c, (500, 500)) for c in ((150, 200), (250, 250), (25 * 1000 / 224, 60 * 1000 / 168))
    )
    assert out["grounding_median_dist_centre"] == pytest.approx(dists[1])
    assert out["referring_chance"] == pytest.approx(3 / 4)  # "circle: red" three times (case-folded)
    assert (out["referring_type_chance"], out["referring_text_chance"]) == (
        pytest.approx(3 / 4),
        pytest.approx(3 / 4),
    )
    more = referring + [_record(task="referring", element_type="square", element_text="red")] * 2
    assert chance_baselines(more)["referring_chance"] == pytest.approx(3 / 6)
    assert chance_baselines(more)["referring_type_chance"] == pytest.approx(3 / 6)  # circle x3, square x3
    assert chance_baselines(more)["referring_text_chance"] == pytest.approx(5 / 6)  # red x5
    assert math.isnan(chance_baselines(referring)["grounding_chance"])
    assert math.isnan(chance_baselines(grounding)["referring_chance"])


def test_referring_parts_credit_each_half():
    rec = _record(task="referring")  # "button: Save"
    assert referring_parts("button: Save", rec) == (True, True)
    assert referring_parts("Button: save.", rec) == (True, True)
    assert referring_parts("button: Open", rec) == (True, False)
    assert referring_parts("link: Save", rec) == (False, True)
    assert referring_parts("Save", rec) == (False, False)
    assert referring_parts("", rec) == (False, False)
    plain = _record(task="referring", element_type="icon", element_text="")  # the answer is "icon"
    assert referring_parts("icon", plain) == (True, True) and referring_match("icon", plain)
    assert referring_parts("icon: x", plain) == (True, False)


def test_referring_match_normalisation():
    rec = _record(task="referring")
    assert referring_match("button: Save", rec)
    assert referring_match("  BUTTON: save.  ", rec)
    assert referring_match('"button: Save"\n', rec)
    assert referring_match("«button: Save»", rec)  # Unicode punctuation at the edges
    assert not referring_match("button: Save as", rec)
    assert not referring_match("button:Save", rec)  # only the edges are normalised
    assert not referring_match("Save", rec)
    assert not referring_match("", rec)
    icon = _record(task="referring", element_type="icon", element_text="")
    assert referring_match("Icon", icon)
    assert not referring_match("icon: ", _record(task="referring", element_type="icon:x", element_text=""))
    assert normalize_answer(" ...Hello, World!? ") == "hello, world"


# --- generation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_generate_batched_equals_unbatched(family):
    model, processor = build_tiny_vlm(family, seed=0)
    decoded = _decoded(3, seed=1, instruction_words=(0, 15))
    # The prompts differ in length, so a batch of 3 is really left-padded.
    processor.tokenizer.padding_side = "left"
    prompt = collate(processor, [Sample(d["record"]["instruction"], None, [d["image"]]) for d in decoded])
    assert (prompt["attention_mask"][:, 0] == 0).any()
    processor.tokenizer.padding_side = "right"
    model.train()  # generate_answers must evaluate in eval mode and restore the flag
    kw = dict(max_new_tokens=8, max_pixels=MAX_PIXELS)
    batched = generate_answers(model, processor, decoded, batch_size=3, **kw)
    single = generate_answers(model, processor, decoded, batch_size=1, **kw)
    assert model.training and processor.tokenizer.padding_side == "right"
    assert len(batched) == len(decoded) and all(isinstance(t, str) for t in batched)
    assert batched == single
    assert any(batched), "a random model still generates some text"
    assert generate_answers(model, processor, [], **kw) == []
    # With Image-LoRA attached (visual rows located under left padding) batching still changes nothing.
    handle = attach_image_lora(model, HeadSelection.all_heads(resolve_model(model)), rank=4, alpha=8)
    _randomize_image_lora(handle)
    adapted = generate_answers(model, processor, decoded, batch_size=3, **kw)
    assert adapted == generate_answers(model, processor, decoded, batch_size=2, **kw)
    handle.detach()


# --- text preservation ----------------------------------------------------------------------------------


def _randomize_image_lora(handle):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in handle.modules.values():
            m.B.copy_(torch.randn(m.B.shape, generator=gen) * 0.5)
            m.gamma.fill_(0.7)


def test_text_preservation_image_lora_is_exact():
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    fresh, _ = build_tiny_vlm("qwen2_5_vl", seed=0)
    prompts = default_text_prompts()[:4]
    assert all(isinstance(p, str) and p for p in prompts)
    handle = attach_image_lora(model, HeadSelection.all_heads(resolve_model(model)), rank=4, alpha=8)
    _randomize_image_lora(handle)
    assert text_max_abs_logit_diff(model, processor, prompts, handle.disabled) == 0.0
    assert text_max_abs_logit_diff(model, processor, prompts, lambda: image_lora_disabled(handle)) == 0.0
    # Independently: the adapted model's text logits equal a model that never had an adapter.
    ours = text_logits(model, processor, prompts, batch_size=3)
    theirs = text_logits(fresh, processor, prompts, batch_size=3)
    assert len(ours) == len(prompts)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    # The helper really disables the adapter on images, and restores it afterwards.
    d = _decoded(1)[0]
    batch = collate(processor, [Sample(d["record"]["instruction"], None, [d["image"]])])
    batch.pop("labels")
    with torch.no_grad():
        base = fresh(**batch).logits
        adapted = model(**batch).logits
        with image_lora_disabled(handle):
            off = model(**batch).logits
        again = model(**batch).logits
    assert torch.equal(off, base)
    assert not torch.equal(adapted, base)
    assert torch.equal(again, adapted)
    handle.detach()
    with pytest.raises(ImageLoRAError):
        with image_lora_disabled(handle):
            pass


def test_text_preservation_peft_lora_changes_text():
    peft = pytest.importorskip("peft")
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=decoder_lora_targets(model, ["v_proj"]))
    pmodel = peft.get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in pmodel.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    diff = text_max_abs_logit_diff(
        pmodel, processor, default_text_prompts()[:3], lambda: peft_disabled(pmodel)
    )
    assert diff > 0.0 and math.isfinite(diff)
    # Generation goes through a peft wrapper too.
    out = generate_answers(pmodel, processor, _decoded(2), max_new_tokens=4, max_pixels=MAX_PIXELS)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)


# --- evaluate -------------------------------------------------------------------------------------------


def test_evaluate_counts_and_predictions(tmp_path):
    spec = SynthSpec(num_samples=6, samples_per_shard=3, width=224, height=168, seed=5)
    synthesize(spec, tmp_path, workers=1, progress=None)
    reader = ShardReader.from_path(tmp_path, batch_size=3, shuffle_shards=False, shuffle_buffer=0)
    samples = (s for batch in make_loader(reader) for s in batch["samples"])
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    result = evaluate(
        model, processor, samples, max_samples=5, max_pixels=MAX_PIXELS, batch_size=2, max_new_tokens=6
    )
    keys = {"grounding_accuracy", "referring_exact_match", "grounding_count", "referring_count"}
    assert keys | {"eval_samples", "predictions"} <= set(result)
    assert result["eval_samples"] == 5
    assert result["grounding_count"] + result["referring_count"] == 5
    preds = result["predictions"]
    assert len(preds) == 5 and len({p["id"] for p in preds}) == 5
    assert sum(p["task"] == "grounding" for p in preds) == result["grounding_count"]
    for p in preds:
        assert {"id", "task", "generated", "correct"} <= set(p)
        assert isinstance(p["generated"], str) and isinstance(p["correct"], bool)
    for task, key, count in (
        ("grounding", "grounding_accuracy", "grounding_count"),
        ("referring", "referring_exact_match", "referring_count"),
    ):
        correct = sum(p["correct"] for p in preds if p["task"] == task)
        if result[count]:
            assert result[key] == pytest.approx(correct / result[count])
        else:
            assert math.isnan(result[key])


def test_evaluate_scores_by_task(monkeypatch):
    """With gold answers (and one wrong answer per task) the scores are exact."""
    import imagelora_dist.eval.run as run_mod

    decoded = _decoded(8, seed=2)
    tasks = [d["record"]["task"] for d in decoded]
    assert {"grounding", "referring"} <= set(tasks)
    first_wrong = {t: tasks.index(t) for t in ("grounding", "referring")}
    by_id = {
        d["record"]["id"]: ("nothing here" if i in first_wrong.values() else d["record"]["answer"])
        for i, d in enumerate(decoded)
    }

    def fake_generate(model, processor, chunk, **kw):
        assert len(chunk) <= 3
        return [by_id[d["record"]["id"]] for d in chunk]

    monkeypatch.setattr(run_mod, "generate_answers", fake_generate)
    result = evaluate(
        None, None, iter(decoded), max_samples=None, max_pixels=None, batch_size=3, max_new_tokens=4
    )
    n_g, n_r = tasks.count("grounding"), tasks.count("referring")
    assert (result["grounding_count"], result["referring_count"], result["eval_samples"]) == (n_g, n_r, 8)
    assert result["grounding_accuracy"] == pytest.approx((n_g - 1) / n_g)
    assert result["referring_exact_match"] == pytest.approx((n_r - 1) / n_r)
    assert [p["id"] for p in result["predictions"]] == [d["record"]["id"] for d in decoded]
    # Gold clicks land at their target's centre (up to the integer grid); the wrong one counts as far as
    # a click can be, and the median of the n_g >= 3 distances is one of the near ones.
    assert n_g >= 3 and result["grounding_median_dist"] < 2.0
    records = [d["record"] for d in decoded]
    assert {k: result[k] for k in chance_baselines(records)} == chance_baselines(records)
    assert (
        result["referring_type_accuracy"]
        == result["referring_text_accuracy"]
        == result["referring_exact_match"]
    )

    bad = [{"image": decoded[0]["image"], "record": {**decoded[0]["record"], "task": "captioning"}}]
    with pytest.raises(ImageLoRAError, match="captioning"):
        evaluate(None, None, bad, max_samples=None, max_pixels=None, batch_size=3, max_new_tokens=4)


def test_eval_imports_no_distributed_stack():
    import subprocess
    import sys

    code = (
        "import sys, imagelora_dist.eval\n"
        "print(','.join(sorted(m for m in ('ray', 'deepspeed', 'mlflow') if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == ""


def test_first_number_reads_the_leading_integer():
    from imagelora_dist.eval.text_task import first_number

    assert [first_number(t) for t in ("12 apples", "It is -3.", "none", "7 or 8")] == ["12", "-3", None, "7"]


def test_text_task_scores_against_a_manual_count_and_identical_for_image_lora():
    from imagelora_dist.eval.generate import generate_text_answers
    from imagelora_dist.eval.text_task import arithmetic_problems, first_number, text_task_scores

    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    handle = attach_image_lora(model, None, rank=4)
    with torch.no_grad():
        for m in handle.modules.values():
            m.B.normal_(0, 1.0)
            m.gamma.fill_(1.0)
    scores = text_task_scores(
        model, processor, lambda: image_lora_disabled(handle), count=6, seed=3, batch_size=4
    )
    problems = arithmetic_problems(6, 3)
    assert problems == arithmetic_problems(6, 3) and len({q for q, _ in problems}) == 6
    answers = generate_text_answers(
        model, processor, [q for q, _ in problems], max_new_tokens=8, batch_size=4
    )
    manual = sum(first_number(a) == want for a, (_, want) in zip(answers, problems, strict=True)) / 6
    assert scores["text_task_accuracy"] == manual
    # Image-LoRA never touches text-only prompts: the same answers with and without it.
    assert scores["text_task_outputs_identical"] == 1.0
    assert scores["text_task_accuracy_base"] == scores["text_task_accuracy"]
