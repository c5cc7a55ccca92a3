"""What a resubmitted run does with the checkpoints stored under its name (train/storage.py), on a local
storage laid out as Ray Train leaves it: no Ray, no training."""

from __future__ import annotations

import json

import pytest

from imagelora_dist.config import load_config
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.train.storage import (
    RUN_RECORD,
    plan_storage,
    record_identity,
    run_identity,
    stored_identity,
)


def _cfg(tmp_path, *overrides):
    return load_config(None, [f"output_dir={tmp_path}", "train.method=image_lora_all", *overrides])


def _stored_run(tmp_path, identity: str | None, steps=(2, 4)) -> str:
    """<output_dir>/train/<name>-train with step dirs (and the record, unless None): Ray's layout."""
    run = tmp_path / "train" / "tiny-default-train"
    for step in steps:
        (run / f"step-{step:06d}").mkdir(parents=True)
    if identity is not None:
        record_identity(str(tmp_path / "train"), "tiny-default-train", identity)
    return str(run)


def test_the_same_config_resumes_from_its_newest_checkpoint_without_resume(tmp_path):
    cfg = _cfg(tmp_path)
    identity = run_identity(cfg, "/data/a")
    _stored_run(tmp_path, identity)
    assert plan_storage(cfg, identity) == ("resume", "step-000004")
    assert plan_storage(cfg, identity, resume=True) == ("resume", "step-000004")


def test_another_config_stops_with_one_line_naming_the_checkpoints_and_the_ways_on(tmp_path):
    cfg = _cfg(tmp_path)
    run = _stored_run(tmp_path, run_identity(cfg, "/data/a"))
    other = run_identity(_cfg(tmp_path, "train.lr=0.02"), "/data/a")
    for resume in (False, True):  # --resume is refused for another config too
        with pytest.raises(ImageLoRAError) as err:
            plan_storage(cfg, other, resume=resume)
        line = str(err.value)
        assert "\n" not in line and f"{run} holds checkpoints (newest step-000004) of another config" in line
        assert "--restart deletes them" in line
        assert ("--resume continues only the same config" in line) == resume
    assert (tmp_path / "train" / "tiny-default-train" / "step-000004").is_dir(), "nothing deleted"
    assert plan_storage(cfg, other, restart=True) == ("restart", "step-000004")
    with pytest.raises(ImageLoRAError, match="--resume and --restart exclude each other"):
        plan_storage(cfg, other, resume=True, restart=True)


def test_checkpoints_without_a_record_continue_only_with_resume(tmp_path):
    cfg = _cfg(tmp_path)
    _stored_run(tmp_path, None)
    identity = run_identity(cfg, "/data/a")
    with pytest.raises(
        ImageLoRAError, match="did not record .*--resume continues from them, --restart deletes"
    ):
        plan_storage(cfg, identity)
    assert plan_storage(cfg, identity, resume=True) == ("resume", "step-000004")


def test_no_checkpoint_is_a_fresh_start_whatever_the_record_says(tmp_path):
    cfg = _cfg(tmp_path)
    _stored_run(tmp_path, "someone-else", steps=())
    assert plan_storage(cfg, run_identity(cfg, "/data/a")) == ("fresh", None)


def test_identity_ignores_the_layout_a_resume_may_change_but_not_what_is_trained(tmp_path):
    base = run_identity(_cfg(tmp_path), "/data/a")
    layout = ["train.workers=1", "train.grad_accum=2", "train.micro_batch_size=1", "train.deepspeed=zero3",
              "train.checkpoint_every=5", "train.max_failures=0", "train.keep_checkpoints=3"]  # fmt: skip
    assert run_identity(_cfg(tmp_path, *layout), "/data/a") == base
    assert run_identity(_cfg(tmp_path / "elsewhere"), "/data/a") == base  # output_dir is not the config
    for changed in ("train.lr=0.02", "train.steps=7", "adapter.rank=4", "train.seed=1"):
        assert run_identity(_cfg(tmp_path, changed), "/data/a") != base, changed
    assert run_identity(_cfg(tmp_path), "/data/b") != base


def test_the_record_is_written_whole_and_read_back(tmp_path):
    record_identity(str(tmp_path), "run", "abc")
    assert json.loads((tmp_path / "run" / RUN_RECORD).read_text())["train_hash"] == "abc"
    assert [p.name for p in (tmp_path / "run").iterdir()] == [RUN_RECORD], "no temp file left"
    assert stored_identity(str(tmp_path), "run") == "abc"
    (tmp_path / "run" / RUN_RECORD).write_text("{not json")
    assert stored_identity(str(tmp_path), "run") is None
