"""DeepSpeed ZeRO training on Ray Train: stage equivalence, resume, a killed worker, checkpoint size,
and exact text preservation of the trained Image-LoRA."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from imagelora_dist import build_tiny_vlm, load_adapter
from imagelora_dist.config import load_config
from imagelora_dist.faults import FAULT_MARKER_ENV
from imagelora_dist.pipeline import ensure_train_shards
from imagelora_dist.train.loop import FAULT_ENV
from imagelora_dist.train.ray_train import PAUSE_ENV, run_training

pytestmark = pytest.mark.integration  # Ray clusters, DeepSpeed runs, servers: not in make test-fast


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # 4 samples, no sample shuffle: 2 ranks x 1 micro-batch of 2 and 1 rank x 2 accumulated micro-batches
    # of 2 see the same two micro-batches in every step (one step = one epoch).
    cfg = _cfg(tmp_path_factory.mktemp("data"), None)
    return ensure_train_shards(cfg, log=lambda m: None)


def _cfg(out, shards, **overrides):
    return load_config(None, _overrides(out, shards, **overrides))


def _overrides(out, shards, **overrides) -> list[str]:
    """The tests' run as `key=value` overrides (the CLI's arguments too)."""
    items = {
        "output_dir": str(out),
        "data.synth.num_samples": 4,
        "data.synth.samples_per_shard": 2,
        "data.synth.workers": 1,
        "data.shuffle_buffer": 0,
        "train.method": "image_lora_all",
        "train.steps": 3,
        "train.checkpoint_every": 1,
        "train.lr": 0.01,
        "train.micro_batch_size": 2,
        "tracking.enabled": False,
        **({"data.train": shards} if shards else {}),
        **overrides,
    }
    return [f"{k}={v}" for k, v in items.items()]


def _train(out, shards, **overrides):
    cfg = _cfg(out, shards, **overrides)
    result = run_training(cfg, shards)
    assert result.error is None, result.error
    return load_file(str(Path(out) / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def reference(local_ray, shards, tmp_path_factory):
    """One worker accumulating the same two micro-batches per step."""
    return _train(tmp_path_factory.mktemp("ref"), shards, **{"train.workers": 1, "train.grad_accum": 2})


@pytest.fixture(scope="module")
def two_workers(local_ray, shards, tmp_path_factory):
    """Two workers with the default config (ZeRO-2): its output directory and adapter."""
    out = tmp_path_factory.mktemp("two-workers")
    return out, _train(out, shards, **{"train.workers": 2})


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_with_two_workers_match_one_worker(reference, shards, tmp_path, stage, request):
    if stage == 2:  # the default: the run the resume test compares with too
        tmp_path, got = request.getfixturevalue("two_workers")
        assert _cfg(tmp_path, shards).train.deepspeed == "zero2"
    else:
        deepspeed = f"zero{stage}"
        got = _train(tmp_path, shards, **{"train.workers": 2, "train.deepspeed": deepspeed})
    assert got.keys() == reference.keys()
    assert any(t.abs().sum() > 0 for k, t in got.items() if k.endswith(".B")), "training must move B off zero"
    for key in reference:
        diff = float((got[key] - reference[key]).abs().max())
        # Adam divides by sqrt(v): float reduction-order noise in tiny gradients shows up at ~1e-6.
        assert torch.allclose(got[key], reference[key], rtol=1e-3, atol=1e-5), f"{key}: max diff {diff}"
    # Checkpoints hold the adapter and its optimizer state, never the frozen base (~19 MB here); Ray
    # merged every rank's files (rank 0's weights, each rank's optimizer shard) into one directory.
    ckpt = tmp_path / "train" / "tiny-default-train" / "step-000003"
    files = {f.relative_to(ckpt).as_posix(): f.stat().st_size for f in ckpt.rglob("*") if f.is_file()}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= set(
        files
    )
    assert files["adapter/adapter_model.safetensors"] > 0
    assert not any(name.startswith(".adapter-rank") for name in files)
    adapter_bytes = sum(t.numel() * 4 for t in got.values())
    assert 0 < sum(files.values()) < 12 * adapter_bytes + 200_000
    # keep_checkpoints (2): older checkpoints were deleted from the storage.
    assert sorted(p.name for p in ckpt.parent.glob("step-*")) == ["step-000002", "step-000003"]
    # The portable state gathered the partitions whole: its weights are the final adapter's (saved by
    # another path, the adapter export, which keys B by KV head), and every B has Adam moments.
    portable = load_file(str(ckpt / "portable_state.safetensors"))
    for layer in sorted({int(k.split(".")[1]) for k in got}):
        prefix = f"param/model.language_model.layers.{layer}.self_attn.image_lora"
        heads = sorted(
            (k for k in got if k.startswith(f"layers.{layer}.heads.")), key=lambda k: int(k.split(".")[3])
        )
        exported = {"A": got[f"layers.{layer}.A"], "gamma": got[f"layers.{layer}.gamma"],
                    "B": torch.stack([got[k] for k in heads])}  # fmt: skip
        for part, value in exported.items():
            torch.testing.assert_close(
                portable[f"{prefix}.{part}"], value, rtol=0, atol=0, msg=f"{layer}.{part}"
            )
        assert portable[f"exp_avg_sq/{prefix.removeprefix('param/')}.B"].abs().sum() > 0


def test_killed_worker_resumes_from_last_checkpoint(two_workers, shards, tmp_path, monkeypatch, capfd):
    _, clean = two_workers
    marker = tmp_path / "killed-once"
    monkeypatch.setenv(FAULT_ENV, "1:2")  # rank 1 dies right after step 2 (checkpointed)
    monkeypatch.setenv(PAUSE_ENV, "2:3")  # once Ray has registered that checkpoint (its next poll)
    monkeypatch.setenv(FAULT_MARKER_ENV, str(marker))
    # Elastic (1-2 workers): Ray restarts the group with the workers it can get; on 1 it would accumulate
    # 2 micro-batches, the same samples per step, so the adapter must match either way.
    killed = _train(tmp_path / "killed", shards, **{"train.workers": 2, "train.min_workers": 1})
    assert marker.exists(), "the fault must have fired"
    # The restarted group's loop loaded step 2 and went on at step 3 (the adapter alone cannot tell: the
    # tiny run restarted from step 0 reaches the same one); a group that ignored it would log 1, 2 again.
    printed = "".join(capfd.readouterr())
    assert _loaded(printed) == "step-000002", printed[-3000:]
    assert _steps_trained(printed) == [1, 2, 3]
    for key in clean:
        torch.testing.assert_close(killed[key], clean[key], rtol=1e-5, atol=1e-7, msg=key)


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder`: (mtime in ns, bytes)."""
    return {f.relative_to(folder).as_posix(): (f.stat().st_mtime_ns, f.read_bytes())
            for f in sorted(folder.rglob("*")) if f.is_file()}  # fmt: skip


