"""The product's test fixtures (tests/conftest.py: tiny models, a local Ray), shared with these tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "imagelora_tests_conftest", Path(__file__).resolve().parents[3] / "tests" / "conftest.py"
)
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)

# Bound here, pytest finds them as this folder's fixtures.
family, tiny, local_ray = _shared.family, _shared.tiny, _shared.local_ray
