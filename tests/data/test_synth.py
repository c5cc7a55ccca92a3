"""Synthetic GUI screenshots: records per the shard format, sound boxes, determinism, sharding, errors,
and screen styles from outside the package named by import path."""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from imagelora_dist.config import RunConfig, load_config
from imagelora_dist.data.shards import INDEX_NAME, RECORD_FIELDS, ShardIndex, read_shard_raw, shard_name
from imagelora_dist.data.synth import (
    ELEMENT_TYPES,
    Element,
    ScreenStyle,
    SynthSpec,
    context_preamble,
    make_sample,
    render_screen,
    resolve_style,
    synthesize,
)
from imagelora_dist.data.synth.styles import style_module
from imagelora_dist.data.tasks import COORD_SCALE, parse_point, referring_answer, referring_instruction
from imagelora_dist.errors import ImageLoRAError

SPEC = SynthSpec(num_samples=10, samples_per_shard=3, seed=7, prefix="t")


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**63 - 1),
    size=st.sampled_from([(448, 336), (200, 150), (640, 480), (336, 448)]),
    n=st.integers(1, 16),
)
def test_screen_elements_are_inside_disjoint_and_unambiguous(seed, size, n):
    w, h = size
    img, elements = render_screen(seed, w, h, n)
    assert img.size == (w, h) and img.mode == "RGB"
    assert elements
    assert sum(e.region == "content" for e in elements) <= n
    for e in elements:
        x0, y0, x1, y1 = e.box
        assert all(isinstance(v, int) for v in e.box)
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, e
        assert e.type in ELEMENT_TYPES
        assert e.text or (e.type == "icon" and e.name)
    for i, a in enumerate(elements):
        for b in elements[i + 1 :]:
            assert not _overlap(a.box, b.box), (a, b)
    texts = [(e.type, e.text.lower()) for e in elements if e.text]
    assert len(texts) == len(set(texts))
    icons = [e.name for e in elements if e.type == "icon"]
    assert len(icons) == len(set(icons))


def test_render_screen_is_a_function_of_the_seed():
    a, ea = render_screen(3, 448, 336, 8)
    b, eb = render_screen(3, 448, 336, 8)
    c, _ = render_screen(4, 448, 336, 8)
    assert a.tobytes() == b.tobytes() and ea == eb
    assert a.tobytes() != c.tobytes()


def test_records_follow_the_shard_format():
    spec = SynthSpec(num_samples=60, seed=1)
    tasks = set()
    for index in range(40):
        sample = make_sample(spec, index)
        assert set(sample) == {"__key__", "png", "json"}
        assert sample["__key__"] == f"{index:09d}"
        rec = sample["json"]
        assert tuple(rec) == RECORD_FIELDS
        for key in ("id", "task", "instruction", "answer", "element_type", "element_text", "source"):
            assert isinstance(rec[key], str), key
        assert rec["source"] == "synth" and rec["instruction"] and rec["answer"]
        assert (rec["width"], rec["height"]) == (spec.width, spec.height)
        with Image.open(io.BytesIO(sample["png"])) as img:
            assert img.format == "PNG" and img.size == (rec["width"], rec["height"])
        x0, y0, x1, y1 = rec["bbox"]
        assert all(isinstance(v, int) for v in rec["bbox"])
        assert 0 <= x0 < x1 <= rec["width"] and 0 <= y0 < y1 <= rec["height"]
        px, py = rec["point"]
        assert (px, py) == ((x0 + x1) / 2, (y0 + y1) / 2)
        assert rec["element_type"] in ELEMENT_TYPES
        tasks.add(rec["task"])
        if rec["task"] == "grounding":
            nx, ny = parse_point(rec["answer"])
            assert 0 <= nx < COORD_SCALE and 0 <= ny < COORD_SCALE
            # De-normalised to the centre of its 1/1000 cell, the answer lands inside the box.
            assert x0 <= (nx + 0.5) * rec["width"] / COORD_SCALE <= x1
            assert y0 <= (ny + 0.5) * rec["height"] / COORD_SCALE <= y1
            if rec["element_text"]:
                assert rec["element_text"] in rec["instruction"]
            else:
                assert rec["element_type"] == "icon"
                assert re.search(r"\b(icon|button)\b", rec["instruction"]), rec["instruction"]
        else:
            assert rec["instruction"] == referring_instruction(rec["bbox"], rec["width"], rec["height"])
            assert rec["element_text"], "referring targets have text to answer with"
            assert rec["answer"] == referring_answer(rec["element_type"], rec["element_text"])
    assert tasks == {"grounding", "referring"}
    ids = [make_sample(spec, i)["json"]["id"] for i in range(5)]
    assert len(set(ids)) == 5