def _steps_trained(printed: str) -> list[int]:
    """The steps rank 0's training loop logged (its own progress line), in order."""
    return [int(n) for n in re.findall(r"\[train\] step (\d+)/\d+ loss", printed)]


def _loaded(printed: str) -> str | None:
    """The checkpoint the training loop says it loaded. Every rank logs it; Ray's log deduplication may
    show one rank's line only (lines alike but for their numbers, from several processes within 5 s)."""
    tags = set(re.findall(r"\[train\] rank \d+: resumed from (step-\d+) \(step \d+,", printed))
    assert len(tags) <= 1, tags
    return tags.pop() if tags else None


def test_a_resubmitted_run_continues_from_its_checkpoints_and_only_restart_deletes_them(
    two_workers, shards, tmp_path, capfd
):
    # Issue 30 item 1: the driver is killed (SIGKILL, its local Ray goes with it) after checkpoint
    # step-000002 is registered; the same command submitted again, without --resume, must continue from
    # it: its loop starts at step 3, the stored step-2 files are not written again, and the adapter is
    # the uninterrupted run's. Another config is refused in one line; --restart deletes and starts over.
    # (A tiny run restarted from step 0 reaches the same adapter: the step-3 start and the untouched files
    # are what show that the checkpoint was used.)
    from imagelora_dist.cli import main as cli_main
    from imagelora_dist.train.storage import RUN_RECORD

    _, clean = two_workers
    out = tmp_path / "run"
    args = ["train", *_overrides(out, shards, **{"train.workers": 2})]
    command = [sys.executable, "-m", "imagelora_dist", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", PAUSE_ENV: "2:300"}  # every rank waits after step 2
    run_dir = out / "train" / "tiny-default-train"
    snapshot = run_dir / "checkpoint_manager_snapshot.json"  # Ray Train's record of registered checkpoints
    log = tmp_path / "first.log"
    with log.open("w") as sink:
        first = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        while not (snapshot.exists() and "step-000002" in snapshot.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and what it started (its session)
        first.wait()
    assert not (out / "adapter").exists() and not (out / "train_done.json").exists()
    stored = _files(run_dir / "step-000002")
    assert "portable_state.safetensors" in stored and "cursor.json" in stored

    # The same command again (in this process, on the module's Ray: the stored run decides, not the driver).
    capfd.readouterr()
    assert cli_main(args) == 0
    printed = "".join(capfd.readouterr())
    assert "holds checkpoints of this config" in printed and "newest step-000002" in printed
    assert _loaded(printed) == "step-000002", printed[-3000:]  # the loop loaded it
    assert _steps_trained(printed) == [3], printed[-3000:]  # the resumed group's first step is 3
    assert _files(run_dir / "step-000002") == stored, "the stored checkpoint must not be written again"
    got = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert got.keys() == clean.keys()
    for key in clean:
        torch.testing.assert_close(got[key], clean[key], rtol=1e-5, atol=1e-7, msg=key)
    done = json.loads((out / "train_done.json").read_text())
    # Throughput after a resume counts the one step trained here, not all three.
    assert done["metrics"]["train_steps_run"] == 1.0 and done["metrics"]["train_samples_per_s"] > 0

    # Another config (another lr) on the same checkpoints: one line, exit 2, nothing deleted.
    record = (run_dir / RUN_RECORD).read_text()
    assert cli_main([*args, "train.lr=0.02"]) == 2
    said = capfd.readouterr().err.strip()
    assert "\n" not in said and f"{run_dir} holds checkpoints (newest step-000003) of another config" in said
    assert "--restart deletes them" in said
    assert (run_dir / RUN_RECORD).read_text() == record and _files(run_dir / "step-000002") == stored

    # --restart deletes them and trains from step 1 (in this process, on the module's Ray).
    assert cli_main([*args, "train.lr=0.02", "--restart"]) == 0
    printed = "".join(capfd.readouterr())
    assert f"--restart: deleting the checkpoints in {run_dir} (newest step-000003)" in printed
    assert _steps_trained(printed) == [1, 2, 3]
    assert _files(run_dir / "step-000002") != stored
    assert (run_dir / RUN_RECORD).read_text() != record


def _dataset(directory, shard_files, text_only=()):
    """A shard directory of copies of `shard_files`; the samples of those at positions `text_only` become
    text-only records (the collator drops their images, as for a pure-text task mixed into the data)."""
    import json
    import shutil

    from imagelora_dist.data.shards import ShardIndex, read_shard_raw, write_shard

    directory.mkdir(parents=True)
    infos = []
    for i, source in enumerate(shard_files):
        if i in text_only:
            samples = read_shard_raw(source)
            for sample in samples:
                sample["json"] = {**json.loads(sample["json"]), "text_only": True}
            infos.append(write_shard(directory / Path(source).name, samples))
        else:
            shutil.copy(source, directory / Path(source).name)
            info = ShardIndex.read(Path(source).parent).shards[i]
            infos.append(info)
    ShardIndex(infos).write(directory)
    return str(directory)


def test_zero3_ranks_stay_in_step_with_text_only_batches_and_partly_cached_steps(local_ray, shards, tmp_path):
    # ZeRO-3 shards the frozen model too and gathers each module's weights collectively as it runs: a
    # rank that skips a module another rank runs breaks the gathers (NCCL hangs, gloo dies). Here rank
    # A's first batch is fully cached (its images' features and its samples' prefix states were stored by
    # an earlier run in the shared directories) while rank B's is text-only and never met; each rank
    # gets one shard (of 2 samples) per epoch. Without the filler image and the ranks' agreement on cache
    # hits this run dies in its first step; with them it gives the adapter of one uncached worker.
    from imagelora_dist.data.shards import ShardIndex
    from imagelora_dist.selection import HeadSelection

    files = ShardIndex.read(shards).urls(shards)
    assert len(files) == 2
    mixed = _dataset(tmp_path / "mixed", files, text_only={1})
    image_only = _dataset(tmp_path / "image-only", files[:1])
    caches = {"speed.vision_cache": "true", "speed.prefix_cache": "true",
              "speed.vision_cache_dir": tmp_path / "vision", "speed.prefix_cache_dir": tmp_path / "prefix"}  # fmt: skip
    method = {"train.method": "image_lora"}  # adapters in layers 3 and 5: the prefix cache serves layer 3
    for name in ("prefill", "reference", "zero3"):
        (tmp_path / name).mkdir()
        HeadSelection({3: [0, 1], 5: [2]}, hkv=4, num_layers=6).to_json(
            tmp_path / name / "head_selection.json"
        )
    _train(tmp_path / "prefill", image_only, **method, **caches, **{"train.workers": 1, "train.steps": 1})
    assert len(list((tmp_path / "vision").glob("*.safetensors"))) == 2  # shard A's two images
    reference = _train(tmp_path / "reference", mixed, **method, **{"train.workers": 1, "train.grad_accum": 2})
    got = _train(tmp_path / "zero3", mixed, **method, **caches,
                 **{"train.workers": 2, "train.deepspeed": "zero3"})  # fmt: skip
    assert got.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(got[key], reference[key], rtol=1e-3, atol=1e-5, msg=key)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"train.workers": 1}, "train.workers=2, now 1"),
        ({"train.micro_batch_size": 1}, "train.micro_batch_size=2, now 1"),
    ],
)
def test_resume_on_another_layout_without_portable_state_is_refused_before_any_worker_starts(
    two_workers, shards, tmp_path, change, message
):
    # A checkpoint of an older version has only DeepSpeed's files, cut for its world size: the workers
    # would all fail on it, after Ray had retried the group train.max_failures times. The driver reads
    # the cursor file and looks for the portable state.
    import json
    import shutil

    from imagelora_dist.errors import ImageLoRAError
    from imagelora_dist.train.loop import check_resume_layout

    out = tmp_path / "old"
    shutil.copytree(two_workers[0], out)
    step = out / "train" / "tiny-default-train" / "step-000003"
    assert json.loads((step / "cursor.json").read_text())["world_size"] == 2
    (step / "portable_state.safetensors").unlink()
    cfg = _cfg(out, shards, **{"train.workers": 2, **change})
    with pytest.raises(
        ImageLoRAError,
        match=rf"cannot resume: the checkpoint .*step-000003 was written with {message}, and has no portable",
    ):
        run_training(cfg, shards, resume=True)
    if "train.workers" in change:  # an elastic run's count is Ray's to decide: not refused up front
        saved = json.loads((step / "cursor.json").read_text())
        elastic = _cfg(out, shards, **{**change, "train.min_workers": 1})
        assert check_resume_layout(saved, elastic, "x", portable=False) == []
    assert (out / "adapter" / "adapter_model.safetensors").is_file()  # the finished run is left as it was


