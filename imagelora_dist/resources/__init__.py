"""Files shipped inside the package (found from any working directory, also from an installed wheel):
the embedded default run config and the DeepSpeed ZeRO presets."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DEEPSPEED_PRESETS: tuple[str, ...] = ("zero1", "zero2", "zero3")


def _resource(*parts: str) -> Path:
    # The package is installed as plain files (setuptools package data), never zipped: a real path.
    return Path(str(files(__name__).joinpath(*parts)))


def default_config_path() -> Path:
    """The embedded default run config (what `imagelora-dist run` uses without --config)."""
    return _resource("default.yaml")


def deepspeed_preset(name: str) -> Path:
    """The shipped DeepSpeed JSON of a preset name (`zero1` | `zero2` | `zero3`)."""
    if name not in DEEPSPEED_PRESETS:
        raise KeyError(name)
    return _resource("deepspeed", f"{name}.json")


def deepspeed_json(value: str) -> Path:
    """Where `train.deepspeed` points: a preset name's shipped JSON, else the path as given (absolute)."""
    if value in DEEPSPEED_PRESETS:
        return deepspeed_preset(value)
    return Path(value).expanduser().absolute()
