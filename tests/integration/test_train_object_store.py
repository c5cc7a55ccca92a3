"""Checkpoints in an object store: Ray's storage is an S3 bucket (moto's S3 server on 127.0.0.1).

A 2-worker run whose worker dies with no restarts left is continued with --resume on 1 worker from the
bucket alone (each worker downloads the merged checkpoint to its own scratch dir; the portable state
re-partitions the optimizer) and ends with the adapter of an uninterrupted run on local storage.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
from s3_server import moto_s3
from safetensors.torch import load_file
from test_train import _cfg, _loaded, _steps_trained, _train

from imagelora_dist.errors import TrainingFailed
from imagelora_dist.faults import FAULT_MARKER_ENV
from imagelora_dist.train.loop import FAULT_ENV
from imagelora_dist.train.ray_train import PAUSE_ENV, run_name, run_training, storage_filesystem

pytestmark = pytest.mark.integration  # Ray clusters, DeepSpeed runs, servers: not in make test-fast

BUCKET = "ckpt"


@pytest.fixture(scope="module")
def s3_storage():
    """An S3 bucket on a private moto server (tests/s3_server.py), with the credentials in the environment
    Ray's workers inherit (the env must be set before ray.init); the server and Ray are stopped at the end."""
    import ray

    with moto_s3(BUCKET) as env:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            # log_to_driver: the tests read the training loop's own progress lines (which step it ran).
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
            try:
                yield f"s3://{BUCKET}/runs"
            finally:
                ray.shutdown()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from imagelora_dist.pipeline import ensure_train_shards

    return ensure_train_shards(_cfg(tmp_path_factory.mktemp("data"), None), log=lambda m: None)


def _objects(fs: pafs.FileSystem, folder: str) -> dict[str, tuple[int, bytes]]:
    """Every object under `folder` in the bucket: (its modification time in ns, its bytes)."""
    found = fs.get_file_info(pafs.FileSelector(folder, recursive=True))
    files = sorted(i.path for i in found if i.type == pafs.FileType.File)
    out = {}
    for path in files:
        with fs.open_input_stream(path) as f:
            out[path.removeprefix(folder)] = (fs.get_file_info(path).mtime_ns, f.read())
    return out


def test_resume_from_object_store_matches_uninterrupted_run(s3_storage, shards, tmp_path, monkeypatch, capfd):
    clean = _train(tmp_path / "clean", shards, **{"train.workers": 2})  # local storage

    cfg = _cfg(tmp_path / "s3", shards, **{"train.workers": 2, "train.storage": s3_storage,
                                           "train.max_failures": 0})  # fmt: skip
    monkeypatch.setenv(FAULT_ENV, "1:2")  # rank 1 dies right after the step-2 checkpoint; no restarts
    monkeypatch.setenv(PAUSE_ENV, "2:3")  # once Ray has registered it (at its next poll of the workers)
    monkeypatch.setenv(FAULT_MARKER_ENV, str(tmp_path / "killed-once"))
    with pytest.raises(TrainingFailed, match="rank 1"):
        run_training(cfg, shards)
    assert not (tmp_path / "s3" / "adapter").exists(), "a failed run must not leave an adapter behind"

    fs, root = storage_filesystem(s3_storage)
    step2 = f"{root}/{run_name(cfg)}/step-000002"
    stored = {i.path.removeprefix(step2 + "/"): i.size for i in fs.get_file_info(pafs.FileSelector(step2))}
    # Both ranks' optimizer shards were merged into the one checkpoint in the bucket.
    for rank in (0, 1):
        assert stored.get(f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", 0) > 0, sorted(stored)

    monkeypatch.delenv(FAULT_ENV)
    kept = _objects(fs, step2)
    # Resumed on 1 worker accumulating the same 2 micro-batches per step: DeepSpeed's files are cut for 2
    # ranks, so the run continues from the checkpoint's portable state, also read from the bucket. No
    # --resume: the checkpoints in the bucket are of this config (its record beside them says so).
    one = cfg.model_copy(update={"train": cfg.train.model_copy(update={"workers": 1, "grad_accum": 2})})
    capfd.readouterr()
    lines: list[str] = []
    run_training(one, shards, log=lines.append)
    printed = "".join(capfd.readouterr())
    assert any("holds checkpoints of this config" in line and "newest step-000002" in line
               for line in lines), lines  # fmt: skip
    # The tiny run restarted from step 0 would reach the same adapter: the loop's own log shows it loaded
    # step 2 and trained only step 3, and the objects of step 2 were not written again.
    assert _loaded(printed) == "step-000002", printed[-3000:]
    assert _steps_trained(printed) == [3], printed[-3000:]
    assert _objects(fs, step2) == kept
    resumed = load_file(str(tmp_path / "s3" / "adapter" / "adapter_model.safetensors"))
    final = f"{root}/{run_name(cfg)}/step-000003/adapter/adapter_model.safetensors"
    assert fs.get_file_info(final).size > 0, "the final adapter lives in the bucket too"
    assert resumed.keys() == clean.keys()
    for key in clean:  # as close as 1 worker x 2 micro-batches is to 2 workers (test_train's stage test)
        torch.testing.assert_close(resumed[key], clean[key], rtol=1e-3, atol=1e-5, msg=key)


def test_unknown_storage_scheme_is_one_clear_error():
    from imagelora_dist.errors import ImageLoRAError

    with pytest.raises(ImageLoRAError, match="train.storage.*nosuch://"):
        storage_filesystem("nosuch://bucket/x")


def test_reuploaded_shards_under_the_same_prefix_change_the_stage_hashes(s3_storage, shards, tmp_path):
    # Issue 30 item 3: the probe and training skip when their hash matches; for object-store data it was
    # the URL's, so shards uploaded anew under the same prefix reused a stale selection and adapter. Here
    # the index stays byte for byte the same and only the shard objects change (another synthetic set).
    from imagelora_dist.errors import ImageLoRAError
    from imagelora_dist.pipeline import ensure_train_shards, selection_hash, train_hash

    fs, root = storage_filesystem(s3_storage)
    local = pafs.LocalFileSystem()
    url = f"{s3_storage}/data-a"
    pafs.copy_files(shards, f"{root}/data-a", source_filesystem=local, destination_filesystem=fs)
    cfg = _cfg(tmp_path, url)
    first = selection_hash(cfg, url), train_hash(cfg, url)
    assert (selection_hash(cfg, url), train_hash(cfg, url)) == first, "the same objects: the same hashes"

    other = ensure_train_shards(_cfg(tmp_path / "other", None, **{"data.synth.seed": 7}), log=lambda m: None)
    tars = sorted(p.name for p in Path(other).glob("*.tar"))
    assert tars == sorted(p.name for p in Path(shards).glob("*.tar"))
    assert [(Path(other) / t).read_bytes() for t in tars] != [(Path(shards) / t).read_bytes() for t in tars]
    time.sleep(1.1)  # a store's modification times may count whole seconds
    for name in tars:  # index.json untouched
        pafs.copy_files(f"{other}/{name}", f"{root}/data-a/{name}", source_filesystem=local,
                        destination_filesystem=fs)  # fmt: skip
    again = selection_hash(cfg, url), train_hash(cfg, url)
    assert again[0] != first[0] and again[1] != first[1]

    with pytest.raises(
        ImageLoRAError, match=r"data.train: cannot read the shard index s3://.*/nothing/index.json"
    ):
        selection_hash(cfg, f"{s3_storage}/nothing")