# 2 -> 1 workers (ZeRO-2) from an object store: tests/integration/test_train_object_store.py.py
@pytest.mark.parametrize("before,after,stage", [(1, 2, 3)])
def test_resume_on_another_worker_count_ends_where_the_uninterrupted_run_ends(
    reference, shards, tmp_path, monkeypatch, capfd, before, after, stage
):
    # One worker accumulating two micro-batches and two workers with one each see the same samples in
    # every step here (one step is one epoch), so a run that dies after step 2 on `before` workers and
    # is resumed on `after` must end at the uninterrupted reference: only if the weights, the Adam
    # moments and their step count, and the lr schedule were carried over from the portable state.
    from imagelora_dist.errors import TrainingFailed

    def cfg(workers):
        return _cfg(tmp_path, shards, **{"train.workers": workers, "train.grad_accum": 3 - workers,
                                         "train.deepspeed": f"zero{stage}",
                                         "train.max_failures": 0})  # fmt: skip

    monkeypatch.setenv(FAULT_ENV, f"{before - 1}:2")
    monkeypatch.setenv(PAUSE_ENV, "2:3")  # the crash comes once Ray has registered step 2
    monkeypatch.setenv(FAULT_MARKER_ENV, str(tmp_path / "killed-once"))
    with pytest.raises(TrainingFailed):
        run_training(cfg(before), shards)
    monkeypatch.delenv(FAULT_ENV)
    monkeypatch.delenv(PAUSE_ENV)
    step2 = tmp_path / "train" / "tiny-default-train" / "step-000002"
    stored = _files(step2)
    capfd.readouterr()
    run_training(cfg(after), shards, resume=True)
    printed = "".join(capfd.readouterr())
    assert f"resuming step-000002 on another layout (train.workers {before} -> {after})" in printed
    # The loop loaded it (the tiny run restarted from step 0 would reach the same adapter): it logged
    # only step 3, and the stored step-2 files were not written again.
    assert _loaded(printed) == "step-000002", printed[-3000:]
    assert _steps_trained(printed) == [3] and _files(step2) == stored
    got = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert got.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(got[key], reference[key], rtol=1e-3, atol=1e-5, msg=key)


