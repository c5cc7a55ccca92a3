"""`imagelora-dist infer`: a tiny trained adapter round-trips through save -> CLI (local dir, MLflow run, peft),
batch mode equals single mode, Image-LoRA leaves decoding untouched, bad input exits 2 in one line."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from imagelora_dist.adapter.accounting import decoder_lora_targets
from imagelora_dist.adapter.image_lora import attach_image_lora
from imagelora_dist.adapter.io import load_adapter, save_adapter
from imagelora_dist.cli import main
from imagelora_dist.config import RunConfig, load_config
from imagelora_dist.data.collate import Sample, collate
from imagelora_dist.data.screens import make_screen
from imagelora_dist.eval import generate_answers
from imagelora_dist.eval.generate import _greedy_config
from imagelora_dist.infer import (
    IMAGE_LORA,
    PEFT_LORA,
    adapter_kind,
    answer_items,
    load_for_inference,
    resolve_adapter,
    single_item,
)
from imagelora_dist.models import build_tiny_vlm, resolve_model

MAX_NEW = 6
MAX_PIXELS = RunConfig().data.max_pixels  # what infer uses by default, as eval does
N_IMAGES = 3


def _decoded(paths, instructions):
    return [
        {"image": Image.open(p).convert("RGB"), "record": {"instruction": t}}
        for p, t in zip(paths, instructions, strict=True)
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Image-LoRA adapter after a few plain torch optimizer steps, its screenshots, and the answers
    of eval's generate_answers with that adapter loaded (the reference) and without it (the base)."""
    root = tmp_path_factory.mktemp("infer")
    screens = [make_screen(100 + i) for i in range(N_IMAGES)]
    (root / "imgs").mkdir()
    paths = []
    for i, s in enumerate(screens):
        paths.append(root / "imgs" / f"shot{i}.png")
        s.image.save(paths[-1])
    instructions = [s.instruction for s in screens]

    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    spec = resolve_model(model)
    handle = attach_image_lora(model, {1: [0, 2], spec.num_layers - 1: [1]}, rank=4, alpha=8)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a strong start so the adapter visibly changes answers
        for m in handle.modules.values():
            m.B.copy_(torch.randn(m.B.shape, generator=gen))
            m.gamma.fill_(1.0)
    opt = torch.optim.AdamW(handle.parameters(), lr=1e-2)
    processor.tokenizer.padding_side = "right"
    batch = collate(processor, [Sample(s.instruction, s.answer, [s.image]) for s in screens])
    model.train()
    for _ in range(2):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    adapter = save_adapter(root / "adapter", handle, {"method": "image_lora"})
    handle.detach()

    decoded = _decoded(paths, instructions)
    kw = dict(max_new_tokens=MAX_NEW, max_pixels=MAX_PIXELS, batch_size=1)
    base = generate_answers(model, processor, decoded, **kw)
    fresh, fresh_processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    load_adapter(fresh, adapter)
    expected = generate_answers(fresh, fresh_processor, decoded, **kw)
    return {
        "root": root,
        "adapter": adapter,
        "paths": paths,
        "instructions": instructions,
        "expected": expected,
        "base": base,
    }


def _infer(*args) -> list[str]:
    return ["infer", *map(str, args), "--max-new-tokens", str(MAX_NEW)]


def test_single_mode_round_trips_the_trained_adapter(trained, capsys):
    assert adapter_kind(trained["adapter"]) == IMAGE_LORA
    assert trained["expected"] != trained["base"], "the trained adapter must change some answer"
    for i in (0, 1):
        code = main(_infer("--adapter", trained["adapter"], "--image", trained["paths"][i],
                           "--instruction", trained["instructions"][i]))  # fmt: skip
        out = capsys.readouterr()
        assert code == 0, out.err
        assert out.out == trained["expected"][i] + "\n"
        assert "image_lora adapter" in out.err and "tiny qwen2_5_vl" in out.err


