"""Answer formats: each format's text against hand computations, the processor's resize, parsing back."""

from __future__ import annotations

import io
import json
import math

import pytest
from PIL import Image

from imagelora_dist.config import load_config
from imagelora_dist.data.answer_formats import (
    ANSWER_FORMATS,
    click_pixels,
    fitted_size,
    grounding_prompt,
    grounding_target,
    model_image_size,
    parse_click,
    resolve_answer_format,
    sample_text,
)
from imagelora_dist.data.collate import BatchCollator
from imagelora_dist.data.reader import decode_sample
from imagelora_dist.data.synth import SynthSpec, make_sample
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models import FAMILIES, build_tiny_vlm

# A 1920x1080 screenshot and a 200x60 px target box.
SHOT = {
    "id": "s0",
    "task": "grounding",
    "instruction": "Click the Save button.",
    "answer": "(104, 212)",
    "bbox": [100, 200, 300, 260],
    "point": [200, 230],
    "element_type": "text",
    "element_text": "Save",
    "width": 1920,
    "height": 1080,
    "source": "shots.json",
}
# Qwen2.5-VL's usual `max_pixels` (1280 merged 28x28 patches), used here as data.max_pixels.
BUDGET = 1280 * 28 * 28


def test_resolve_per_family():
    assert set(FAMILIES) == {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "idefics3", "gemma3"}
    expected = {"qwen2_vl": "qwen2_box", "qwen2_5_vl": "qwen25_abs", "qwen3_vl": "qwen3_rel"}
    for family in FAMILIES:
        assert resolve_answer_format("auto", family) == expected.get(family, "point")
        assert resolve_answer_format("auto", family, pretrained=False) == "point"  # a tiny random model
        for fmt in ANSWER_FORMATS:
            assert resolve_answer_format(fmt, family) == fmt
    with pytest.raises(ImageLoRAError, match="unknown format 'boxes'"):
        resolve_answer_format("boxes", "qwen2_vl")


def test_config_field_default_keeps_hashes():
    default = load_config(None, [])
    assert default.data.answer_format == "auto"
    # Left out of the dump at its default, so every stage hash of an existing config stays the same.
    assert "answer_format" not in default.data.model_dump()
    assert load_config(None, ["data.answer_format=auto"]).model_dump() == default.model_dump()
    assert load_config(None, ["data.answer_format=point"]).data.model_dump()["answer_format"] == "point"
    with pytest.raises(ImageLoRAError, match=r"data\.answer_format.*'qwen25_abs'.*got 'pixels'"):
        load_config(None, ["data.answer_format=pixels"])


def test_qwen25_size_of_a_1920x1080_screenshot_by_hand():
    processor = build_tiny_vlm("qwen2_5_vl", seed=0)[1]
    # The collator first fits the image to the budget: scale sqrt(1003520 / 2073600) = 0.69567,
    # 1920 x 0.69567 = 1335.68 -> 1335, 1080 x 0.69567 = 751.32 -> 751.
    assert fitted_size(1920, 1080, BUDGET) == (1335, 751)
    # Then smart_resize (factor 28 = patch 14 x merge 2, pixels in [56*56, BUDGET]): rounding to
    # multiples of 28 gives 27 x 28 = 756 by 48 x 28 = 1344, 1,016,064 pixels > BUDGET, so both sides
    # are scaled by beta = sqrt(751 x 1335 / 1003520) = 0.99953 and floored: 751 / 0.99953 / 28 = 26.83
    # -> 26 x 28 = 728, 1335 / 0.99953 / 28 = 47.70 -> 47 x 28 = 1316.
    beta = math.sqrt(751 * 1335 / BUDGET)
    assert (math.floor(1335 / beta / 28) * 28, math.floor(751 / beta / 28) * 28) == (1316, 728)
    assert model_image_size(processor, 1920, 1080, BUDGET) == (1316, 728)
    # Without a budget the processor's own range applies (the tiny one: at most 50176 pixels):
    # 1000 x 500 rounds to 504 x 1008, too many, beta = sqrt(500000 / 50176) = 3.1567,
    # floor(500 / 3.1567 / 28) = 5 -> 140, floor(1000 / 3.1567 / 28) = 11 -> 308.
    assert model_image_size(processor, 1000, 500, None) == (308, 140)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_model_image_size_is_what_the_processor_makes(family):
    """The size the answers are built for equals the grid the processor really produces."""
    processor = build_tiny_vlm(family, seed=0)[1]
    patch = processor.image_processor.patch_size
    for (w, h), budget in (((640, 360), 200 * 200), ((333, 777), 150 * 150), ((300, 200), None)):
        image = Image.new("RGB", (w, h), (200, 30, 30))
        record = {**SHOT, "width": w, "height": h, "bbox": [10, 10, 60, 40]}
        collator = BatchCollator(processor, (), max_pixels=budget, answer_format="qwen25_abs")
        batch = collator([{"image": image, "record": record}])
        _, gh, gw = batch["inputs"]["image_grid_thw"][0].tolist()
        assert model_image_size(processor, w, h, budget) == (gw * patch, gh * patch)