def test_divergence_on_one_rank_stops_every_rank_without_restarts(local_ray, shards, tmp_path, monkeypatch):
    # Rank 1's loss reads NaN from step 2 on, in every attempt: a restart would diverge again, so the
    # run must end with TrainingDiverged at once instead of spending max_failures on restarts (which
    # would end in TrainingFailed), and rank 0 must not hang in a collective waiting for rank 1.
    from imagelora_dist.train.loop import NAN_FAULT_ENV, TrainingDiverged

    monkeypatch.setenv(NAN_FAULT_ENV, "1:2")
    cfg = _cfg(tmp_path, shards, **{"train.workers": 2, "train.max_failures": 2})
    with pytest.raises(TrainingDiverged, match=r"not finite at step 2 \(rank [01]: "):
        run_training(cfg, shards)
    assert not (tmp_path / "adapter").exists()


def test_trained_image_lora_keeps_text_bit_identical(reference, tmp_path, shards):
    out = tmp_path / "run"
    _train(out, shards, **{"train.workers": 1, "train.steps": 2})
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    prompts = ["What is 7 times 6?", "Name the capital of France."]
    batch = processor(text=[processor.apply_chat_template([{"role": "user", "content": [
        {"type": "text", "text": p}]}], add_generation_prompt=True, tokenize=False) for p in prompts],
        padding=True, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        base = model(**batch).logits
    handle = load_adapter(model, out / "adapter")
    assert any(m.B.abs().sum() > 0 for m in handle.modules.values())
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, base)