def test_batch_mode_writes_every_record_in_order(trained, tmp_path, capsys):
    paths, ins = trained["paths"], trained["instructions"]
    records = [
        {"image": os.path.relpath(paths[0], tmp_path), "instruction": ins[0], "id": "a"},
        # ScreenSpot field names, extra fields kept; an absolute path.
        {"img_filename": str(paths[1]), "instruction": ins[1], "bbox": [1, 2, 3, 4], "data_type": "text"},
        {"image": os.path.relpath(paths[2], tmp_path), "query": ins[2], "answer": "gold"},
    ]
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text(json.dumps(records[0]) + "\n\n" + "".join(json.dumps(r) + "\n" for r in records[1:]))
    out = tmp_path / "out" / "answers.jsonl"
    code = main(_infer("--adapter", trained["adapter"], "--jsonl", jsonl, "--output", out, "--batch-size", 2))
    printed = capsys.readouterr()
    assert code == 0, printed.err
    lines = out.read_text().splitlines()
    assert len(lines) == 3
    got = [json.loads(line) for line in lines]
    for rec, row, answer in zip(records, got, trained["expected"], strict=True):
        assert row == {**rec, "answer": answer}  # the input record, plus the single-mode answer
    assert "[infer] 3/3 answered" in printed.err and f"wrote 3 answers to {out}" in printed.out
    assert sorted(p.name for p in out.parent.iterdir()) == ["answers.jsonl"]  # no temp file left

    # --images and --answer-key; a truncated image fails at decoding with its line, and writes nothing.
    broken = tmp_path / "imgs" / "broken.png"
    broken.parent.mkdir()
    data = trained["paths"][0].read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    jsonl.write_text(json.dumps({"image": "broken.png", "instruction": "hi"}) + "\n")
    out2 = tmp_path / "out" / "never.jsonl"
    code = main(_infer("--adapter", trained["adapter"], "--jsonl", jsonl, "--images", broken.parent,
                       "--output", out2, "--answer-key", "generated"))  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and f"{jsonl}:1" in err and "broken.png" in err
    assert sorted(p.name for p in out.parent.iterdir()) == ["answers.jsonl"]


