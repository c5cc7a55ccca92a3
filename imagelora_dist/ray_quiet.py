"""Setup hook for the worker processes of a local Ray that this program starts itself (no dashboard).

Ray Train's PlacementGroupCleaner asks the State API every second whether the train controller is still
alive. The State API is served by the dashboard, which a local Ray started here does not run, so every
check fails and logs a warning: a line a second in the user's terminal for the whole training run. The
cleaner only matters on a long-lived cluster (where the dashboard runs and this hook is not installed);
a local Ray ends with this process. This module must stay import-light: every Ray worker process runs it.
"""

from __future__ import annotations

import logging

PLACEMENT_GROUP_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
HOOK = f"{__name__}.quiet_state_api_warnings"


def quiet_state_api_warnings() -> None:
    """Keep only errors from the logger that warns each second when the State API is unreachable."""
    logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).setLevel(logging.ERROR)