def test_task_selection_and_seed():
    only = SynthSpec(num_samples=10, tasks=("referring",))
    assert {make_sample(only, i)["json"]["task"] for i in range(10)} == {"referring"}
    a, b = SynthSpec(num_samples=4, seed=0), SynthSpec(num_samples=4, seed=1)
    assert make_sample(a, 0)["png"] == make_sample(a, 0)["png"]
    assert make_sample(a, 0)["png"] != make_sample(b, 0)["png"]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6, 7, 11, 23, 64, 300])
def test_instruction_words_add_exactly_that_many_words(k):
    plain, padded = SynthSpec(num_samples=5), SynthSpec(num_samples=5, instruction_words=(k, k))
    for index in range(5):
        a, b = make_sample(plain, index), make_sample(padded, index)
        # Only the instruction grows: same screen, target and answer.
        assert a["png"] == b["png"] and a["json"]["answer"] == b["json"]["answer"]
        base, full = a["json"]["instruction"], b["json"]["instruction"]
        assert full.endswith(" " + base)
        assert len(full.split()) == len(base.split()) + k


def test_instruction_words_range_and_preamble_reads_as_sentences():
    spec, plain = SynthSpec(num_samples=30, instruction_words=(10, 40)), SynthSpec(num_samples=30)
    extra = [
        len(make_sample(spec, i)["json"]["instruction"].split())
        - len(make_sample(plain, i)["json"]["instruction"].split())
        for i in range(30)
    ]
    assert all(10 <= e <= 40 for e in extra) and len(set(extra)) > 5
    import random

    for n in range(0, 80):
        text = context_preamble(random.Random(n), n)
        assert len(text.split()) == n
        assert text == "" or re.fullmatch(r"([A-Z][^.?!]*[.?!] ?)+", text), text


def _tree_bytes(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_synthesize_same_bytes_for_any_worker_count_and_index_matches(tmp_path):
    lines: list[str] = []
    index = synthesize(SPEC, tmp_path / "w1", workers=1, progress=lines.append)
    synthesize(SPEC, tmp_path / "w2", workers=2, progress=None)
    one, two = _tree_bytes(tmp_path / "w1"), _tree_bytes(tmp_path / "w2")
    assert one == two
    assert sorted(one) == [INDEX_NAME] + [shard_name("t", i) for i in range(4)]
    assert len(lines) == 4 and re.search(r"shards 4/4, samples 10/10, \d+ samples/s", lines[-1])

    read = ShardIndex.read(tmp_path / "w1")
    assert read.to_dict() == index.to_dict()
    assert [s.samples for s in read.shards] == [3, 3, 3, 1] and read.total_samples == 10
    assert read.meta["created_by"] == "imagelora-dist synth"
    assert SynthSpec(**read.meta["spec"]) == SPEC
    keys = []
    for info, url in zip(read.shards, read.urls(tmp_path / "w1"), strict=True):
        samples = read_shard_raw(url)
        assert len(samples) == info.samples and (tmp_path / "w1" / info.url).stat().st_size == info.bytes
        for s in samples:
            assert set(s) == {"__key__", "png", "json"}
            rec = json.loads(s["json"])
            assert tuple(rec) == RECORD_FIELDS
            keys.append(s["__key__"])
            # Each shard member is exactly make_sample's output: sharding does not touch the bytes.
            assert s["png"] == make_sample(SPEC, int(s["__key__"]))["png"]
    assert keys == [f"{i:09d}" for i in range(10)]

    other = SynthSpec(num_samples=10, samples_per_shard=3, seed=8, prefix="t")
    synthesize(other, tmp_path / "s8", workers=1, progress=None)
    assert (tmp_path / "s8" / shard_name("t", 0)).read_bytes() != one[shard_name("t", 0)]


def test_synthesize_refuses_an_existing_dataset_unless_overwrite(tmp_path):
    synthesize(SPEC, tmp_path, workers=1, progress=None)
    with pytest.raises(ImageLoRAError, match="overwrite"):
        synthesize(SPEC, tmp_path, workers=1, progress=None)
    smaller = SynthSpec(num_samples=4, samples_per_shard=3, seed=7, prefix="t")
    index = synthesize(smaller, tmp_path, workers=1, progress=None, overwrite=True)
    assert index.total_samples == 4
    # Stale shards of the bigger run are gone: the directory holds exactly what the index lists.
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX_NAME, shard_name("t", 0), shard_name("t", 1)]
    with pytest.raises(ImageLoRAError, match="workers"):
        synthesize(SPEC, tmp_path / "x", workers=0, progress=None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_samples", 0),
        ("num_samples", 2.5),
        ("samples_per_shard", 0),
        ("width", 10),
        ("height", 100_000),
        ("min_elements", 0),
        ("max_elements", 1000),
        ("instruction_words", (5, 2)),
        ("instruction_words", (-1, 2)),
        ("instruction_words", (1,)),
        ("tasks", ()),
        ("tasks", ("grounding", "captioning")),
        ("tasks", ("grounding", "grounding")),
        ("seed", "abc"),
        ("seed", True),
        ("prefix", ""),
        ("prefix", "a/b"),
    ],
)
def test_bad_spec_values_raise_naming_the_field(field, value):
    with pytest.raises(ImageLoRAError) as err:
        SynthSpec(**{"num_samples": 4, field: value})
    msg = str(err.value)
    assert f"{field}=" in msg and "\n" not in msg