def test_adapter_from_mlflow_run(trained, tmp_path, capsys):
    from imagelora_dist.tracking import Tracker

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    cfg = load_config(None, [f"tracking.uri={uri}", f"tracking.artifact_root={tmp_path}/mlartifacts"])
    tracker = Tracker(cfg)
    with tracker.pipeline_run() as parent_id:  # the layout run_pipeline produces
        with tracker.stage_run("probe"):
            pass
        with tracker.stage_run("train") as train_id:
            tracker.log_artifact(trained["adapter"], "adapter")
        with tracker.stage_run("eval"):
            pass
    # The parent run resolves to its nested train run's adapter, through the CLI.
    code = main(_infer("--adapter", f"mlflow-run:{parent_id}", "--tracking-uri", uri,
                       "--image", trained["paths"][0], "--instruction", trained["instructions"][0]))  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out == trained["expected"][0] + "\n"
    # Every form names the same files.
    want = {p.name: p.read_bytes() for p in trained["adapter"].iterdir()}
    for source in (f"mlflow-run:{train_id}", f"runs:/{train_id}/adapter", f"runs:/{parent_id}"):
        with resolve_adapter(source, uri) as local:
            assert {p.name: p.read_bytes() for p in local.iterdir()} == want, source
        assert not local.exists(), "the downloaded copy is removed after loading"
    # Unknown run, a run without an adapter, an artifact path that is not there: exit 2, one line.
    with tracker.pipeline_run() as empty_id:
        with tracker.stage_run("train"):
            pass
    image = ["--image", trained["paths"][0], "--instruction", "x", "--tracking-uri", uri]
    for source, needle in (
        (
            "mlflow-run:0123456789abcdef0123456789abcdef",
            "MLflow run '0123456789abcdef0123456789abcdef' not found",
        ),
        (f"mlflow-run:{empty_id}", f"MLflow run {empty_id}: no adapter/adapter_config.json"),
        (f"runs:/{train_id}/nothing", "cannot download artifact 'nothing'"),
    ):
        assert main(_infer("--adapter", source, *image)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    missing = f"sqlite:///{tmp_path}/nope.db"
    assert main(_infer("--adapter", f"mlflow-run:{parent_id}", *image[:4], "--tracking-uri", missing)) == 2
    assert "no MLflow store at" in capsys.readouterr().err and not (tmp_path / "nope.db").exists()


def test_peft_lora_adapter(trained, tmp_path, capsys):
    import peft

    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    targets = decoder_lora_targets(model, ["v_proj"])
    pmodel = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in pmodel.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    pmodel.save_pretrained(str(tmp_path / "peft"), safe_serialization=True)
    assert adapter_kind(tmp_path / "peft") == PEFT_LORA
    decoded = _decoded(trained["paths"][:1], trained["instructions"][:1])
    expected = generate_answers(pmodel, processor, decoded, max_new_tokens=MAX_NEW, max_pixels=MAX_PIXELS)
    assert expected != trained["base"][:1]
    code = main(_infer("--adapter", tmp_path / "peft", "--image", trained["paths"][0],
                       "--instruction", trained["instructions"][0]))  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out == expected[0] + "\n" and "lora adapter" in out.err


def test_image_lora_changes_prefill_only(trained):
    cfg = RunConfig()
    model, processor, kind = load_for_inference(cfg, trained["adapter"], device="cpu")
    base, _ = build_tiny_vlm("qwen2_5_vl", seed=0)
    # Frozen like the adapted model: on CPU, F.linear of a sliced input can differ in the last bit
    # depending on the weight's requires_grad alone (a different kernel), adapter or not.
    base.requires_grad_(False)
    assert kind == IMAGE_LORA
    config = _greedy_config(model, 5, processor.tokenizer.pad_token_id, use_cache=True)
    config.min_new_tokens = 5  # really decode 5 steps
    config.return_dict_in_generate, config.output_scores = True, True

    # Text only: generation with the adapter attached is the base model's, bit for bit (tokens and scores).
    processor.tokenizer.padding_side = "left"
    prompt = collate(processor, [Sample("What is 12 plus 30?"), Sample("Name a colour of the sky, please.")])
    prompt.pop("labels")
    with torch.no_grad():
        ours = model.generate(**prompt, generation_config=config)
        theirs = base.generate(**prompt, generation_config=config)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert all(torch.equal(a, b) for a, b in zip(ours.scores, theirs.scores, strict=True))

    # With an image: every adapted layer sees visual rows at prefill, and none at any decode step.
    rows: dict[int, list[int]] = {}
    hooks = []
    for layer, module in model.model.language_model.layers.named_children():
        adapter = getattr(module.self_attn, "image_lora", None)
        if adapter is not None:
            hooks.append(
                adapter.register_forward_pre_hook(
                    lambda m, args, layer=layer: rows.setdefault(int(layer), []).append(
                        int(m.tracker.rows_for(args[0]).numel())
                    )
                )
            )
    image = Image.open(trained["paths"][0]).convert("RGB")
    prompt = collate(processor, [Sample(trained["instructions"][0], None, [image])])
    prompt.pop("labels")
    with torch.no_grad():
        adapted = model.generate(**prompt, generation_config=config)
    for h in hooks:
        h.remove()
    assert sorted(rows) == [1, resolve_model(model).num_layers - 1]
    for calls in rows.values():
        assert (
            len(calls) == 5
            and calls[0] == int((prompt["input_ids"] == resolve_model(model).image_token_id).sum()) > 0
        )
        assert calls[1:] == [0, 0, 0, 0]
    # And those tokens are what infer answers (eval's generate path, decoded).
    answer = answer_items(model, processor, [single_item(str(trained["paths"][0]), trained["instructions"][0])],
                          max_new_tokens=5)  # fmt: skip
    new = adapted.sequences[0, prompt["input_ids"].shape[1] :]
    assert answer == [processor.tokenizer.decode(new, skip_special_tokens=True).strip()]


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing_image", "--image: image not found: {tmp}/nope.png"),
        ("bad_json", "{tmp}/q.jsonl:3: invalid JSON"),
        ("missing_instruction", "{tmp}/q.jsonl:1: missing field instruction"),
        ("jsonl_image_missing", "{tmp}/q.jsonl:2: image not found: {tmp}/gone.png"),
        ("unknown_adapter_dir", "adapter not found: {tmp}/no-adapter"),
        ("not_an_adapter", "{tmp}: not an adapter directory (no adapter_config.json)"),
        ("no_output", "--jsonl needs --output FILE"),
        ("wrong_family", "family is 'qwen2_5_vl' but the model has 'llava'"),
    ],
)
def test_bad_input_exits_2_with_one_line(trained, tmp_path, capsys, case, needle):
    good = json.dumps({"image": str(trained["paths"][0]), "instruction": "Click OK."})
    (tmp_path / "q.jsonl").write_text(
        {
            "bad_json": good + "\n\n{not json\n",
            "missing_instruction": json.dumps({"image": str(trained["paths"][0])}) + "\n",
            "jsonl_image_missing": good + "\n" + json.dumps({"image": "gone.png", "instruction": "x"}) + "\n",
        }.get(case, good + "\n")
    )
    adapter = {"unknown_adapter_dir": tmp_path / "no-adapter", "not_an_adapter": tmp_path}.get(
        case, trained["adapter"]
    )
    single = ["--image", tmp_path / "nope.png" if case == "missing_image" else trained["paths"][0],
              "--instruction", "Click OK."]  # fmt: skip
    batch = [
        "--jsonl",
        tmp_path / "q.jsonl",
        *([] if case == "no_output" else ["--output", tmp_path / "o.jsonl"]),
    ]
    args = (
        batch if case in ("bad_json", "missing_instruction", "jsonl_image_missing", "no_output") else single
    )
    extra = ["--family", "llava"] if case == "wrong_family" else []
    assert main(_infer("--adapter", adapter, *args, *extra)) == 2
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("imagelora-dist: error:")]
    assert len(lines) == 1 and needle.format(tmp=tmp_path) in lines[0], err
    if case != "wrong_family":  # failed before any model was built
        assert err == lines[0]
    assert not (tmp_path / "o.jsonl").exists()


