"""fidelity/study_repro.py: two study output dirs compared cell by cell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

SCRIPT = Path(__file__).resolve().parents[1] / "fidelity" / "study_repro.py"


def _cell(root: Path, method: str, seed: int, grounding: float, adapter: torch.Tensor | None) -> None:
    cell = root / "image-heavy" / method / f"seed{seed}"
    cell.mkdir(parents=True)
    report = {"grounding_accuracy": grounding, "referring_exact_match": 0.5, "text_task_accuracy": 0.25}
    (cell / "eval_report.json").write_text(json.dumps(report))
    if adapter is not None:
        (cell / "adapter").mkdir()
        save_file({"B": adapter}, str(cell / "adapter" / "adapter_model.safetensors"))


def test_study_repro_finds_identical_and_differing_cells(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    for root, delta, g1 in ((first, 0.0, 0.1), (second, 0.25, 0.3)):
        _cell(root, "zero-shot", 0, 0.0, None)
        _cell(root, "lora", 0, 0.2, w.clone())
        _cell(root, "lora", 1, g1, w + delta)  # the re-run differs in this cell only
    out = tmp_path / "repro.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(first), str(second), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "Identical cells (evaluation and adapter bit for bit): 2 of 3." in text
    assert "| image-heavy | lora | seed1 | yes | 0.25 | 10.0 / 30.0 |" in text
    # Means: first run 15.0 ± 7.1 (0.2 and 0.1), re-run 25.0.
    assert "| image-heavy | lora | 15.0 ± 7.1 / 25.0 | 50.0 ± 0.0 / 50.0 |" in text
    bad = subprocess.run([sys.executable, str(SCRIPT), str(first), str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "is not a directory" in bad.stderr
