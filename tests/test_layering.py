"""The pure-torch core never imports Ray, DeepSpeed or MLflow (DESIGN §3)."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_distributed_stack():
    code = (
        "import sys, imagelora_dist, imagelora_dist.adapter.io, imagelora_dist.adapter.accounting, "
        "imagelora_dist.probe.scores, imagelora_dist.selection\n"
        "bad = sorted(m for m in ('ray', 'deepspeed', 'mlflow') if m in sys.modules)\n"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == ""