def test_model_defaults_to_the_adapters_base(trained, tmp_path):
    import shutil

    from imagelora_dist.adapter.io import CONFIG_NAME
    from imagelora_dist.infer import InferenceError, model_config_from_adapter, parse_run_source

    adapter = tmp_path / "ad"
    shutil.copytree(trained["adapter"], adapter)
    conf = json.loads((adapter / CONFIG_NAME).read_text())

    def with_fields(**kw):
        (adapter / CONFIG_NAME).write_text(json.dumps({**conf, **kw}))
        return model_config_from_adapter(RunConfig(), adapter).model

    assert (with_fields(family="llava").family, with_fields(family="llava").path) == ("llava", None)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    assert with_fields(base_model_name_or_path=str(tmp_path / "ckpt")).path == str(tmp_path / "ckpt")
    with pytest.raises(InferenceError, match="not a model directory here; pass --model PATH"):
        with_fields(base_model_name_or_path="/cluster/models/Qwen2.5-VL-7B")
    assert parse_run_source("runs:/abc/adapter/") == ("abc", "adapter")
    assert parse_run_source("runs:/abc") == ("abc", None)
    assert parse_run_source("mlflow-run:abc") == ("abc", None)
    assert parse_run_source("mlflow://abc") == ("abc", None)
    assert parse_run_source("runs/tiny-default/adapter") is None
    for bad in ("runs:/", "mlflow-run:", "mlflow-run:a/b"):
        with pytest.raises(InferenceError, match="--adapter"):
            parse_run_source(bad)


# --- answer formats (no trained model: a zero-initialised adapter, and canned or tiny-model answers) -------


@pytest.fixture
def blank_adapter(tmp_path):
    """A freshly attached Image-LoRA adapter of the tiny qwen2_5_vl (no training), saved, and a 640x360 shot."""
    model, _ = build_tiny_vlm("qwen2_5_vl", seed=0)
    handle = attach_image_lora(model, {1: [0]}, rank=2, alpha=4)
    adapter = save_adapter(tmp_path / "adapter", handle, {"method": "image_lora"})
    handle.detach()
    shot = tmp_path / "shot.png"
    Image.new("RGB", (640, 360), (230, 230, 240)).save(shot)
    return adapter, shot