def test_resume_matches_uninterrupted_run(shards, tmp_path):
    # bench/resume_check.py (also the GPU check): 4 steps vs 2 + resumed from DeepSpeed's files, vs 2 +
    # resumed from the portable state alone, and a micro-batch change mid-epoch.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    script = Path(__file__).resolve().parents[2] / "bench" / "resume_check.py"
    proc = subprocess.run([sys.executable, str(script), "--shards", shards, "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "resume_check.json").read_text())
    assert report["deepspeed_resume_max_diff"] == 0.0
    # The same adapter would come from a resume that ignored the checkpoint (this run is deterministic):
    # the loops trained only the steps after it, and the stored step-2 files were not written again.
    assert report["resumed_steps"] == {"deepspeed": [3, 4], "portable": [3, 4], "micro_batch": [2, 3, 4]}
    assert report["stored_step_untouched"] is True
    assert len(report["deleted"]) == 2, report["deleted"]  # the model and the optimizer file
    assert "from portable_state.safetensors: DeepSpeed's files are missing" in proc.stdout
    assert report["portable_resume_max_diff"] == 0.0
    first, second, last = report["cursors"]
    assert (first["epoch"], first["batches"], first["batch_size"]) == (0, 1, 1)
    assert "the rest of epoch 0 is split anew over 1 worker(s)" in proc.stdout
    # step 2 read the rest of epoch 0 (one batch of 2), steps 3-4 the two batches of epoch 1
    assert (second["epoch"], second["batches"], second["history"]) == (1, 0, [])
    assert (last["epoch"], last["batches"], last["batch_size"]) == (2, 0, 2)


def _lora_cfg(out, shards, stage):
    return _cfg(out, shards, **{"train.method": "lora", "train.workers": 2, "train.steps": 2,
                                "train.deepspeed": f"zero{stage}",
                                "eval.synth_samples": 4, "eval.max_new_tokens": 4})  # fmt: skip


@pytest.fixture(scope="module")
def lora_zero2(local_ray, shards, tmp_path_factory):
    """The peft LoRA baseline trained by two ZeRO-2 workers: its config (output_dir holds the adapter)."""
    cfg = _lora_cfg(tmp_path_factory.mktemp("lora-zero2"), shards, 2)
    assert run_training(cfg, shards).error is None
    return cfg


@pytest.mark.parametrize("stage", [2, 3])
def test_lora_baseline_trains_saves_and_changes_text(local_ray, shards, tmp_path, stage, request):
    """The peft LoRA baseline in the same trainer (ZeRO-3 gathers its weights to save them)."""
    from peft import PeftModel

    if stage == 2:
        out = Path(request.getfixturevalue("lora_zero2").output_dir)
    else:
        out = tmp_path / "lora"
        assert run_training(_lora_cfg(out, shards, stage), shards).error is None
    tensors = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert tensors and all(t.numel() > 0 for t in tensors.values())
    assert any("lora_B" in k and t.abs().sum() > 0 for k, t in tensors.items())
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    ids = processor.tokenizer(["What is 7 times 6?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base = model(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(model, str(out / "adapter"))(input_ids=ids).logits
    assert not torch.equal(adapted, base), "standard LoRA changes text-only outputs"


def test_eval_stage_reports_lora_text_change(lora_zero2):
    """The eval stage end to end for the LoRA baseline: accuracy keys, and a measured non-zero text change."""
    import json

    from imagelora_dist.pipeline import run_eval

    cfg = lora_zero2
    out = Path(cfg.output_dir)
    result = run_eval(cfg, log=lambda m: None)
    report = json.loads((out / "eval_report.json").read_text())
    assert result.output == out / "eval_report.json"
    assert report["eval_samples"] == 4 and report["grounding_count"] + report["referring_count"] == 4
    assert 0 <= report["grounding_accuracy"] <= 1 or report["grounding_count"] == 0
    assert report["text_max_abs_logit_diff"] > 0


def test_elastic_run_starts_with_the_workers_that_fit_and_keeps_the_global_batch(
    local_ray, shards, tmp_path, capfd
):
    # Ray asks for train.workers=3 on a 2-CPU Ray: an elastic run (train.min_workers=1) starts with what
    # fits and keeps the global batch of 3 workers x 2 micro-batches (2 workers accumulate 3).
    import json

    out = tmp_path / "elastic"
    got = _train(out, shards, **{"train.workers": 3, "train.min_workers": 1, "train.grad_accum": 2,
                                 "train.steps": 2})  # fmt: skip
    assert any(t.abs().sum() > 0 for k, t in got.items() if k.endswith(".B"))
    final = json.loads(next((out / "train").rglob("step-000002/cursor.json")).read_text())
    assert final["world_size"] in (1, 2)  # what fit (2 here), never the 3 asked for
    assert final["global_batch"] == 3 * 2 * 2  # kept: 2 workers accumulate 3 micro-batches, 1 would 6
    # The local Ray has no dashboard, so no State API: without imagelora_dist.ray_quiet, Ray Train's
    # placement-group cleaner printed this warning once a second through the whole run.
    printed = capfd.readouterr()
    assert (printed.out + printed.err).count("[train] step 2/2") == 1, "rank 0's progress, once (not twice)"
    assert "Failed to query Ray Train Controller actor state" not in printed.out + printed.err
