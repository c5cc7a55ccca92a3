"""Pre-trained tiny base: the pre-training tasks, text-only and mixed batches, method `full`, and
`python -m fidelity.pretrain` at a smoke size, whose output the pipeline loads from a local path."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from fidelity.pretrain import main
from fidelity.pretrain_tasks import (
    ARITHMETIC,
    ELEMENT_TYPE,
    MAX_READ_TEXT_LABELS,
    POSITION,
    PRETRAIN_TASKS,
    READ_LABEL,
    READ_TEXT,
    PretrainSpec,
    make_pretrain_sample,
    position_name,
    synthesize_pretrain,
)
from imagelora_dist import HeadSelection, attach_image_lora, build_tiny_vlm, load_vlm, resolve_model
from imagelora_dist.config import load_config
from imagelora_dist.data.collate import IGNORE_INDEX, BatchCollator
from imagelora_dist.data.reader import decode_sample
from imagelora_dist.data.screens import make_screen
from imagelora_dist.data.shards import read_shard_raw
from imagelora_dist.data.tasks import normalize_point
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.train.methods import attach_method

EXPERIMENT = Path(__file__).resolve().parents[1]
CONFIG = str(EXPERIMENT / "configs" / "pretrain_base.yaml")

# --- the pre-training tasks ------------------------------------------------------------------------------


def _expected_arithmetic(instruction: str) -> int:
    n = [int(x) for x in re.findall(r"\d+", instruction)]
    if "more. How many" in instruction and "gets" in instruction:
        return n[0] + n[1]
    if "gives" in instruction:
        return n[0] - n[1]
    if "boxes with" in instruction:
        return n[0] * n[1]
    if "loses" in instruction:
        return n[0] + n[1] - n[2]
    assert "How many more" in instruction, instruction
    return n[0] - n[1]


def test_pretrain_samples_answer_what_their_screen_shows():
    spec = PretrainSpec(num_samples=60, samples_per_shard=16)
    seen = set()
    for i in range(spec.num_samples):
        sample = make_pretrain_sample(spec, i)
        rec = sample["json"]
        seen.add(rec["task"])
        assert rec["task"] in PRETRAIN_TASKS and rec["answer"].strip() == rec["answer"] != ""
        # Decodes like any shard sample (one image member + json).
        decoded = decode_sample({"__key__": sample["__key__"], "png": sample["png"], "json": json.dumps(rec)})
        if rec["task"] == READ_TEXT:
            assert 1 <= len(rec["labels"]) <= MAX_READ_TEXT_LABELS and rec["answer"] == " | ".join(
                rec["labels"]
            )
            assert decoded["image"].size == (spec.width, spec.height) and rec["text_only"] is False
            continue
        if rec["task"] == ARITHMETIC:
            assert rec["text_only"] is True and decoded["image"].size == (1, 1) and rec["bbox"] is None
            assert int(rec["answer"]) == _expected_arithmetic(rec["instruction"]) >= 0
            continue
        assert rec["text_only"] is False and decoded["image"].size == (spec.width, spec.height)
        x0, y0, x1, y1 = rec["bbox"]
        assert 0 <= x0 < x1 <= spec.width and 0 <= y0 < y1 <= spec.height
        if rec["task"] == READ_LABEL:
            assert rec["answer"] == rec["element_text"]
            x, y = normalize_point(*rec["point"], spec.width, spec.height)
            assert f"({x}, {y})" in rec["instruction"]
        elif rec["task"] == ELEMENT_TYPE:
            assert rec["answer"] == rec["element_type"] != "icon"
            assert f"'{rec['element_text']}'" in rec["instruction"]
        else:
            assert rec["task"] == POSITION
            assert rec["answer"] == position_name(rec["bbox"], spec.width, spec.height)
    assert seen == set(PRETRAIN_TASKS)  # the downstream grounding / referring tasks are not in the mix


def test_position_name_is_the_ninth_holding_the_centre():
    assert position_name((0, 0, 10, 10), 300, 300) == "top-left"
    assert position_name((140, 140, 160, 160), 300, 300) == "center"
    assert position_name((280, 10, 300, 20), 300, 300) == "top-right"
    assert position_name((150, 290, 160, 300), 300, 300) == "bottom"
    assert position_name((0, 120, 20, 140), 300, 300) == "left"


def test_pretrain_shards_are_deterministic_for_any_worker_count(tmp_path):
    spec = PretrainSpec(num_samples=10, samples_per_shard=4, tasks=(READ_LABEL, ARITHMETIC))
    one = synthesize_pretrain(spec, tmp_path / "one", workers=1, progress=None)
    two = synthesize_pretrain(spec, tmp_path / "two", workers=2, progress=None)
    assert one.total_samples == 10 and len(one.shards) == 3
    for info in one.shards:
        assert (tmp_path / "one" / info.url).read_bytes() == (tmp_path / "two" / info.url).read_bytes()
    tasks = [json.loads(s["json"])["task"] for s in read_shard_raw(tmp_path / "one" / one.shards[0].url)]
    assert tasks == [READ_LABEL, ARITHMETIC, READ_LABEL, ARITHMETIC]
    assert two.meta["spec"]["tasks"] == [READ_LABEL, ARITHMETIC]
    with pytest.raises(ImageLoRAError, match="already holds"):
        synthesize_pretrain(spec, tmp_path / "one", workers=1, progress=None)


@pytest.mark.parametrize("tasks", [(), ("grounding",), (ARITHMETIC, ARITHMETIC)])
def test_pretrain_spec_refuses_bad_task_lists(tasks):
    with pytest.raises(ImageLoRAError, match="tasks"):
        PretrainSpec(num_samples=4, tasks=tasks)


# --- text-only and mixed batches -------------------------------------------------------------------------


def _decoded(instruction, answer, image=None, text_only=False):
    record = {"instruction": instruction, "answer": answer, "text_only": text_only}
    return {"image": image or Image.new("RGB", (1, 1)), "record": record}


def test_text_only_records_collate_without_visual_tokens_and_share_batches(tiny):
    """A text-only row in a batch with an image row gets the same logits as alone; no visual token."""
    model, processor = tiny
    spec = resolve_model(model)
    collator = BatchCollator(processor, spec.visual_token_ids, max_pixels=224 * 224)
    text = _decoded("Ann has 3 coins and gets 4 more. How many coins does Ann have now?", "7", text_only=True)
    screen = make_screen(0)
    image = _decoded(screen.instruction, screen.answer, screen.image)
    alone = collator([text])
    assert alone["visual_tokens"] == 0 and "pixel_values" not in alone["inputs"]
    ids, labels = alone["inputs"]["input_ids"][0], alone["inputs"]["labels"][0]
    assert processor.tokenizer.decode(ids[labels != IGNORE_INDEX]).strip().startswith("7")
    processor.tokenizer.padding_side = "right"
    mixed = collator([image, text])
    assert mixed["num_samples"] == 2 and mixed["visual_tokens"] > 0
    n = int(alone["inputs"]["attention_mask"].sum())
    assert torch.equal(mixed["inputs"]["input_ids"][1, :n], ids[:n])
    assert torch.equal(mixed["inputs"]["labels"][1, :n], labels[:n])
    with torch.no_grad():
        a = model(**{k: v for k, v in alone["inputs"].items() if k != "labels"}).logits[0, :n]
        m = model(**{k: v for k, v in mixed["inputs"].items() if k != "labels"}).logits[1, :n]
    torch.testing.assert_close(m, a, rtol=1e-4, atol=1e-4)


def test_vision_every_batch_adds_a_label_free_image_row_to_text_only_batches():
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    spec = resolve_model(model)
    rows = [
        _decoded("What is 2 plus 3?", "5", text_only=True),
        _decoded("What is 4 times 2?", "8", text_only=True),
    ]
    plain = BatchCollator(processor, spec.visual_token_ids)(rows)
    filled = BatchCollator(processor, spec.visual_token_ids, vision_every_batch=True)(rows)
    assert "pixel_values" not in plain["inputs"] and plain["inputs"]["input_ids"].shape[0] == 2
    inputs = filled["inputs"]
    assert inputs["input_ids"].shape[0] == 3 and "pixel_values" in inputs and filled["visual_tokens"] > 0
    assert filled["num_samples"] == 2 and len(filled["records"]) == 2
    assert (inputs["labels"][2] == IGNORE_INDEX).all()
    assert torch.equal(inputs["labels"][:2][inputs["labels"][:2] != IGNORE_INDEX],
                       plain["inputs"]["labels"][plain["inputs"]["labels"] != IGNORE_INDEX])  # fmt: skip
    # A batch that has an image already is left as it is.
    screen = make_screen(1)
    mixed = BatchCollator(processor, spec.visual_token_ids, vision_every_batch=True)(
        [rows[0], _decoded(screen.instruction, screen.answer, screen.image)]
    )
    assert mixed["inputs"]["input_ids"].shape[0] == 2


# --- method full -----------------------------------------------------------------------------------------


def test_full_method_trains_everything_and_saves_a_loadable_checkpoint(tmp_path):
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    adapted = attach_method(model, "full", rank=8, alpha=16, processor=processor)
    assert len(adapted.parameters) == len(list(model.parameters()))
    assert all(p.requires_grad for p in model.model.visual.parameters())
    with torch.no_grad():
        model.model.language_model.layers[0].self_attn.v_proj.weight.add_(0.5)  # not the init weights
    path = adapted.save(tmp_path / "ckpt", {"method": "full"})
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert names & {"processor_config.json", "preprocessor_config.json"}
    loaded, loaded_processor = load_vlm(path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert loaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()

    frozen_tower, _ = build_tiny_vlm("qwen2_5_vl", seed=0)
    partial = attach_method(frozen_tower, "full", rank=8, alpha=16, freeze_vision=True)
    assert not any(p.requires_grad for p in frozen_tower.model.visual.parameters())
    assert all(p.requires_grad for p in frozen_tower.model.language_model.parameters())
    assert len(partial.parameters) < len(list(frozen_tower.parameters()))


# --- pretrain-base end to end (smoke size), then the pipeline on its output ------------------------------

SMOKE = [
    "data.synth.num_samples=24",
    "data.synth.samples_per_shard=6",
    "data.synth.workers=1",
    "train.steps=3",
    "train.micro_batch_size=2",
    "train.warmup_steps=1",
    "train.checkpoint_every=2",
    "eval.num_samples=10",
    "eval.max_new_tokens=4",
    "eval.batch_size=4",
]


@pytest.fixture(scope="module")
def pretrained(local_ray, tmp_path_factory):
    """`python -m fidelity.pretrain` with the shipped config at a smoke size (2 workers, ZeRO-2)."""
    tmp = tmp_path_factory.mktemp("pretrain")
    args = ["--config", CONFIG, f"output_dir={tmp / 'out'}",
            f"tracking.uri=sqlite:///{tmp}/mlruns.db", f"tracking.artifact_root={tmp}/mlartifacts", *SMOKE]  # fmt: skip
    assert main(args) == 0
    return tmp, args


def test_pretrain_base_writes_a_transformers_checkpoint_and_a_report(pretrained, capsys):
    tmp, args = pretrained
    out = tmp / "out"
    base = out / "base"
    names = {p.name for p in base.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "chat_template.jinja"} <= names  # fmt: skip
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp dirs must be renamed or gone"
    assert json.loads((base / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    report = json.loads((out / "pretrain_report.json").read_text())
    assert report["family"] == "qwen2_5_vl" and report["steps"] == 3 and report["global_batch"] == 4
    assert set(report["tasks"]) == set(PRETRAIN_TASKS) and report["eval_samples"] == 10
    assert sum(t["count"] for t in report["tasks"].values()) == 10
    assert all(0 <= t["accuracy"] <= 1 and t["answer_loss"] > 0 for t in report["tasks"].values())
    assert report["tasks"]["arithmetic"]["image_gain"] == 0  # no image: a blank screen changes nothing
    assert any(t["image_gain"] != 0 for k, t in report["tasks"].items() if k != "arithmetic")
    assert [s for s, _ in report["loss_curve"]] == [1, 2, 3] and report["loss_last"] == report["final_loss"]
    # Every parameter trained, the vision tower and the lowest decoder layer included (no no-grad scope).
    init = build_tiny_vlm("qwen2_5_vl", seed=0)[0].state_dict()
    trained = load_vlm(base)[0].state_dict()
    assert trained.keys() == init.keys()
    changed = {k for k, v in trained.items() if not torch.equal(v, init[k])}
    assert any(k.startswith("model.visual.blocks.0.") for k in changed), sorted(changed)[:5]
    assert any(k.startswith("model.language_model.layers.0.") for k in changed)
    assert len(changed) >= 0.9 * len(trained), sorted(set(trained) - changed)[:10]
    # MLflow: a parent run with a nested `pretrain` run holding the loss curve and the held-out metrics.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlruns.db")
    exp = client.get_experiment_by_name("pretrain-base")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"pretrain-base-full", "pretrain"}  # the parent's name says the method
    stage = runs["pretrain"]
    assert stage.data.tags["mlflow.parentRunId"] == runs["pretrain-base-full"].info.run_id
    assert len(client.get_metric_history(stage.info.run_id, "loss")) == 3
    assert {f"heldout_accuracy_{t}" for t in PRETRAIN_TASKS} <= set(stage.data.metrics)
    # Same config again: skipped, nothing retrained.
    before = (base / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "skipping" in capsys.readouterr().out
    assert (base / "model.safetensors").stat().st_mtime_ns == before


def test_eval_base_script_rescores_a_saved_base_as_pretraining_did(pretrained, tmp_path, capsys):
    tmp, args = pretrained
    from fidelity import eval_base as script

    overrides = [a for a in args[1:] if "=" in a and not a.startswith("--")]
    out = tmp_path / "scores.json"
    assert script.main(["--config", CONFIG, "--out", str(out), *overrides]) == 0
    report = json.loads((tmp / "out" / "pretrain_report.json").read_text())
    scores = json.loads(out.read_text())
    # the same held-out samples, the same greedy answers: the same figures as the report written in training
    assert scores["tasks"] == report["tasks"] and scores["examples"] == report["examples"]
    printed = capsys.readouterr().out
    assert all(f"\n{task:<14} n " in printed for task in report["tasks"])
    missing = [f"output_dir={tmp_path / 'nothing'}"]
    assert script.main(["--config", CONFIG, *overrides, *missing]) == 2
    assert "no trained base here" in capsys.readouterr().err


def test_pretrained_base_loads_from_its_path_and_runs_the_pipeline(pretrained):
    from imagelora_dist.pipeline import run_pipeline

    tmp, _ = pretrained
    base = tmp / "out" / "base"
    model, processor = load_vlm(base)
    spec = resolve_model(model)
    screen = make_screen(3)
    batch = processor(text=[processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
        {"type": "text", "text": screen.instruction}]}], add_generation_prompt=True, tokenize=False)],
        images=[[screen.image]], return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        before = model(**batch).logits
    handle = attach_image_lora(model, HeadSelection.all_heads(spec), rank=4, alpha=8)
    assert torch.isfinite(before).all() and handle.modules
    handle.detach()
    # The pipeline (probe + a short train) with model.path: exactly how a real checkpoint is used.
    out = tmp / "finetune"
    cfg = load_config(None, [f"output_dir={out}", f"model.path={base}", "data.synth.num_samples=8",
        "data.synth.samples_per_shard=4", "data.synth.workers=1", "probe.num_examples=2", "train.steps=2",
        "train.workers=1", "train.checkpoint_every=2", "tracking.enabled=false"])  # fmt: skip
    results = run_pipeline(cfg, log=lambda m: None, stages=("probe", "train"))
    selection = json.loads((out / "head_selection.json").read_text())
    assert selection["family"] == "qwen2_5_vl" and sum(selection["layer_budgets_kv"].values()) > 0
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    assert results["train"].metrics["final_loss"] > 0
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["family"] == "qwen2_5_vl"


def test_pretrain_base_bad_config_exits_2_before_any_work(tmp_path, capsys):
    assert main([f"output_dir={tmp_path}", "train.steps=0"]) == 2
    assert "train.steps" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2


def test_pretrain_png_placeholder_is_tiny():
    rec = make_pretrain_sample(PretrainSpec(num_samples=4, tasks=(ARITHMETIC,)), 0)
    assert Image.open(io.BytesIO(rec["png"])).size == (1, 1) and len(rec["png"]) < 200


def test_pretrain_base_without_ray_trains_a_resized_qwen3_vl_in_process(tmp_path, monkeypatch):
    import imagelora_dist.train.ray_train as ray_train

    def no_ray(*_a, **_k):
        raise AssertionError("--no-ray must not use Ray Train")

    monkeypatch.setattr(ray_train, "run_training", no_ray)
    out = tmp_path / "out"
    args = ["--no-ray", "--config", CONFIG, f"output_dir={out}",
            f"tracking.uri=sqlite:///{tmp_path}/mlruns.db", f"tracking.artifact_root={tmp_path}/mlartifacts",
            "model.family=qwen3_vl", "model.size.layers=2", "model.size.vision_layers=1", "train.workers=1",
            *SMOKE]  # fmt: skip
    assert main(args) == 0
    config = json.loads((out / "base" / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl"
    assert config["text_config"]["num_hidden_layers"] == 2 and config["vision_config"]["depth"] == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp dirs must be renamed or gone"
    report = json.loads((out / "pretrain_report.json").read_text())
    assert report["family"] == "qwen3_vl" and report["steps"] == 3 and report["global_batch"] == 2
    # Every step reached MLflow from this process (no Ray worker logs them here).
    assert [s for s, _ in report["loss_curve"]] == [1, 2, 3] and report["loss_last"] == report["final_loss"]
    trained = load_vlm(out / "base")[0]
    assert trained.config.text_config.num_hidden_layers == 2


def test_pretrain_base_without_ray_needs_one_worker(tmp_path, capsys):
    args = [
        "--no-ray",
        f"output_dir={tmp_path / 'out'}",
        "train.workers=2",
        "tracking.enabled=false",
    ]
    assert main(args) == 2
    assert "train.workers=2" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_pretrain_base_without_ray_needs_neither_ray_nor_mlflow_installed(tmp_path):
    """A single GPU machine may lack both (gpu_pretrain.sh carries only the trainer's wheels)."""
    import subprocess
    import sys

    args = ["--no-ray", f"output_dir={tmp_path / 'out'}", "tracking.enabled=false",
            "train.workers=1", *SMOKE]  # fmt: skip
    code = (
        "import sys\n"
        "for m in ('ray', 'mlflow'): sys.modules[m] = None  # importing either now raises ImportError\n"
        "from fidelity.pretrain import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(EXPERIMENT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "base" / "model.safetensors").stat().st_size > 0


def test_pretrain_eval_scores_the_point_task_as_grounding(tmp_path, monkeypatch):
    # An exact click is luck, so `point` is also scored as the downstream grounding is: inside the bbox.
    # The answers are chosen here (the target's centre for every other sample, no point for the rest).
    import statistics

    from fidelity import pretrain
    from fidelity.pretrain_tasks import POINT, PretrainSpec, synthesize_pretrain
    from imagelora_dist.data.tasks import box_center, normalize_point

    spec = PretrainSpec(num_samples=8, samples_per_shard=4, width=336, height=252, min_elements=1,
                        max_elements=4, tasks=(POINT,), seed=3, style="fidelity.shapes:STYLE")  # fmt: skip
    synthesize_pretrain(spec, tmp_path / "d", workers=1)
    seen = []

    def answers(model, processor, decoded, **kwargs):
        out = []
        for d in decoded:
            rec = d["record"]
            centre = normalize_point(*box_center(rec["bbox"]), rec["width"], rec["height"])
            out.append(f"({centre[0]}, {centre[1]})" if len(seen) % 2 == 0 else "somewhere")
            seen.append(rec)
        return out

    monkeypatch.setattr(pretrain, "answer_samples", answers)
    model, processor = build_tiny_vlm("qwen3_vl", seed=0)
    point = pretrain.evaluate_base(model, processor, str(tmp_path / "d"), num_samples=8, batch_size=4)[
        "tasks"
    ][POINT]
    assert len(seen) == 8 and point["count"] == 8
    assert point["click_hit_rate"] == 0.5 and point["accuracy"] == 0.5  # the centre is the reference answer
    areas = [(r["bbox"][2] - r["bbox"][0]) * (r["bbox"][3] - r["bbox"][1]) / (336 * 252) for r in seen]
    assert point["random_click_hit_rate"] == pytest.approx(statistics.fmean(areas))
    assert point["median_click_dist"] == pytest.approx(
        (0.0 + 1000 * 2**0.5) / 2, abs=1.0
    )  # 4 x ~0, 4 x no point