def test_prompts_and_clicks_per_answer_format(tmp_path):
    from imagelora_dist.data.answer_formats import model_image_size
    from imagelora_dist.infer import answer_clicks, item_prompt, item_task, read_jsonl

    shot = tmp_path / "shot.png"
    Image.new("RGB", (640, 360)).save(shot)
    ask = "Click the Save button."
    referring = "What is the element in the box (1, 2, 3, 4)? Answer with its type and text."
    lines = [{"image": "shot.png", "instruction": ask}, {"image": "shot.png", "instruction": referring},
             {"image": "shot.png", "instruction": "Describe it.", "task": "referring"}]  # fmt: skip
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    grounding, ref, told = read_jsonl(tmp_path / "q.jsonl")
    assert [item_task(i) for i in (grounding, ref, told)] == ["grounding", "referring", "referring"]
    # The collator's output request (data/answer_formats.py); `point` asks as before.
    assert item_prompt(grounding) == item_prompt(grounding, "point") == ask
    assert item_prompt(grounding, "qwen25_abs") == f"{ask} Output its bbox coordinates in JSON format."
    assert item_prompt(grounding, "qwen3_rel") == f"{ask} Output its bbox coordinates in JSON format."
    assert item_prompt(grounding, "qwen2_box") == f"{ask} Output the bounding box of the element."
    assert item_prompt(ref, "qwen3_rel") == referring and item_prompt(told, "qwen2_box") == "Describe it."

    processor = build_tiny_vlm("qwen2_5_vl", seed=0)[1]
    items = [grounding, ref]
    # Pixels of the 640 x 360 input: [0, 1000) coordinates scale by 0.64 and 0.36, a box by its centre.
    assert answer_clicks(items, ["(250, 500)", "(1, 2)"], "point") == [(160.0, 180.0), None]
    assert answer_clicks(items, ['{"bbox_2d": [100, 200, 300, 400]}', "x"], "qwen3_rel")[0] == (128.0, 108.0)
    assert answer_clicks(items, ["(100,200),(300,400)", "x"], "qwen2_box")[0] == (128.0, 108.0)
    # qwen25_abs: pixels of the image the model saw (fitted to the budget, then smart_resize).
    budget = 200 * 200
    w, h = model_image_size(processor, 640, 360, budget)
    answer = f'{{"point_2d": [{w // 2}, {h // 4}]}}'
    click = answer_clicks([grounding], [answer], "qwen25_abs", processor, budget)[0]
    assert click == (round(w // 2 * 640 / w, 1), round(h // 4 * 360 / h, 1))
    assert answer_clicks([grounding], ["no idea"], "qwen3_rel") == [None]


def test_answer_items_asks_in_the_format_with_a_tiny_model(tmp_path, monkeypatch):
    """Real generation with an untrained tiny model: the prompt carries the format's request."""
    from imagelora_dist import infer

    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    shot = tmp_path / "shot.png"
    Image.new("RGB", (320, 200), (200, 220, 240)).save(shot)
    seen = []

    def spy(model, processor, decoded, **kw):
        seen.extend(d["record"]["instruction"] for d in decoded)
        return generate_answers(model, processor, decoded, **kw)

    monkeypatch.setattr(infer, "generate_answers", spy)
    item = single_item(str(shot), "Open the menu.")
    answers = answer_items(model, processor, [item], max_new_tokens=2, answer_format="qwen25_abs")
    assert seen == ["Open the menu. Output its bbox coordinates in JSON format."]
    assert len(answers) == 1 and isinstance(answers[0], str)
    clicks = infer.answer_clicks([item], answers, "qwen25_abs", processor)
    assert clicks[0] is None or all(isinstance(v, float) for v in clicks[0])


@pytest.mark.parametrize("setting", ["point", "qwen3_rel", "auto"])
def test_cli_answer_format_prompt_click_and_output(blank_adapter, tmp_path, capsys, monkeypatch, setting):
    from imagelora_dist import infer
    from imagelora_dist.data.answer_formats import model_image_size

    adapter, shot = blank_adapter
    # auto: a tiny random-weight model has no format of its own, so point
    fmt = "point" if setting == "auto" else setting
    prompts = []
    w, h = model_image_size(build_tiny_vlm("qwen2_5_vl", seed=0)[1], 640, 360, MAX_PIXELS)
    canned = {
        "point": "(250, 500)",
        "qwen3_rel": '{"bbox_2d": [200, 400, 300, 600]}',
        "qwen25_abs": f'{{"bbox_2d": [0, 0, {w // 2}, {h}]}}',
    }[fmt]

    def fake(model, processor, decoded, **kw):
        prompts.extend(d["record"]["instruction"] for d in decoded)
        return [canned for _ in decoded]

    monkeypatch.setattr(infer, "generate_answers", fake)
    # Each canned answer is a click at (160, 180) px of the 640 x 360 shot.
    code = main(["infer", f"data.answer_format={setting}", "--adapter", str(adapter), "--image", str(shot),
                 "--instruction", "Click OK."])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out == canned + "\n"  # stdout: the answer, as before
    assert "[infer] click: (160, 180) px in the 640x360 screenshot" in out.err
    assert f"answer format {fmt}" in out.err
    hint = "" if fmt == "point" else " Output its bbox coordinates in JSON format."
    assert prompts == ["Click OK." + hint]

    jsonl = tmp_path / "q.jsonl"
    records = [{"image": "shot.png", "instruction": "Click OK.", "id": 1},
               {"image": "shot.png", "instruction": "x", "task": "referring"}]  # fmt: skip
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    answers = tmp_path / "a.jsonl"
    code = main(["infer", f"data.answer_format={setting}", "--adapter", str(adapter), "--jsonl", str(jsonl),
                 "--output", str(answers)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    if fmt == "point":  # the default format writes exactly what infer always wrote
        assert rows == [{**r, "answer": canned} for r in records]
    else:
        assert rows == [
            {**records[0], "answer": canned, "answer_click": [160.0, 180.0]},
            {**records[1], "answer": canned, "answer_click": None},
        ]


def test_cli_qwen25_abs_needs_a_qwen_processor(tmp_path, capsys):
    model, _ = build_tiny_vlm("llava", seed=0)
    handle = attach_image_lora(model, {1: [0]}, rank=2, alpha=4)
    adapter = save_adapter(tmp_path / "adapter", handle, {"method": "image_lora"})
    shot = tmp_path / "shot.png"
    Image.new("RGB", (64, 64)).save(shot)
    code = main(["infer", "data.answer_format=qwen25_abs", "--adapter", str(adapter), "--image", str(shot),
                 "--instruction", "Click OK."])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "qwen25_abs needs a Qwen2-VL-family image processor" in err[-1]


@pytest.mark.integration
def test_batch_inference_on_workers_keeps_input_order_reports_bad_lines_and_resumes(
    trained, local_ray, tmp_path, capsys
):
    order = [2, 0, 1]
    rows = [
        json.dumps({"image": str(trained["paths"][i]), "instruction": trained["instructions"][i]})
        for i in order
    ]
    rows.insert(1, "{not json")  # line 2
    rows.insert(3, json.dumps({"image": "nowhere.png", "instruction": "Click OK."}))  # line 4
    src = tmp_path / "q.jsonl"
    src.write_text("\n".join(rows) + "\n")
    out = tmp_path / "preds.jsonl"
    argv = ["infer", "--adapter", str(trained["adapter"]), "--input", str(src), "--out", str(out),
            "--batch-size", "1", "--max-new-tokens", str(MAX_NEW),
            "eval.workers=2", "eval.chunk_size=2", "ray.cpus_per_worker=0.5"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["answer"] for g in got] == [trained["expected"][i] for i in order]  # as one process answers
    assert [g["position"] for g in got] == [0, 2, 4]
    assert all("click" in g and g["task"] == "grounding" for g in got)
    errors = [json.loads(x) for x in (tmp_path / "preds.jsonl.errors.jsonl").read_text().splitlines()]
    assert [e["position"] for e in errors] == [1, 3]
    assert f"{src}:2: invalid JSON" in errors[0]["error"] and f"{src}:4: image" in errors[1]["error"]
    before = out.read_bytes()
    capsys.readouterr()
    assert main(argv) == 0
    assert "reusing 3 answered chunks of 3" in capsys.readouterr().err
    assert out.read_bytes() == before


@pytest.mark.integration
def test_batch_inference_on_a_zero3_group_answers_as_one_process(trained, local_ray, tmp_path, capsys):
    rows = [json.dumps({"image": str(p), "instruction": t}) for p, t in zip(trained["paths"], trained["instructions"],
                                                                          strict=True)]  # fmt: skip
    rows.append(json.dumps({"image": "nowhere.png", "instruction": "Click OK."}))  # a rank with fewer inputs
    src = tmp_path / "q.jsonl"
    src.write_text("\n".join(rows) + "\n")
    out = tmp_path / "preds.jsonl"
    argv = ["infer", "--adapter", str(trained["adapter"]), "--input", str(src), "--out", str(out),
            "--batch-size", "1", "--max-new-tokens", str(MAX_NEW),
            "eval.backend=zero3", "eval.chunk_size=2", "ray.num_workers=2", "ray.cpus_per_worker=0.5"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert "ZeRO-3 group of 2 ranks" in capsys.readouterr().err
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["answer"] for g in got] == trained["expected"]  # greedy answers as one process gives them
    assert [
        json.loads(x)["position"] for x in (tmp_path / "preds.jsonl.errors.jsonl").read_text().splitlines()
    ] == [3]
