"""What to synthesize: `SynthSpec`, checked when made so a bad value fails before any worker starts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from imagelora_dist.data.synth.styles import resolve_style
from imagelora_dist.data.tasks import TASKS
from imagelora_dist.errors import ImageLoRAError

# Caps keep a typo (an extra zero) from turning into hours of rendering or an unreadable screen.
_MAX_SIDE = 4096
_MIN_WIDTH, _MIN_HEIGHT = 200, 150
_MAX_ELEMENTS = 64
_MAX_INSTRUCTION_WORDS = 4096
# `downstream`: the fine-tuning task's own instructions ("Click the Save button."); `pretrain`: the same
# questions in the pre-training tasks' words (`point`, `describe_at`), a task the base already knows.
PHRASINGS = ("downstream", "pretrain")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class SynthSpec:
    """What to synthesize: sample count, sharding, screen size, clutter, instruction length, tasks, seed,
    the screen style (a name or `"package.module:ATTR"`, see styles.py) and the instructions' phrasing."""

    num_samples: int
    samples_per_shard: int = 256
    width: int = 448
    height: int = 336
    min_elements: int = 4
    max_elements: int = 10
    instruction_words: tuple[int, int] = (0, 0)
    tasks: tuple[str, ...] = ("grounding", "referring")
    seed: int = 0
    prefix: str = "train"
    style: str = "gui"
    # added after sets were made: left out of their index record while at the default (shard_pool.spec_record)
    phrasing: str = field(default="downstream", metadata={"omit_at_default": True})

    def __post_init__(self) -> None:
        # Lists arrive from YAML/JSON/argparse; store tuples so the spec stays hashable and asdict-stable.
        for name in ("instruction_words", "tasks"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

        def bad(name: str, why: str) -> ImageLoRAError:
            return ImageLoRAError(f"synth spec: {name}={getattr(self, name)!r}: {why}")

        for name, lo, hi in (
            ("num_samples", 1, None),
            ("samples_per_shard", 1, None),
            ("width", _MIN_WIDTH, _MAX_SIDE),
            ("height", _MIN_HEIGHT, _MAX_SIDE),
            ("min_elements", 1, _MAX_ELEMENTS),
            ("max_elements", 1, _MAX_ELEMENTS),
        ):
            value = getattr(self, name)
            if not _is_int(value):
                raise bad(name, "must be an integer")
            if value < lo or (hi is not None and value > hi):
                raise bad(name, f"must be in [{lo}, {hi}]" if hi is not None else f"must be >= {lo}")
        if self.max_elements < self.min_elements:
            raise bad("max_elements", f"must be >= min_elements ({self.min_elements})")
        iw = self.instruction_words
        if not (isinstance(iw, tuple) and len(iw) == 2 and all(_is_int(v) for v in iw)):
            raise bad("instruction_words", "must be two integers (min, max)")
        if not 0 <= iw[0] <= iw[1] <= _MAX_INSTRUCTION_WORDS:
            raise bad("instruction_words", f"need 0 <= min <= max <= {_MAX_INSTRUCTION_WORDS}")
        if not isinstance(self.tasks, tuple) or not self.tasks:
            raise bad("tasks", f"must be a non-empty list of {list(TASKS)}")
        for task in self.tasks:
            if task not in TASKS:
                raise bad("tasks", f"unknown task {task!r}; known: {list(TASKS)}")
        if len(set(self.tasks)) != len(self.tasks):
            raise bad("tasks", "lists a task twice")
        if not _is_int(self.seed):
            raise bad("seed", "must be an integer")
        try:  # loads a style named by path now, so a bad one fails here and not in a worker
            resolve_style(self.style)
        except ImageLoRAError as e:
            raise ImageLoRAError(f"synth spec: {e}") from None
        if self.phrasing not in PHRASINGS:
            raise bad("phrasing", f"unknown phrasing; known: {list(PHRASINGS)}")
        if not isinstance(self.prefix, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.prefix):
            raise bad("prefix", "must be a non-empty file-name stem of letters, digits, '_', '.', '-'")

    @property
    def num_shards(self) -> int:
        """Shards needed: the last one may be short."""
        return -(-self.num_samples // self.samples_per_shard)
