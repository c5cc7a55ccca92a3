"""A gloo group of local DeepSpeed ranks that trains the tiny model as the training loop builds it and counts
the bytes DeepSpeed's communication logger sees (tests/integration/test_comm_bytes.py).

`run_ranks(world, jobs, out)` starts `world` ranks of this file; a job: {"overrides": [config key=value...],
"steps": N}. For each job in turn, each rank builds the model with the loop's own `_adapted_model` and
DeepSpeed JSON (`deepspeed_config`; ZeRO-3: partitioned while built), runs N optimizer steps of the config's
micro-batch and accumulation on its own real image batch, and records for every step, per collective, the
sum over its calls of the logger's message size in bytes (all_gather_into_tensor: the rank's input
partition; reduce_scatter_tensor and all_reduce: the whole tensor), and the trained adapter (gathered; rank
0's values), in `out/rank<r>.json`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zero3_ranks import run_group  # noqa: E402 - the same launcher as the loading tests


def _rank_main(out: Path, jobs: list[dict]) -> None:
    import torch.distributed as dist

    from imagelora_dist.train.zero3_loading import import_deepspeed

    deepspeed = import_deepspeed()
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]))  # fmt: skip
    deepspeed.init_distributed(dist_backend="gloo")
    results = [_run_job(deepspeed, job) for job in jobs]  # one process for every job: imports cost the most
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def _run_job(deepspeed, job: dict) -> dict:
    import torch.distributed as dist
    from deepspeed.comm import comm
    from vlm_batches import image_batch

    from imagelora_dist.config import load_config
    from imagelora_dist.train.loop import WorkerContext, _adapted_model, deepspeed_config

    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = load_config(None, job["overrides"])
    ds_config = deepspeed_config(cfg, world, "bfloat16")
    ds_config["comms_logger"] = {"enabled": True, "prof_all": True, "verbose": False}
    adapted, processor, _, _, _ = _adapted_model(cfg, WorkerContext(rank, world), "bfloat16", ds_config)
    trainable = [p for p in adapted.model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=adapted.model, model_parameters=trainable, config=ds_config)
    batch = image_batch(processor, n=cfg.train.micro_batch_size, seed=rank)
    steps = []
    for _ in range(job.get("steps", 2)):
        comm.comms_logger.comms_dict = {}
        for _ in range(ds_config["gradient_accumulation_steps"]):
            engine.backward(engine(**batch).loss)
            engine.step()
        logged = comm.comms_logger.comms_dict
        steps.append(
            {op: sum(int(size) * calls[0] for size, calls in sizes.items()) for op, sizes in logged.items()}
        )
    adapter = {}  # gathered on every rank (a collective), kept on rank 0
    for name, param in adapted.model.named_parameters():
        if param.requires_grad:
            with deepspeed.zero.GatheredParameters([param], enabled=hasattr(param, "ds_id")):
                adapter[name] = param.detach().float().flatten().tolist() if rank == 0 else []
    engine.destroy()
    return {"steps": steps, "adapter": adapter}


def run_ranks(
    world: int, jobs: list[dict], out: Path, timeout: float = 300
) -> list[list[list[dict[str, int]]]]:
    """Run `jobs` one after the other on `world` local gloo ranks; per rank, per job, per step, the logged
    bytes of each collective."""
    run_group(world, [], out, timeout=timeout, script=__file__, spec={"out": str(out), "jobs": jobs})
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    _rank_main(Path(spec["out"]), spec["jobs"])
