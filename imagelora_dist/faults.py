"""Fault injection for tests and recovery drills: a worker process dies hard at a chosen point.

A crash with `os._exit` looks to Ray like an OOM kill or a lost node. With IMAGELORA_FAULT_MARKER set,
the crash happens once: the marker file is created first and later passes go through.
"""

from __future__ import annotations

import os

FAULT_MARKER_ENV = "IMAGELORA_FAULT_MARKER"


def crash_if(env_name: str, value: str) -> None:
    """Exit the process at once when environment variable `env_name` equals `value`."""
    if os.environ.get(env_name) != value:
        return
    marker = os.environ.get(FAULT_MARKER_ENV)
    if marker:
        if os.path.exists(marker):
            return
        open(marker, "w").close()
    os._exit(1)
