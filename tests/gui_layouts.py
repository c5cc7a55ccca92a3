"""Tiny GUI-grounding datasets in the layouts they are published in, written by tests (no download).

Shared by the tests (`from gui_layouts import screenspot`; tests/ is on the path through its conftest).
Each function writes a few PIL screenshots and a handful of records into a folder and returns a `Layout`:
what to pass to `imagelora-dist shard` (input, image folder, box format) and what it must produce (the
sample count and, per instruction, the pixel box, point, grouping fields, image size and image bytes).

    screenspot      ScreenSpot: one JSON array per platform + screenspot_imgs/; [x, y, w, h] pixels
    screenspot_v2   ScreenSpot-v2: the same layout, *_v2.json + screenspotv2_image/
    screenspot_pro  ScreenSpot-Pro: annotations/{app}_{platform}.json + images/{app}_{platform}/;
                    [x0, y0, x1, y1] pixels, img_size, ui_type, platform, application, id
    hf_parquet      a Hugging Face export: data/test-0000N-of-00002.parquet, image {bytes, path} embedded,
                    [x0, y0, x1, y1] normalized to [0, 1], one row with a null data_source
    seeclick        SeeClick / OS-Atlas: a JSON array of screenshots, each with an `elements` list
                    (normalized xyxy boxes; one element also gives a point)
    point_only      a JSONL of clicks: `point` / `click` in pixels or normalized, no box

The expected boxes are the annotated pixel boxes the files were made from, not a re-run of the converter's
arithmetic. A point-only target's box is the point +- 1.5% of the image's width and height, clipped to
the image (the converter's documented choice, `ingest_records.POINT_BOX_HALF`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Expected:
    """What one converted sample must hold."""

    box: Box  # pixels, xyxy
    point: tuple[float, float]  # pixels: the source's point, else the box centre
    data_source: str
    application: str
    element_type: str
    size: tuple[int, int]  # (width, height) of the stored image
    image: bytes  # the source image's bytes (the shard stores them unchanged)


@dataclass
class Layout:
    """A dataset in one published layout and the samples `shard` must make of it."""

    name: str
    input: Path  # --input
    images: Path | None  # --images (None: embedded bytes, or paths relative to the input's folder)
    bbox_format: str  # --bbox-format
    expected: dict[str, Expected] = field(default_factory=dict)  # instruction -> sample
    files: list[Path] = field(default_factory=list)  # the annotation files written

    @property
    def count(self) -> int:
        """Samples the conversion must write."""
        return len(self.expected)

    @property
    def boxes(self) -> dict[str, Box]:
        """instruction -> expected pixel box."""
        return {k: v.box for k, v in self.expected.items()}

    def shard(self, out_dir: Path, **options: object) -> object:
        """Convert this layout with `imagelora_dist.data.convert.convert` (no progress output)."""
        from imagelora_dist.data.convert import ConvertOptions, convert

        opts = ConvertOptions(bbox_format=self.bbox_format, **options)  # type: ignore[arg-type]
        return convert(self.input, out_dir, opts, image_dir=self.images, progress=None)


def screenshot(size: tuple[int, int], boxes: list[Box], seed: int = 0, fmt: str = "PNG") -> bytes:
    """A small screen: a title bar and one filled, outlined control per box."""
    w, h = size
    img = Image.new("RGB", size, (236 - seed * 13 % 40, 238, 242))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, w - 1, max(8, h // 14)), fill=(60, 64, 72 + seed * 17 % 120))
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        colour = ((70 + 40 * i + seed * 29) % 256, (140 + 23 * i) % 256, (200 + 31 * seed) % 256)
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), fill=colour, outline=(20, 20, 20))
        draw.line((x0 + 2, (y0 + y1) / 2, max(x0 + 2, x1 - 3), (y0 + y1) / 2), fill=(250, 250, 250))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _centre(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _write_json(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False))
    return path


def _save(path: Path, data: bytes) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


# --- ScreenSpot and ScreenSpot-v2 ------------------------------------------------------------------

# platform file -> screenshots: (name, size, data_source, [(instruction, data_type, pixel xyxy box)])
_SCREENSPOT = {
    "mobile": [
        ("mobile_a1b2.png", (180, 320), "ios", [("open settings", "icon", (140, 20, 172, 52)),
                                                  ("tap the Wi-Fi row", "text", (10, 90, 170, 118))]),
        ("mobile_c3d4.png", (180, 320), "android", [("go back", "icon", (4, 24, 36, 56))]),
    ],
    "desktop": [
        ("pc_e5f6.png", (320, 200), "windows", [("close the window", "icon", (290, 0, 320, 16)),
                                                  ("choose File menu", "text", (4, 18, 40, 32))]),
    ],
    "web": [
        ("web_0a1b.png", (300, 240), "shop", [("add to cart", "text", (200, 150, 290, 178))]),
        ("web_2c3d.png", (300, 240), "gitlab", [("open the issues tab", "text", (20, 40, 96, 60))]),
    ],
}  # fmt: skip


def _screenspot(root: Path, name: str, file_suffix: str, images_dir: str) -> Layout:
    images = root / images_dir
    layout = Layout(name=name, input=root, images=images, bbox_format="xywh")
    for seed, (platform, screens) in enumerate(_SCREENSPOT.items()):
        records = []
        for k, (file, size, source, items) in enumerate(screens):
            data = _save(images / file, screenshot(size, [b for _, _, b in items], seed * 3 + k))
            for instruction, kind, (x0, y0, x1, y1) in items:
                records.append({"img_filename": file, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "instruction": instruction, "data_type": kind, "data_source": source})  # fmt: skip
                box = (x0, y0, x1, y1)
                layout.expected[instruction] = Expected(box, _centre(box), source, "", kind, size, data)
        layout.files.append(_write_json(root / f"screenspot_{platform}{file_suffix}.json", records))
    return layout


def screenspot(directory: Path) -> Layout:
    """ScreenSpot as published: screenspot_{mobile,desktop,web}.json arrays + screenspot_imgs/ (xywh)."""
    return _screenspot(Path(directory) / "screenspot", "screenspot", "", "screenspot_imgs")


def screenspot_v2(directory: Path) -> Layout:
    """ScreenSpot-v2 as published: screenspot_{mobile,desktop,web}_v2.json + screenspotv2_image/ (xywh)."""
    return _screenspot(Path(directory) / "screenspot_v2", "screenspot_v2", "_v2", "screenspotv2_image")


# --- ScreenSpot-Pro --------------------------------------------------------------------------------

# (application, platform, group, size, [(instruction, ui_type, pixel xyxy box)])
_PRO = [
    ("vscode", "macos", "Dev", (400, 250), [("open the extensions view", "icon", (2, 60, 22, 80)),
                                            ("select the terminal tab", "text", (120, 200, 180, 214))]),
    ("photoshop", "windows", "Creative", (420, 260), [("pick the lasso tool", "icon", (4, 80, 24, 100)),
                                                      ("open the Layers panel", "text", (340, 120, 416, 136)),
                                                      ("click Filter in the menu", "text", (150, 0, 190, 14))]),
]  # fmt: skip


def screenspot_pro(directory: Path) -> Layout:
    """ScreenSpot-Pro as published: annotations/{app}_{platform}.json + images/{app}_{platform}/ (xyxy)."""
    root = Path(directory) / "screenspot_pro"
    layout = Layout("screenspot_pro", input=root / "annotations", images=root / "images", bbox_format="xyxy")
    for seed, (app, platform, group, size, items) in enumerate(_PRO):
        rel = f"{app}_{platform}/screenshot_2024-11-0{seed + 1}_10-00-00.png"
        data = _save(root / "images" / rel, screenshot(size, [b for _, _, b in items], 10 + seed))
        records = []
        for i, (instruction, ui_type, box) in enumerate(items):
            records.append({"img_filename": rel, "bbox": list(box), "instruction": instruction,
                            "instruction_cn": "点击", "id": f"{app}_{platform}_{i}", "application": app,
                            "platform": platform, "img_size": list(size), "ui_type": ui_type,
                            "group": group})  # fmt: skip
            layout.expected[instruction] = Expected(box, _centre(box), platform, app, ui_type, size, data)
        layout.files.append(_write_json(root / "annotations" / f"{app}_{platform}.json", records))
    return layout


# --- a Hugging Face parquet export -----------------------------------------------------------------

# per parquet file: rows (file name, size, format, data_source or None, instruction, data_type, pixel box)
_HF = [
    [("ios_1.png", (200, 400), "PNG", "ios", "turn on airplane mode", "icon", (150, 50, 190, 90)),
     ("ios_1.png", (200, 400), "PNG", "ios", "open the Bluetooth row", "text", (10, 120, 190, 150)),
     ("mac_2.jpg", (400, 250), "JPEG", "macos", "minimise the window", "icon", (20, 4, 40, 24))],
    [("web_3.png", (250, 200), "PNG", None, "search the docs", "text", (50, 20, 200, 40)),
     ("web_3.png", (250, 200), "PNG", "gitlab", "open merge requests", "text", (0, 100, 125, 120))],
]  # fmt: skip


def hf_parquet(directory: Path) -> Layout:
    """A Hugging Face export: data/test-0000N-of-00002.parquet with embedded images, normalized xyxy."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(directory) / "hf_screenspot"
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a tiny ScreenSpot export\n")
    layout = Layout("hf_parquet", input=root, images=None, bbox_format="xyxy")
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("file_name", pa.string()), ("bbox", pa.list_(pa.float64())),
                        ("instruction", pa.string()), ("data_type", pa.string()),
                        ("data_source", pa.string()), ("image", image_type)])  # fmt: skip
    made: dict[str, bytes] = {}
    for n, rows in enumerate(_HF):
        columns: dict[str, list] = {name: [] for name in schema.names}
        for file, (w, h), fmt, source, instruction, kind, box in rows:
            if file not in made:
                boxes = [r[6] for part in _HF for r in part if r[0] == file]
                made[file] = screenshot((w, h), boxes, len(made), fmt)
            x0, y0, x1, y1 = box
            columns["file_name"].append(file)
            columns["bbox"].append([x0 / w, y0 / h, x1 / w, y1 / h])
            columns["instruction"].append(instruction)
            columns["data_type"].append(kind)
            columns["data_source"].append(source)
            columns["image"].append({"bytes": made[file], "path": file})
            layout.expected[instruction] = Expected(
                box, _centre(box), source or "hf_screenspot", "", kind, (w, h), made[file]
            )
        path = root / "data" / f"test-{n:05d}-of-{len(_HF):05d}.parquet"
        pq.write_table(pa.table(columns, schema=schema), path, row_group_size=2)  # several row groups
        layout.files.append(path)
    return layout


