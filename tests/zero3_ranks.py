"""A ZeRO-3 group of N local processes (gloo, no Ray) that load checkpoints with load_partitioned.

`run_group(world, jobs, out)` starts `world` ranks of this file; each rank, for every job
{"path", "dtype", "name"}: measures its host memory around the loading (peak RSS reset through
/proc/self/clear_refs, so the peak is the loading's own), checks every partitioned parameter holds no
`data`, gathers the weights (GatheredParameters) and, on rank 0, writes them to `out/<name>.safetensors`.
Each rank writes `out/<name>.rank<r>.json` with its memory figures (bytes): `before` (RSS right before
loading: the worker's fixed cost), `peak` (VmHWM while loading), `partition` (bytes of its ds_tensors).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _rank_main(out: Path, jobs: list[dict], gather: bool) -> None:
    import torch
    import torch.distributed as dist

    from imagelora_dist.config import ModelConfig
    from imagelora_dist.train.zero3_loading import import_deepspeed

    deepspeed = import_deepspeed()
    # A file rendezvous (MASTER_PORT is unused): a port picked free by the parent could be taken before rank 0 binds it.
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]))  # fmt: skip
    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    for job in jobs:
        cfg = ModelConfig.model_validate({"path": job["path"], "dtype": job["dtype"]})
        dist.barrier()
        before = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
        model = _load(cfg, ds_config, job.get("loader", "partitioned"))
        peak = _status_kb("VmHWM")
        params = list(model.parameters())
        partitioned = [p for p in params if hasattr(p, "ds_tensor")]
        held = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in partitioned)
        record = {"before": before, "peak": peak, "partition": held, "params": len(params),
                  "partitioned": len(partitioned), "empty_data": sum(p.data.numel() == 0 for p in partitioned)}  # fmt: skip
        (out / f"{job['name']}.rank{rank}.json").write_text(json.dumps(record))
        if gather:
            state = {}
            for name, param in model.named_parameters():
                with deepspeed.zero.GatheredParameters([param]):
                    if rank == 0:
                        state[name] = param.data.detach().clone()
            if rank == 0:
                from safetensors.torch import save_file

                for name, buffer in model.named_buffers():
                    state[f"buffer:{name}"] = buffer.detach().clone()
                save_file(
                    {k: v.contiguous() for k, v in state.items()}, str(out / f"{job['name']}.safetensors")
                )
        del model, params, partitioned
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    dist.barrier()
    dist.destroy_process_group()


def _load(cfg, ds_config: dict, loader: str):
    """load_partitioned, or (`from_pretrained`, the measured reference) transformers' own ZeRO-3 loading."""
    from imagelora_dist.train.zero3_loading import load_partitioned

    if loader == "partitioned":
        return load_partitioned(cfg, ds_config)[0]
    import torch
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from imagelora_dist.models.tiny import load_vlm

    keep = HfDeepSpeedConfig({**ds_config, "bf16": {"enabled": cfg.dtype == "bfloat16"}})
    try:
        return load_vlm(cfg.path, dtype=getattr(torch, cfg.dtype))[0]
    finally:
        del keep
        unset_hf_deepspeed_config()


def run_group(
    world: int, jobs: list[dict], out: Path, gather: bool = True, timeout: float = 600,
    script: str = __file__, spec: dict | None = None,
) -> None:  # fmt: skip
    """Run `jobs` on a local gloo group of `world` ranks (subprocesses); raise if any rank fails. Another
    rank `script` (tests/comm_ranks.py) gets `spec` as its argument instead."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "rendezvous").unlink(missing_ok=True)
    spec = json.dumps(spec if spec is not None else {"out": str(out), "jobs": jobs, "gather": gather})
    procs: list[subprocess.Popen] = []
    logs = [tempfile.TemporaryFile("w+") for _ in range(world)]
    for rank in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
               "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, script, spec], env=env, cwd=REPO, stdout=logs[rank],
                                      stderr=subprocess.STDOUT))  # fmt: skip
    deadline = time.monotonic() + timeout
    try:  # a failed rank leaves the others waiting in a collective: stop them all at the first failure
        while any(p.poll() is None for p in procs) and all(p.poll() in (None, 0) for p in procs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world} ranks still loading after {timeout} s")
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    # The rank that failed first, not one stopped above (killed: a negative code), names the error.
    for rank in sorted(range(world), key=lambda r: procs[r].returncode < 0):
        logs[rank].seek(0)
        if procs[rank].returncode != 0:
            raise RuntimeError(
                f"rank {rank} of {world} exited {procs[rank].returncode}:\n{logs[rank].read()[-4000:]}"
            )
    for log in logs:
        log.close()


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    _rank_main(Path(spec["out"]), spec["jobs"], spec["gather"])