def test_targets_by_hand():
    # [0, 1000): int(100 x 1000 / 1920) = 52, int(200 x 1000 / 1080) = 185, int(300 x 1000 / 1920) = 156,
    # int(260 x 1000 / 1080) = 240.
    assert grounding_target(SHOT, "point") == "(104, 212)"  # the stored answer, unchanged
    assert grounding_target(SHOT, "qwen2_box") == "<|box_start|>(52,185),(156,240)<|box_end|>"
    assert grounding_target(SHOT, "qwen3_rel") == '{"bbox_2d": [52, 185, 156, 240]}'
    # On the 1316 x 728 image the model sees: 100 x 1316 / 1920 = 68.54 -> 69, 200 x 728 / 1080 = 134.81
    # -> 135, 300 x 1316 / 1920 = 205.63 -> 206, 260 x 728 / 1080 = 175.26 -> 175.
    assert grounding_target(SHOT, "qwen25_abs", (1316, 728)) == '{"bbox_2d": [69, 135, 206, 175]}'
    with pytest.raises(ImageLoRAError, match="image size"):
        grounding_target(SHOT, "qwen25_abs")
    # A record with a point and no box: the JSON formats' point_2d (200 x 1316 / 1920 = 137.08 -> 137,
    # 230 x 728 / 1080 = 155.04 -> 155; relative: 104, 212).
    pointed = {k: v for k, v in SHOT.items() if k != "bbox"}
    assert grounding_target(pointed, "qwen25_abs", (1316, 728)) == '{"point_2d": [137, 155]}'
    assert grounding_target(pointed, "qwen3_rel") == '{"point_2d": [104, 212]}'
    assert grounding_prompt(pointed, "qwen3_rel").endswith("Output its point coordinates in JSON format.")


def test_prompts_and_sample_text():
    assert grounding_prompt(SHOT, "point") == "Click the Save button."
    assert (
        grounding_prompt(SHOT, "qwen25_abs")
        == "Click the Save button. Output its bbox coordinates in JSON format."
    )
    assert (
        grounding_prompt(SHOT, "qwen2_box")
        == "Click the Save button. Output the bounding box of the element."
    )
    processor = build_tiny_vlm("qwen2_5_vl", seed=0)[1]
    assert sample_text(SHOT, "qwen25_abs", processor, BUDGET) == (
        "Click the Save button. Output its bbox coordinates in JSON format.",
        '{"bbox_2d": [69, 135, 206, 175]}',
    )
    referring = {
        **SHOT,
        "task": "referring",
        "instruction": "What is in (1, 2, 3, 4)?",
        "answer": "button: Save",
    }
    for fmt in ANSWER_FORMATS:  # only grounding records change
        assert sample_text(referring, fmt, processor, BUDGET) == ("What is in (1, 2, 3, 4)?", "button: Save")
    with pytest.raises(ValueError, match="bad bbox"):
        sample_text({**SHOT, "bbox": [300, 200, 100, 260]}, "qwen3_rel")
    with pytest.raises(KeyError):
        sample_text({k: v for k, v in SHOT.items() if k != "width"}, "qwen2_box")