# --- SeeClick / OS-Atlas: one screenshot, many elements ---------------------------------------------

# (image, size, [(instruction, type key, type, pixel box, pixel point or None)])
_SEECLICK = [
    ("web_17.png", (300, 200), [("search for flights", "data_type", "text", (30, 40, 150, 60), None),
                                ("the logo", "data_type", "icon", (2, 2, 32, 20), None),
                                ("sign in", "type", "button", (240, 10, 294, 30), (260.0, 20.0))]),
    ("web_18.png", (240, 320), [("read the privacy policy", "data_type", "text", (60, 280, 180, 300), None),
                                ("open the menu", "data_type", "icon", (200, 4, 236, 28), None)]),
]  # fmt: skip


def seeclick(directory: Path) -> Layout:
    """SeeClick / OS-Atlas style: seeclick_web.json, screenshots with `elements` (normalized xyxy)."""
    root = Path(directory) / "seeclick"
    layout = Layout("seeclick", input=root / "seeclick_web.json", images=root / "imgs", bbox_format="xyxy")
    records = []
    for seed, (file, (w, h), items) in enumerate(_SEECLICK):
        data = _save(root / "imgs" / file, screenshot((w, h), [it[3] for it in items], 20 + seed))
        elements = []
        for instruction, type_key, kind, box, point in items:
            x0, y0, x1, y1 = box
            element = {"instruction": instruction, "bbox": [x0 / w, y0 / h, x1 / w, y1 / h], type_key: kind}
            if point is not None:
                element["point"] = [point[0] / w, point[1] / h]
            elements.append(element)
            where = point if point is not None else _centre(box)
            layout.expected[instruction] = Expected(box, where, "seeclick_web", "", kind, (w, h), data)
        records.append({"img_filename": file, "url": f"https://example.com/{seed}", "elements": elements})
    layout.files.append(_write_json(layout.input, records))
    return layout


