"""The environment every process of a run gets: no downloads, no telemetry, no tokenizer thread pools.

One definition for the CLI, the study runner and (through imagelora_dist.ray_runtime) every Ray worker;
launch/runtime_env.yaml spells the same variables for `ray job submit` (a test keeps them equal).
"""

from __future__ import annotations

import os

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",  # models come from a local directory only
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_offline_env() -> None:
    """Set each variable of OFFLINE_ENV in this process unless the user already set it."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