@pytest.mark.parametrize(
    ("text", "fmt", "click"),
    [
        ('{"bbox_2d": [69, 135, 206, 175]}', "qwen25_abs", (137.5, 155.0)),
        ('The button is at {"bbox_2d": [69, 135, 206, 175]}.', "qwen25_abs", (137.5, 155.0)),
        (
            '```json\n[\n  {"bbox_2d": [69, 135, 206, 175], "label": "Save"}\n]\n```',
            "qwen25_abs",
            (137.5, 155.0),
        ),
        ('{"point_2d": [137, 155]}', "qwen25_abs", (137.0, 155.0)),
        ("{'bbox_2d': [52, 185, 156, 240]}", "qwen3_rel", (104.0, 212.5)),
        ("[52, 185, 156, 240]", "qwen3_rel", (104.0, 212.5)),
        ("Sure: (52,185),(156,240)", "qwen3_rel", (104.0, 212.5)),
        ("<|box_start|>(52,185),(156,240)<|box_end|>", "qwen2_box", (104.0, 212.5)),
        ("(52,185),(156,240)", "qwen2_box", (104.0, 212.5)),  # box tokens dropped by the decoder
        ("the element: ( 52 , 185 ) , ( 156 , 240 ) done", "qwen2_box", (104.0, 212.5)),
        ("(104, 212)", "qwen2_box", (104.0, 212.0)),
        ("(104, 212) or (900, 900)", "qwen2_box", (104.0, 212.0)),
        ('{"bbox_2d": [52, 185, 156, 240]}', "qwen2_box", (104.0, 212.5)),
        ("(104, 212) or (900, 900)", "point", (104.0, 212.0)),
        ('{"point_2d": [104, 212]}', "point", None),  # point stays strict: "(x, y)" only
        ("no idea", "qwen25_abs", None),
        ('{"bbox_2d": [1, 2, 3]}', "qwen3_rel", None),
        ("", "qwen2_box", None),
    ],
)
def test_parse_click(text, fmt, click):
    assert parse_click(text, fmt) == click


def test_click_pixels_back_on_the_stored_image():
    # (137.5, 155) on the 1316 x 728 image -> (137.5 x 1920 / 1316, 155 x 1080 / 728) on the 1920 x 1080 one.
    x, y = click_pixels('{"bbox_2d": [69, 135, 206, 175]}', SHOT, "qwen25_abs", (1316, 728))
    assert (x, y) == pytest.approx((200.608, 229.945), abs=1e-3)
    assert click_pixels("(104, 212)", SHOT, "point") == pytest.approx((104 * 1.92, 212 * 1.08))
    assert click_pixels("nothing", SHOT, "qwen3_rel") is None


@pytest.mark.parametrize("fmt", ANSWER_FORMATS)
def test_every_format_round_trips_on_synth_screens(fmt):
    """Each synth record's target in `fmt`, parsed back, clicks inside its box."""
    from imagelora_dist.eval.metrics import grounding_hit

    processor = build_tiny_vlm("qwen2_5_vl", seed=0)[1]
    spec = SynthSpec(num_samples=12, width=448, height=336, seed=7, tasks=("grounding",))
    for i in range(spec.num_samples):
        raw = make_sample(spec, i)
        raw["json"] = json.dumps(raw["json"]).encode()
        record = decode_sample(raw)["record"]
        size = model_image_size(processor, record["width"], record["height"], 224 * 224)
        target = grounding_target(record, fmt, size)
        assert grounding_hit(target, record, fmt, size), (fmt, target, record["bbox"])


def test_collator_builds_labels_in_the_format():
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    image = Image.new("RGB", (640, 360), (240, 240, 240))
    record = {**SHOT, "width": 640, "height": 360, "bbox": [64, 36, 128, 72]}
    decoded = [{"image": image, "record": record}]
    budget = 200 * 200
    point = BatchCollator(processor, (), max_pixels=budget)(decoded)
    same = BatchCollator(processor, (), max_pixels=budget, answer_format="point")(decoded)
    assert all(point["inputs"][k].equal(same["inputs"][k]) for k in point["inputs"])

    out = BatchCollator(processor, (), max_pixels=budget, answer_format="qwen25_abs")(decoded)
    ids, labels = out["inputs"]["input_ids"][0], out["inputs"]["labels"][0]
    answer = processor.tokenizer.decode(ids[labels != -100])
    w, h = model_image_size(processor, 640, 360, budget)
    # 64 x w / 640 etc., rounded half up; this image's sides scale by the same factor.
    expected = [math.floor(v + 0.5) for v in (64 * w / 640, 36 * h / 360, 128 * w / 640, 72 * h / 360)]
    assert answer.startswith('{"bbox_2d": [' + ", ".join(map(str, expected)) + "]}")
    prompt = processor.tokenizer.decode(ids[labels == -100])
    assert "Output its bbox coordinates in JSON format." in prompt

    # A grounding record whose box cannot be read is dropped and counted, never fatal.
    bad = {"image": image, "record": {**record, "bbox": "nonsense"}}
    collator = BatchCollator(processor, (), max_pixels=budget, answer_format="qwen3_rel")
    out = collator([bad, *decoded])
    assert out["num_samples"] == 1 and out["malformed"] == 1 and collator.malformed == 1


