"""`shapes` screens: the records agree with the pixels, for the study's tasks and the pre-training tasks."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fidelity.pretrain_tasks import (
    ELEMENT_TYPE,
    POSITION,
    READ_LABEL,
    READ_TEXT,
    PretrainSpec,
    make_pretrain_sample,
    position_name,
)
from fidelity.shapes import COLORS, SHAPES, SHAPES_STYLE, render_shapes_screen
from imagelora_dist.config import RunConfig
from imagelora_dist.data.synth import SynthSpec, make_sample
from imagelora_dist.data.tasks import COORD_SCALE, parse_point
from imagelora_dist.errors import ImageLoRAError


def _colour_at(img: Image.Image, x: float, y: float) -> str | None:
    """The colour name whose RGB is exactly the pixel at (x, y); None for the background."""
    pixel = img.getpixel((int(x), int(y)))
    return next((name for name, rgb in COLORS.items() if rgb == pixel), None)


def _pixel(point: tuple[int, int], w: int, h: int) -> tuple[float, float]:
    return (point[0] + 0.5) * w / COORD_SCALE, (point[1] + 0.5) * h / COORD_SCALE


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**63 - 1),
    size=st.sampled_from([(336, 252), (224, 168), (448, 336)]),
    n=st.integers(1, 8),
)
def test_shapes_are_disjoint_unique_in_colour_and_drawn_where_the_record_says(seed, size, n):
    w, h = size
    img, elements = render_shapes_screen(seed, w, h, n)
    assert 1 <= len(elements) <= min(n, len(COLORS))
    assert len({e.text for e in elements}) == len(elements)
    for i, a in enumerate(elements):
        assert a.type in SHAPES and a.name == f"{a.text} {a.type}"
        x0, y0, x1, y1 = a.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        # The box centre lies inside every shape (for a triangle: half the base width at mid-height).
        assert _colour_at(img, (x0 + x1) / 2, (y0 + y1) / 2) == a.text
        for b in elements[i + 1 :]:
            assert (
                a.box[2] <= b.box[0] or b.box[2] <= a.box[0] or a.box[3] <= b.box[1] or b.box[3] <= a.box[1]
            )


def test_shapes_screen_is_a_function_of_the_seed():
    a, ea = render_shapes_screen(5, 336, 252, 4)
    b, eb = render_shapes_screen(5, 336, 252, 4)
    c, _ = render_shapes_screen(6, 336, 252, 4)
    assert a.tobytes() == b.tobytes() and ea == eb
    assert a.tobytes() != c.tobytes()


def test_study_samples_on_shapes_screens_point_at_the_named_shape():
    spec = SynthSpec(
        num_samples=40, width=336, height=252, min_elements=2, max_elements=5, style=SHAPES_STYLE
    )
    seen = set()
    for i in range(spec.num_samples):
        sample = make_sample(spec, i)
        rec, img = sample["json"], Image.open(io.BytesIO(sample["png"])).convert("RGB")
        seen.add(rec["task"])
        colour, shape = rec["element_text"], rec["element_type"]
        if rec["task"] == "grounding":
            assert f"{colour} {shape}" in rec["instruction"]
            x, y = _pixel(parse_point(rec["answer"]), rec["width"], rec["height"])
            assert _colour_at(img, x, y) == colour  # an independent check: the click lands on the shape
        else:
            assert rec["answer"] == f"{shape}: {colour}" and "shape and colour" in rec["instruction"]
    assert seen == {"grounding", "referring"}


def test_pretrain_samples_on_shapes_screens_agree_with_the_pixels():
    spec = PretrainSpec(
        num_samples=50, width=336, height=252, min_elements=2, max_elements=5, style=SHAPES_STYLE
    )
    checked = set()
    for i in range(spec.num_samples):
        sample = make_pretrain_sample(spec, i)
        rec = sample["json"]
        if rec["text_only"]:
            continue
        img = Image.open(io.BytesIO(sample["png"])).convert("RGB")
        task = rec["task"]
        checked.add(task)
        if task == READ_LABEL:
            point = parse_point(rec["instruction"])
            assert _colour_at(img, *_pixel(point, 336, 252)) == rec["answer"]
        elif task == ELEMENT_TYPE:
            assert rec["answer"] in SHAPES and rec["element_text"] in rec["instruction"]
        elif task == POSITION:
            assert rec["answer"] == position_name(tuple(rec["bbox"]), 336, 252)
        elif task == READ_TEXT:
            names = rec["answer"].split(" | ")
            assert all(n.split(" ")[0] in COLORS and n.split(" ")[1] in SHAPES for n in names)
            assert len(set(names)) == len(names) >= 1
    assert checked == {READ_LABEL, ELEMENT_TYPE, POSITION, READ_TEXT}


def test_the_shapes_style_loads_by_its_path_and_the_package_does_not_know_it():
    # The package never imports research code: its table has no `shapes`, and the path resolves here.
    from fidelity import shapes
    from imagelora_dist.data.synth import BUILTIN_STYLES, resolve_style

    assert "shapes" not in BUILTIN_STYLES and resolve_style(SHAPES_STYLE) is shapes.STYLE
    with pytest.raises(ImageLoRAError, match=r"style='shapes'.*known: \['gui'\]"):
        SynthSpec(num_samples=2, style="shapes")
    with pytest.raises(ValueError, match="style"):
        RunConfig.model_validate({"data": {"synth": {"style": "shapes"}}})


def test_default_style_stays_out_of_config_dumps():
    # Stage hashes come from dumps: configs without a style must hash as they did before it existed.
    assert "style" not in RunConfig().model_dump()["data"]["synth"]
    shapes = RunConfig.model_validate({"data": {"synth": {"style": SHAPES_STYLE}}})
    assert shapes.model_dump()["data"]["synth"]["style"] == SHAPES_STYLE


def test_pipeline_synthesizes_again_when_the_synth_spec_changes(tmp_path):
    # A study edited from 256 to 1,200 samples (or gui -> shapes) must not reuse the old shards silently.
    from imagelora_dist.config import load_config
    from imagelora_dist.data.shards import ShardIndex
    from imagelora_dist.pipeline import ensure_train_shards, eval_shards

    base = [
        f"output_dir={tmp_path}",
        "data.synth.samples_per_shard=4",
        "data.synth.workers=1",
        "eval.synth_samples=4",
    ]
    logs: list[str] = []
    first = ensure_train_shards(load_config(None, [*base, "data.synth.num_samples=6"]), log=logs.append)
    again = ensure_train_shards(load_config(None, [*base, "data.synth.num_samples=6"]), log=logs.append)
    assert first == again and ShardIndex.read(first).total_samples == 6
    assert sum(m.startswith("[data]") for m in logs) == 1  # the second call reused the set
    cfg = load_config(None, [*base, "data.synth.num_samples=9", f"data.synth.style={SHAPES_STYLE}"])
    ensure_train_shards(cfg, log=logs.append)
    index = ShardIndex.read(first)
    assert index.total_samples == 9 and index.meta["spec"]["style"] == SHAPES_STYLE
    assert any("synthesized from another data.synth spec" in m for m in logs)
    assert sorted(p.name for p in tmp_path.joinpath("data", "train").glob("*.tar")) == [
        "train-000000.tar", "train-000001.tar", "train-000002.tar"
    ]  # fmt: skip
    held_out = eval_shards(cfg, log=logs.append)
    assert ShardIndex.read(held_out).meta["spec"]["style"] == SHAPES_STYLE
    assert (
        ShardIndex.read(eval_shards(load_config(None, base), log=logs.append)).meta["spec"]["style"] == "gui"
    )


def test_opt_in_format_tasks_point_at_and_describe_the_element_the_pixels_show():
    from fidelity.pretrain_tasks import DESCRIBE_AT, POINT

    spec = PretrainSpec(num_samples=24, width=336, height=252, min_elements=2, max_elements=4, style=SHAPES_STYLE,
                        tasks=(POINT, DESCRIBE_AT))  # fmt: skip
    for i in range(spec.num_samples):
        sample = make_pretrain_sample(spec, i)
        rec, img = sample["json"], Image.open(io.BytesIO(sample["png"])).convert("RGB")
        if rec["task"] == POINT:
            assert rec["element_text"] in rec["instruction"] and rec["element_type"] in rec["instruction"]
            point = parse_point(rec["answer"])
        else:
            point = parse_point(rec["instruction"])
            assert rec["answer"] == f"{rec['element_type']}: {rec['element_text']}"
        assert _colour_at(img, *_pixel(point, 336, 252)) == rec["element_text"]
    # On GUI screens the same tasks name labels and icons.
    gui = PretrainSpec(num_samples=6, tasks=(POINT, DESCRIBE_AT))
    recs = [make_pretrain_sample(gui, i)["json"] for i in range(6)]
    assert all(parse_point(r["answer"] if r["task"] == POINT else r["instruction"]) for r in recs)


def test_pretrain_tasks_config_is_checked_and_stays_out_of_default_dumps():
    # (How the experiment's pretrain_spec reads it is tested with the experiment, experiments/fidelity.)
    assert "pretrain_tasks" not in RunConfig().model_dump()["data"]
    cfg = RunConfig.model_validate({"data": {"pretrain_tasks": ["point", "arithmetic"]}})
    assert cfg.data.pretrain_tasks == ("point", "arithmetic")
    assert cfg.model_dump()["data"]["pretrain_tasks"] == ("point", "arithmetic")
    with pytest.raises(ValueError, match="pretrain_tasks"):
        RunConfig.model_validate({"data": {"pretrain_tasks": ["pointing"]}})


@pytest.mark.parametrize("style", [SHAPES_STYLE, "gui"])
def test_pretrain_phrasing_asks_the_same_questions_in_the_pretraining_words(style):
    # The same screens, targets and answers as the downstream set; only the instruction's words change, to
    # the pre-training tasks' `point` / `describe_at` (a task the base already knows).
    kw = {
        "num_samples": 30,
        "width": 336,
        "height": 252,
        "min_elements": 2,
        "max_elements": 4,
        "style": style,
    }
    down, pre = SynthSpec(**kw), SynthSpec(**kw, phrasing="pretrain")
    for i in range(down.num_samples):
        a, b = make_sample(down, i), make_sample(pre, i)
        assert a["png"] == b["png"]
        ra, rb = a["json"], b["json"]
        assert {k: v for k, v in ra.items() if k != "instruction"} == {
            k: v for k, v in rb.items() if k != "instruction"
        }
        assert ra["instruction"] != rb["instruction"]
        if rb["task"] == "grounding":
            assert rb["instruction"].startswith(("Give the coordinates of ", "Where exactly is "))
            if style == SHAPES_STYLE:
                assert f"the {rb['element_text']} {rb['element_type']}" in rb["instruction"]
        else:  # the element's centre in the answer scale, computed here from its box
            x0, y0, x1, y1 = rb["bbox"]
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            point = parse_point(rb["instruction"])
            assert point == (int(cx * COORD_SCALE / 336), int(cy * COORD_SCALE / 252))
            assert rb["instruction"].startswith(("Describe the element at ", "What is at "))
            if style == SHAPES_STYLE:
                img = Image.open(io.BytesIO(b["png"])).convert("RGB")
                assert _colour_at(img, *_pixel(point, 336, 252)) == rb["element_text"]
    with pytest.raises(ImageLoRAError, match=r"phrasing='casual'.*known: \['downstream', 'pretrain'\]"):
        SynthSpec(num_samples=2, phrasing="casual")


def test_phrasing_reaches_the_spec_stays_out_of_default_dumps_and_old_sets_still_match(tmp_path):
    import json

    from imagelora_dist.config import load_config
    from imagelora_dist.data.shards import ShardIndex
    from imagelora_dist.pipeline import ensure_train_shards, synth_spec

    assert "phrasing" not in RunConfig().model_dump()["data"]["synth"]
    with pytest.raises(ValueError, match="phrasing"):
        RunConfig.model_validate({"data": {"synth": {"phrasing": "casual"}}})
    base = [f"output_dir={tmp_path}", "data.synth.num_samples=4", "data.synth.workers=1"]
    assert synth_spec(load_config(None, [*base, "data.synth.phrasing=pretrain"])).phrasing == "pretrain"
    logs: list[str] = []
    path = ensure_train_shards(load_config(None, base), log=logs.append)
    index_file = tmp_path / "data" / "train" / "index.json"
    # a set synthesized before `phrasing` existed records no such key: it must still be reused
    assert "phrasing" not in json.loads(index_file.read_text())["meta"]["spec"]
    before = index_file.read_bytes()
    ensure_train_shards(load_config(None, base), log=logs.append)
    data_logs = [m for m in logs if m.startswith("[data]")]
    assert index_file.read_bytes() == before and len(data_logs) == 1
    ensure_train_shards(load_config(None, [*base, "data.synth.phrasing=pretrain"]), log=logs.append)
    assert ShardIndex.read(path).meta["spec"]["phrasing"] == "pretrain"
    assert "synthesized from another data.synth spec" in [m for m in logs if m.startswith("[data]")][-1]
