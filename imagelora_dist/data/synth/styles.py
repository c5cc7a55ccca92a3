"""Screen styles, looked up by name: what a screen looks like and how instructions name its elements.

The synthesizer only knows styles by name. `gui` is built in; any other style is a `ScreenStyle`
object somewhere importable, named by the path `"package.module:ATTR"` (in config:
`data.synth.style`). The package never imports such a module itself: it is loaded with importlib
when a spec names it, in the parent and again in every worker process that renders shards, so
research code outside the package can add a style without the package depending on it.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from PIL import Image

from imagelora_dist.data.synth.elements import Box, Element
from imagelora_dist.data.synth.gui import render_screen
from imagelora_dist.data.synth.instructions import describe_at_question, grounding_instruction, point_question
from imagelora_dist.data.tasks import referring_instruction
from imagelora_dist.errors import ImageLoRAError


@dataclass(frozen=True)
class ScreenStyle:
    """A kind of synthetic screen and the words its instructions use.

    - `render(seed, width, height, n_elements) -> (image, elements)`: a pure function of its arguments.
    - `grounding_instruction(rng, element)`: the click instruction (phrasing `downstream`).
    - `referring_instruction(box, width, height)`: the question about a box (phrasing `downstream`).
    - `point_question(rng, element)`, `describe_at_question(rng, element, width, height)`: the same two
      questions in the pre-training tasks' words (phrasing `pretrain`).
    The last three default to the GUI screens' wording.
    """

    render: Callable[[int, int, int, int], tuple[Image.Image, list[Element]]]
    grounding_instruction: Callable[[random.Random, Element], str]
    referring_instruction: Callable[[Box, int, int], str] = referring_instruction
    point_question: Callable[[random.Random, Element], str] = point_question
    describe_at_question: Callable[[random.Random, Element, int, int], str] = describe_at_question


GUI = ScreenStyle(render=render_screen, grounding_instruction=grounding_instruction)

# A built-in name maps to a style object, or to the import path of one outside this package's import
# graph (a string, never an import); the fidelity study's shapes screens are such a path.
BUILTIN_STYLES: dict[str, ScreenStyle | str] = {"gui": GUI}


def is_style_path(text: str) -> bool:
    """Whether `text` reads as `"package.module:ATTR"`, each part an identifier (not whether it loads)."""
    module, colon, attr = text.partition(":")
    return bool(colon) and attr.isidentifier() and all(p.isidentifier() for p in module.split("."))


def _unknown(name: object) -> ImageLoRAError:
    known = list(BUILTIN_STYLES)
    return ImageLoRAError(
        f"style={name!r}: unknown style; known: {known} or an import path 'package.module:ATTR'"
    )


def style_module(name: str) -> str | None:
    """The module a style name makes the synthesizer import (None for a style defined in this package)."""
    target = BUILTIN_STYLES.get(name, name)
    return target.partition(":")[0] if isinstance(target, str) and is_style_path(target) else None


def resolve_style(name: object) -> ScreenStyle:
    """The style `name` stands for: a built-in name or a `"package.module:ATTR"` path."""
    if not isinstance(name, str):
        raise _unknown(name)
    return _load(name)


@cache
def _load(name: str) -> ScreenStyle:
    # Cached per process: a worker renders thousands of samples with one style.
    target = BUILTIN_STYLES.get(name, name)
    if isinstance(target, ScreenStyle):
        return target
    if not is_style_path(target):
        raise _unknown(name)
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # whatever the module raises (ImportError, SyntaxError...), the config named it
        raise ImageLoRAError(
            f"style={name!r}: cannot import {module_name!r} ({type(e).__name__}: {e})"
        ) from None
    style = getattr(module, attr, None)
    if not isinstance(style, ScreenStyle):
        what = "has no such attribute" if style is None else f"holds a {type(style).__name__}"
        raise ImageLoRAError(f"style={name!r}: {module_name}.{attr} {what}, not a ScreenStyle")
    return style