def test_qwen25_abs_needs_a_qwen_processor():
    processor = build_tiny_vlm("llava", seed=0)[1]
    with pytest.raises(ImageLoRAError, match="qwen25_abs needs a Qwen2-VL-family image processor"):
        BatchCollator(processor, (), answer_format="qwen25_abs")
    BatchCollator(processor, (), answer_format="qwen2_box")  # text-only formats work with any processor
    # `auto` is resolved from the config's family before a collator or eval sees it.
    with pytest.raises(ImageLoRAError, match="resolve auto with resolve_answer_format"):
        BatchCollator(processor, (), answer_format="auto")
    from imagelora_dist.eval import evaluate

    with pytest.raises(ImageLoRAError, match="unknown answer format 'bogus'"):
        evaluate(None, processor, [], answer_format="bogus")


def test_records_with_breakdown_fields_decode():
    """Records carrying the breakdown fields of `imagelora-dist shard` (data_source, application) decode."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    record = {**SHOT, "data_source": "web", "application": "shop"}
    out = decode_sample({"__key__": "k", "png": buf.getvalue(), "json": json.dumps(record).encode()})
    assert out["record"]["data_source"] == "web"


def test_point_only_flag_answers_the_point():
    """`"point_only": true` (written by `shard`): the point, not the stored hit box, in every format."""
    from imagelora_dist.eval.metrics import grounding_hit

    processor = build_tiny_vlm("qwen2_5_vl", seed=0)[1]
    # A 12 x 12 px hit box around (200, 230) in the 1920 x 1080 shot; the stored answer is the point.
    flagged = {**SHOT, "bbox": [194, 224, 206, 236], "point_only": True}
    # normalize_point: int(200 x 1000 / 1920) = 104, int(230 x 1000 / 1080) = 212.
    assert grounding_target(flagged, "point") == "(104, 212)"
    assert grounding_target(flagged, "qwen2_box") == "(104, 212)"
    assert grounding_target(flagged, "qwen3_rel") == '{"point_2d": [104, 212]}'
    assert grounding_target(flagged, "qwen25_abs", (1316, 728)) == '{"point_2d": [137, 155]}'
    assert grounding_prompt(flagged, "qwen25_abs").endswith("Output its point coordinates in JSON format.")
    # Without the flag (or with it false) the same record is a 12 x 12 box.
    for record in ({**flagged, "point_only": False}, {k: v for k, v in flagged.items() if k != "point_only"}):
        assert grounding_target(record, "qwen3_rel") == '{"bbox_2d": [101, 207, 107, 218]}'
        assert grounding_prompt(record, "qwen3_rel").endswith("Output its bbox coordinates in JSON format.")
    # Scoring stays click-inside-box: the point's answer hits, a click 10 px (5 per mille) left misses.
    assert grounding_hit('{"point_2d": [104, 212]}', flagged, "qwen3_rel")
    assert not grounding_hit('{"point_2d": [99, 212]}', flagged, "qwen3_rel")
    size = model_image_size(processor, 1920, 1080, BUDGET)
    _, answer = sample_text(flagged, "qwen25_abs", processor, BUDGET)
    assert answer == '{"point_2d": [137, 155]}' and grounding_hit(answer, flagged, "qwen25_abs", size)
    # A flagged record without its point cannot be answered: the collator's `malformed`.
    with pytest.raises(KeyError):
        sample_text({k: v for k, v in flagged.items() if k != "point"}, "qwen3_rel")


def test_malformed_count_reaches_the_reader_stats(tmp_path):
    """ShardStream moves the collator's `malformed` count into each batch's stats, as it does `too_long`."""
    from imagelora_dist.data.reader import ShardReader, ShardStream
    from imagelora_dist.data.shards import ShardIndex, write_shard

    buf = io.BytesIO()
    Image.new("RGB", (64, 36), (240, 240, 240)).save(buf, format="PNG")
    good = {**SHOT, "width": 64, "height": 36, "bbox": [6, 4, 20, 12], "point": [13, 8]}
    records = [good, {**good, "id": "bad", "bbox": "nonsense"}, {**good, "id": "s2"}]
    samples = [{"__key__": f"k{i}", "png": buf.getvalue(), "json": r} for i, r in enumerate(records)]
    ShardIndex([write_shard(tmp_path / "d-000000.tar", samples)]).write(tmp_path)
    processor = build_tiny_vlm("qwen2_5_vl", seed=0)[1]
    reader = ShardReader.from_path(tmp_path, 3, shuffle_buffer=0, shuffle_shards=False)
    collator = BatchCollator(processor, (), answer_format="qwen3_rel")
    batches = list(ShardStream(reader, collate_fn=collator))
    assert len(batches) == 1
    batch = batches[0]
    assert batch["stats"]["malformed"] == 1 and batch["stats"]["too_long"] == 0
    assert "malformed" not in batch and batch["num_samples"] == 2
