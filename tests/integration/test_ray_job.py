"""launch/stop_cluster.sh's refusals. The pipeline under `ray job submit` (start_cluster.sh, submit.sh,
logs.sh, stop_cluster.sh, token auth, nodes on their own addresses) is tested by
tests/integration/test_multinode.py::test_pipeline_job_across_nodes_without_a_shared_disk.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from ray_cluster import LAUNCH
from ray_cluster import run as _run


@pytest.mark.parametrize("marked_by", [None, "a symlink"])
def test_stop_refuses_unmarked_dir(tmp_path, marked_by):
    """Without start_cluster.sh's marker, stop_cluster.sh kills and deletes nothing and exits 2."""
    target = tmp_path / "not-a-cluster"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    if marked_by:
        (tmp_path / "elsewhere").write_text("")
        (target / ".imagelora-cluster").symlink_to(tmp_path / "elsewhere")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # A sleeper running in the directory: stop_cluster.sh would count it as a job driver and kill it.
    sleeper = subprocess.Popen(["sleep", "60"], cwd=target)
    try:
        stop = _run(["bash", str(LAUNCH / "stop_cluster.sh"), "--temp-dir", str(target), "--rm"], env, 30)
        assert stop.returncode == 2, stop.stdout + stop.stderr
        assert "not a temp dir of launch/start_cluster.sh" in stop.stderr
        assert sleeper.poll() is None and (target / "keep.txt").read_text() == "mine"
    finally:
        sleeper.kill()
        sleeper.wait()