def test_spec_accepts_lists_and_checks_min_max():
    spec = SynthSpec(num_samples=3, instruction_words=[1, 2], tasks=["grounding"])
    assert spec.instruction_words == (1, 2) and spec.tasks == ("grounding",)
    with pytest.raises(ImageLoRAError, match="max_elements"):
        SynthSpec(num_samples=3, min_elements=5, max_elements=4)
    assert SynthSpec(num_samples=513).num_shards == 3


# --- a screen style from outside the package -------------------------------------------------------------

BAR_COLOURS = ((200, 40, 40), (40, 150, 60), (40, 80, 200), (220, 180, 20))


def _render_bars(seed: int, width: int, height: int, n_elements: int) -> tuple[Image.Image, list[Element]]:
    """Up to four vertical bars, each in a colour of its own, recorded as buttons "Bar 0" .. "Bar 3"."""
    rng = random.Random(seed)
    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    n = min(n_elements, len(BAR_COLOURS))
    slot = width // n
    elements = []
    for k in range(n):
        x0 = k * slot + rng.randint(0, slot // 4)
        box = (x0, height // 4, x0 + slot // 2, 3 * height // 4)
        d.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=BAR_COLOURS[k])
        elements.append(Element("button", f"Bar {k}", box))
    return img, elements


def _press_bar(rng: random.Random, el: Element) -> str:
    return f"Press the bar labelled {el.text}."


BARS = ScreenStyle(render=_render_bars, grounding_instruction=_press_bar)
NOT_A_STYLE = SPEC


@pytest.fixture
def bars(monkeypatch):
    """The import path of BARS by this file's name, which a fresh worker process resolves the same way."""
    # Whatever module name pytest gave this file, "test_synth" is importable from its directory.
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    return f"{Path(__file__).stem}:BARS"


def _colour_at_answer(sample: dict) -> tuple[int, int, int]:
    rec = sample["json"]
    x, y = parse_point(rec["answer"])
    img = Image.open(io.BytesIO(sample["png"])).convert("RGB")
    return img.getpixel(
        (int((x + 0.5) * rec["width"] / COORD_SCALE), int((y + 0.5) * rec["height"] / COORD_SCALE))
    )


def test_a_style_named_by_path_renders_its_screens_with_its_words(bars):
    spec = SynthSpec(num_samples=12, min_elements=2, max_elements=4, seed=3, style=bars)
    assert style_module(bars) == "test_synth" and resolve_style(bars).render.__name__ == "_render_bars"
    tasks = set()
    for i in range(spec.num_samples):
        sample = make_sample(spec, i)
        rec = sample["json"]
        tasks.add(rec["task"])
        k = int(rec["element_text"].removeprefix("Bar "))
        if rec["task"] == "grounding":
            assert rec["instruction"] == f"Press the bar labelled Bar {k}."
            assert _colour_at_answer(sample) == BAR_COLOURS[k]  # the click lands on the named bar
        else:  # the style left the referring question at its default wording
            assert rec["instruction"] == referring_instruction(rec["bbox"], rec["width"], rec["height"])
            assert rec["answer"] == f"button: Bar {k}"
    assert tasks == {"grounding", "referring"}
    # phrasing `pretrain` uses the style's pre-training hooks: here the defaults, naming the label
    pre = SynthSpec(num_samples=12, min_elements=2, max_elements=4, seed=3, style=bars, phrasing="pretrain")
    for i in range(pre.num_samples):
        a, b = make_sample(spec, i), make_sample(pre, i)
        assert a["png"] == b["png"] and a["json"]["answer"] == b["json"]["answer"]
        if b["json"]["task"] == "grounding":
            assert re.fullmatch(
                r"(Give the coordinates of|Where exactly is) 'Bar \d'.*", b["json"]["instruction"]
            )


def test_workers_resolve_a_style_path_themselves_and_write_the_same_bytes(tmp_path, bars):
    spec = SynthSpec(num_samples=6, samples_per_shard=2, min_elements=2, max_elements=4, seed=3, prefix="b",
                     style=bars)  # fmt: skip
    index = synthesize(spec, tmp_path / "w1", workers=1, progress=None)
    synthesize(spec, tmp_path / "w2", workers=2, progress=None)  # 3 shards: a pool of 2 spawned workers
    assert _tree_bytes(tmp_path / "w1") == _tree_bytes(tmp_path / "w2")
    assert index.meta["spec"]["style"] == bars and SynthSpec(**index.meta["spec"]) == spec
    read = ShardIndex.read(tmp_path / "w2")
    for url in read.urls(tmp_path / "w2"):
        for s in read_shard_raw(url):
            sample = make_sample(spec, int(s["__key__"]))
            assert s["png"] == sample["png"] and json.loads(s["json"]) == sample["json"]
            with Image.open(io.BytesIO(s["png"])) as img:  # bars on white, not a GUI window
                assert set(img.convert("RGB").getdata()) <= {(255, 255, 255), *BAR_COLOURS}


@pytest.mark.parametrize(
    ("style", "why"),
    [
        ("circles", "unknown style; known: ['gui'] or an import path 'package.module:ATTR'"),
        ("gui:", "unknown style"),
        ("my module:STYLE", "unknown style"),
        (3, "unknown style"),
        (
            "no_such_module_for_imagelora_tests:STYLE",
            "cannot import 'no_such_module_for_imagelora_tests' (Module",
        ),
        ("{here}:NO_SUCH_STYLE", "test_synth.NO_SUCH_STYLE has no such attribute, not a ScreenStyle"),
        ("{here}:NOT_A_STYLE", "test_synth.NOT_A_STYLE holds a SynthSpec, not a ScreenStyle"),
    ],
)
def test_a_bad_style_is_one_clear_error_naming_it(style, why, bars):
    if isinstance(style, str):
        style = style.format(here=bars.partition(":")[0])
    with pytest.raises(ImageLoRAError) as err:
        SynthSpec(num_samples=2, style=style)
    msg = str(err.value)
    assert msg.startswith(f"synth spec: style={style!r}: ") and why in msg and "\n" not in msg, msg


def test_config_takes_a_style_path_and_refuses_anything_else(bars):
    cfg = RunConfig.model_validate({"data": {"synth": {"style": bars}}})
    assert cfg.model_dump()["data"]["synth"]["style"] == bars
    for bad in ("circles", "pkg.mod", "pkg mod:X", ":X", "pkg..mod:X"):
        with pytest.raises(ImageLoRAError) as err:
            load_config(None, [f"data.synth.style={bad}"])
        msg = str(err.value)
        assert "data.synth.style: " in msg and f"(got {bad!r})" in msg and "package.module:ATTR" in msg