# --- point-only clicks ------------------------------------------------------------------------------

# (image, size, key, value as written, pixel point, data_source or None, instruction)
_CLICKS = [
    ("shot_0.png", (200, 100), "point", [50, 40], (50.0, 40.0), None, "press the red button"),
    ("shot_0.png", (200, 100), "click", [0.5, 0.25], (100.0, 25.0), "android", "tap the middle of the bar"),
    ("shot_1.jpg", (160, 240), "point", [158, 2], (158.0, 2.0), None, "close the dialog"),  # box clipped
]


def point_only(directory: Path) -> Layout:
    """A JSONL of clicks without boxes (`point` / `click`), images beside it (no --images needed)."""
    root = Path(directory) / "clicks"
    layout = Layout("point_only", input=root / "clicks.jsonl", images=None, bbox_format="xyxy")
    made: dict[str, bytes] = {}
    lines = []
    for file, (w, h), key, value, (px, py), source, instruction in _CLICKS:
        if file not in made:
            fmt = "JPEG" if file.endswith(".jpg") else "PNG"
            made[file] = _save(root / file, screenshot((w, h), [(px - 5, py - 5, px + 5, py + 5)], 30, fmt))
        record = {"image": file, "instruction": instruction, key: value}
        if source:
            record["platform"] = source
        lines.append(json.dumps(record))
        # 1.5% of the width and the height on each side of the point, clipped to the image.
        dx, dy = 0.015 * w, 0.015 * h
        box = (max(0.0, px - dx), max(0.0, py - dy), min(w, px + dx), min(h, py + dy))
        want = Expected(box, (px, py), source or "clicks", "", "element", (w, h), made[file])
        layout.expected[instruction] = want
    layout.input.write_text("\n".join(lines) + "\n")
    layout.files.append(layout.input)
    return layout


ALL_LAYOUTS = (screenspot, screenspot_v2, screenspot_pro, hf_parquet, seeclick, point_only)
