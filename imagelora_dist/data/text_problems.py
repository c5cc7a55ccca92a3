"""Short arithmetic word problems with small numbers: the pure-text task (a GSM8K stand-in).

The product's text-preservation eval (eval/text_task.py) asks them with the adapter on and off; the
research pre-training of a tiny base (experiments/fidelity) teaches it to answer them. Same seed, same
problems: a change here changes every text-task score.
"""

from __future__ import annotations

import random

_NAMES = ("Ann", "Ben", "Carla", "Dev", "Eva", "Femi", "Gus", "Hana", "Ivan", "Jia", "Kofi", "Lena", "Mia", "Omar")  # fmt: skip
_ITEMS = ("apples", "books", "coins", "pencils", "stickers", "cards", "marbles", "cookies", "shells", "stamps")  # fmt: skip


def arithmetic_problem(rng: random.Random) -> tuple[str, str]:
    """A one- or two-step word problem with small numbers (answers 0..25) and its answer (as text)."""
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    kind = rng.choice(("add", "sub", "mul", "two_step", "compare"))
    if kind == "add":
        a, b = rng.randint(1, 12), rng.randint(1, 12)
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", str(a + b)
    if kind == "sub":
        a = rng.randint(2, 20)
        b = rng.randint(1, a - 1)
        return f"{name} has {a} {item} and gives {b} to {other}. How many {item} are left?", str(a - b)
    if kind == "mul":
        a, b = rng.randint(2, 5), rng.randint(2, 5)
        return f"{name} buys {a} boxes with {b} {item} in each box. How many {item} is that?", str(a * b)
    if kind == "two_step":
        a, b = rng.randint(2, 10), rng.randint(1, 10)
        c = rng.randint(1, a + b - 1)
        return (
            f"{name} has {a} {item}, finds {b} more and then loses {c}. How many {item} does {name} have?",
            str(a + b - c),
        )
    a = rng.randint(3, 20)
    b = rng.randint(1, a - 1)
    return f"{name} has {a} {item} and {other} has {b}. How many more {item} does {name} have?", str(a - b)
