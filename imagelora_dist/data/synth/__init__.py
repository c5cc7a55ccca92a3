"""Synthetic screenshots with grounding and referring records, written as WebDataset shards.

The modules, bottom up (each imports only those above it, never this package's `__init__`):

- `elements`      `Element`, `Box`: what a record says a screen holds
- `vocabulary`    the words on the screens; `theme` colours and the font; `icons` glyphs
- `canvas`        `Screen`, the drawing state of one screenshot
- `chrome`, `widgets`, `gui`   the GUI screen: window chrome, form widgets, `render_screen`
- `instructions`  click instructions, the pre-training phrasing, the context preamble
- `styles`        `ScreenStyle` and the lookup of a style by name or `"package.module:ATTR"` path
- `spec`          `SynthSpec`; `sample`: `make_sample`, `synthesize`
"""

from __future__ import annotations

from imagelora_dist.data.synth.canvas import Screen
from imagelora_dist.data.synth.elements import ELEMENT_TYPES, RGB, Box, Element
from imagelora_dist.data.synth.gui import render_screen
from imagelora_dist.data.synth.instructions import context_preamble, grounding_instruction
from imagelora_dist.data.synth.sample import encode_png, make_sample, render, synthesize
from imagelora_dist.data.synth.spec import PHRASINGS, SynthSpec
from imagelora_dist.data.synth.styles import BUILTIN_STYLES, ScreenStyle, resolve_style

# experiments/fidelity/fidelity/vision_probe.py patches `synth._Screen.__init__` to fix the UI scale; the class is shared, so the
# patch reaches every screen.
_Screen = Screen

__all__ = [
    "BUILTIN_STYLES",
    "ELEMENT_TYPES",
    "PHRASINGS",
    "RGB",
    "Box",
    "Element",
    "ScreenStyle",
    "SynthSpec",
    "context_preamble",
    "encode_png",
    "grounding_instruction",
    "make_sample",
    "render",
    "render_screen",
    "resolve_style",
    "synthesize",
]
