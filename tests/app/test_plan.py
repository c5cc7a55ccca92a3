"""`imagelora-dist plan`: exact parameter counts from a config, memory terms that follow ZeRO and offload,
and the shipped plans beside configs/ kept current."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from imagelora_dist import HeadSelection, attach_image_lora, build_tiny_vlm, resolve_model, select_heads
from imagelora_dist.cli import main
from imagelora_dist.config import load_config
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.plan import (
    GIB,
    Plan,
    PlanRequest,
    eval_backend_for,
    make_plan,
    render_plan,
    request_from_config,
    resolve_eval_backend,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def tiny_config():
    model, _ = build_tiny_vlm("qwen2_5_vl", seed=0)
    return model.config.to_dict(), model


def test_parameter_counts_are_the_models_own(tiny_config):
    import torch

    config, model = tiny_config
    plan = make_plan(PlanRequest(config=config, name="tiny", gpus_per_node=1, budget=0.5))
    assert plan.model["parameters"] == sum(p.numel() for p in model.parameters())
    # The adapter: the same count as attaching Image-LoRA for real on a uniform half of the heads.
    spec = resolve_model(model)
    uniform = select_heads(torch.ones(spec.num_layers, spec.num_kv_heads, dtype=torch.float64), 0.5, tau=0.0)
    handle = attach_image_lora(model, uniform, rank=8, alpha=16)
    assert plan.trainable == sum(p.numel() for p in handle.parameters())
    handle.detach()
    everything = make_plan(PlanRequest(config=config, name="tiny", method="image_lora_all"))
    handle = attach_image_lora(model, HeadSelection.all_heads(spec), rank=8, alpha=16)
    assert everything.trainable == sum(p.numel() for p in handle.parameters())
    handle.detach()


def test_memory_terms_follow_zero_stage_gpus_and_offload(tiny_config):
    config, model = tiny_config
    one = make_plan(PlanRequest(config=config, name="t", gpus_per_node=1, zero=3))
    two = make_plan(PlanRequest(config=config, name="t", gpus_per_node=2, zero=3))
    assert two.train["base weights"] == pytest.approx(one.train["base weights"] / 2)  # ZeRO-3 partitions
    assert one.train["base weights"] == pytest.approx(sum(p.numel() for p in model.parameters()) * 2 / GIB)
    z2 = make_plan(PlanRequest(config=config, name="t", gpus_per_node=4, zero=2))
    z1 = make_plan(PlanRequest(config=config, name="t", gpus_per_node=4, zero=1))
    assert z2.train["base weights"] == one.train["base weights"]  # ZeRO-2 keeps the whole base
    assert z2.train["adapter gradients (fp32)"] == pytest.approx(z1.train["adapter gradients (fp32)"] / 4)
    assert z2.train["Adam moments (fp32)"] == pytest.approx(z1.train["Adam moments (fp32)"])
    offload = make_plan(PlanRequest(config=config, name="t", zero=3, offload="optimizer+params"))
    assert offload.train["base weights"] == 0 and offload.train["Adam moments (fp32)"] == 0
    assert one.train_checkpointed["activations"] < one.train["activations"]
    bigger = make_plan(PlanRequest(config=config, name="t", gpus_per_node=1, zero=3, micro_batch=2))
    assert bigger.train["activations"] == pytest.approx(2 * one.train["activations"])
    assert one.probe["model weights (whole, one replica)"] == pytest.approx(one.train["base weights"])


def test_cli_plans_a_released_model_and_rejects_bad_input_in_one_line(capsys, tmp_path):
    assert main(["plan", "--family", "qwen2_5_vl", "--size", "7b"]) == 0
    out = capsys.readouterr().out
    assert "8.29 B parameters" in out and "28 layers, 4 KV heads x 128" in out and "fits" in out
    for bad, needle in (
        (["--family", "qwen2_5_vl", "--size", "9b"], "not a known model"),
        (["--model", str(tmp_path / "nothing")], "no config.json"),
        (
            ["--family", "qwen2_5_vl", "--size", "3b", "--zero", "2", "--offload", "optimizer+params"],
            "ZeRO 3",
        ),
        (["--family", "qwen2_5_vl", "--size", "3b", "--budget", "2.5"], "--budget 2.5"),
    ):
        assert main(["plan", *bad]) == 2, bad
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle.replace("ZeRO 3", "--zero 3") in err[0], err


def test_cli_reads_a_checkpoint_directory(capsys, tmp_path):
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    model.config.save_pretrained(str(tmp_path))  # config.json only: no weights needed
    assert main(["plan", "--model", str(tmp_path), "--gpus-per-node", "1"]) == 0
    assert f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters" in capsys.readouterr().out


@pytest.mark.parametrize("size", ["3b", "7b", "32b", "72b"])
def test_the_shipped_plans_are_what_plan_prints_today(size, capsys):
    shipped = (CONFIGS / f"qwen2_5_vl_{size}.plan.txt").read_text()
    command, _, body = shipped.partition("\n")
    assert command.startswith(f"# imagelora-dist plan --config configs/qwen2_5_vl_{size}.yaml ")
    args = shlex.split(command.removeprefix("# imagelora-dist "))
    args[2] = str(CONFIGS / Path(args[2]).name)  # the command is written from the checkout's root
    assert main(args) == 0
    assert capsys.readouterr().out == body, f"regenerate configs/qwen2_5_vl_{size}.plan.txt"
    assert (CONFIGS / f"qwen2_5_vl_{size}.yaml").is_file()


def test_render_names_the_setup():
    from imagelora_dist.models.known_shapes import known_config

    text = render_plan(make_plan(PlanRequest(config=known_config("qwen2_5_vl", "72b"), name="72b", zero=3)))
    assert "73.41 B parameters" in text and "ZeRO-3" in text and "gathered module (ZeRO-3)" in text
    assert "does NOT fit" in text  # one whole 72B replica per probe actor is more than an H200 holds


def test_a_zero3_probe_holds_its_partition_plus_one_gathered_module():
    from imagelora_dist.models.known_shapes import known_config

    config = known_config("qwen2_5_vl", "72b")
    actors = make_plan(PlanRequest(config=config, name="72b", zero=3, gpus_per_node=8, probe_batch=1))
    zero3 = make_plan(
        PlanRequest(config=config, name="72b", zero=3, gpus_per_node=8, probe_batch=1, probe_backend="zero3")
    )
    whole = actors.probe["model weights (whole, one replica)"]
    assert whole == pytest.approx(actors.model["parameters"] * 2 / GIB)
    assert zero3.probe["model weights (ZeRO-3 partition)"] == pytest.approx(whole / 8)
    assert zero3.probe["gathered module (ZeRO-3)"] == pytest.approx(zero3.model["largest_module"] * 2 / GIB)
    assert not actors.fits(actors.probe) and zero3.fits(zero3.probe)


# --- eval rows, eval.backend auto, host memory, `plan --config` (issues 29 and 33) ---

REPO = CONFIGS.parent
DEFAULT_CONFIG = REPO / "imagelora_dist" / "resources" / "default.yaml"
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _known(size: str, **kw) -> Plan:
    from imagelora_dist.models.known_shapes import known_config

    return make_plan(PlanRequest(config=known_config("qwen2_5_vl", size), name=size, **kw))


def test_eval_rows_hold_the_backends_weights_and_the_kv_cache_by_hand():
    kw = {"visual_tokens": 1280, "text_tokens": 256, "eval_batch": 4, "max_new_tokens": 24}
    replicas = _known("7b", eval_backend="replicas", **kw)
    params = replicas.model["parameters"]
    # Qwen2.5-VL-7B: 28 layers x 4 KV heads x 128, bf16 keys and values for 4 x (1536 + 24) tokens
    kv = 2 * 28 * 4 * 128 * 2 * 4 * (1280 + 256 + 24) / GIB
    assert replicas.eval["KV cache"] == pytest.approx(kv)
    assert replicas.eval["model weights (whole replica)"] == pytest.approx(params * 2 / GIB)
    zero3 = _known("7b", eval_backend="zero3", ray_workers=8, **kw)
    assert zero3.eval["model weights (ZeRO-3 partition, 1/8)"] == pytest.approx(params * 2 / 8 / GIB)
    assert zero3.eval["KV cache"] == pytest.approx(kv)  # every rank generates its own batch
    spread = _known("7b", eval_backend="device_map", gpus_per_worker=2, **kw)
    assert spread.eval["model weights (1/2 of a replica)"] == pytest.approx(params / GIB)
    assert spread.eval["KV cache (1/2: each GPU caches its layers)"] == pytest.approx(kv / 2)
    longer = _known("7b", eval_backend="replicas", **{**kw, "max_new_tokens": 24 + 1560})
    assert longer.eval["KV cache"] == pytest.approx(2 * kv)


def test_auto_eval_backend_resolution():
    assert resolve_eval_backend("auto", 70.0, None, 80.0) == "replicas"
    assert resolve_eval_backend("auto", 100.0, 60.0, 80.0, gpus_per_worker=2) == "device_map"
    assert resolve_eval_backend("auto", 100.0, 90.0, 80.0, gpus_per_worker=2) == "zero3"
    assert resolve_eval_backend("auto", 100.0, 60.0, 80.0, gpus_per_worker=1) == "zero3"  # no GPUs to spread
    assert resolve_eval_backend("auto", 1e6, None, None) == "replicas"  # a CPU cluster
    assert resolve_eval_backend("device_map", 1.0, 1.0, 80.0) == "device_map"  # explicit stays
    with pytest.raises(ImageLoRAError, match="eval.backend 'tp'"):
        resolve_eval_backend("tp", 1.0, 1.0, 80.0)
    # On H200s: a 7B replica fits one GPU; a 72B one (~137 GiB + KV cache) does not, but half of it does
    assert _known("7b").eval_backend == "replicas"
    assert _known("72b", zero=3).eval_backend == "zero3"
    assert _known("72b", zero=3, gpus_per_worker=2).eval_backend == "device_map"
    # what the pipeline calls: a run config's eval.backend, auto resolved for its GPUs (None: no GPU)
    auto72 = load_config(CONFIGS / "qwen2_5_vl_72b.yaml", ["eval.backend=auto"])
    assert eval_backend_for(auto72, 141.0) == "zero3" and eval_backend_for(auto72, None) == "replicas"
    assert (
        eval_backend_for(load_config(CONFIGS / "qwen2_5_vl_7b.yaml", ["eval.backend=zero3"]), 141.0)
        == "zero3"
    )


def test_host_memory_while_loading_is_a_partition_plus_one_tensor_under_zero3():
    z3 = _known("72b", zero=3, gpus_per_node=8, probe_backend="zero3")
    params = z3.model["parameters"]
    embedding = 152064 * 8192 * 2 / GIB  # the largest tensor: the 72B's vocab x hidden embedding, in bf16
    for phase in ("train, loading", "probe, loading", "eval, loading"):  # eval: auto -> zero3
        assert z3.host[phase]["checkpoint partition (1/8)"] == pytest.approx(params * 2 / 8 / GIB), phase
        assert z3.host[phase]["largest tensor, read whole"] == pytest.approx(embedding), phase
    z2 = _known("7b", zero=2)
    assert z2.host["train, loading"]["whole model"] == pytest.approx(z2.model["parameters"] * 2 / GIB)
    assert z2.host_peak_gib == pytest.approx(max(sum(t.values()) for t in z2.host.values()))


def test_deepspeed_json_settings_reach_the_host_and_gpu_figures(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {
        "stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": False}, "offload_param": {"device": "cpu"},
        "stage3_max_live_parameters": 2e8, "stage3_prefetch_bucket_size": 1e7,
    }}))  # fmt: skip
    cfg = load_config(DEFAULT_CONFIG, [f"train.deepspeed={ds}", "train.workers=2", "model.dtype=bfloat16"])
    plan = make_plan(request_from_config(cfg))
    r = plan.request
    assert (r.zero, r.offload, r.gpus_per_node * r.nodes) == (3, "optimizer+params", 2)
    steady = plan.host["train, steady"]
    assert steady["DeepSpeed live parameters + prefetch bucket"] == pytest.approx((2e8 + 1e7) * 2 / GIB)
    assert steady["offloaded parameter partition"] == pytest.approx(plan.model["parameters"] * 2 / 2 / GIB)
    assert steady["offloaded optimizer state"] == pytest.approx(16 * plan.trainable / 2 / GIB)
    assert plan.train["prefetch bucket (ZeRO-3)"] == pytest.approx(1e7 * 2 / GIB)
    assert plan.train["base weights"] == 0  # parameters offloaded
    ds.write_text('{"zero_optimization": {}}')
    with pytest.raises(ImageLoRAError, match="no zero_optimization.stage"):
        request_from_config(cfg)


def test_plan_config_reads_the_run_and_rejects_conflicts_in_one_line(capsys):
    model, _ = build_tiny_vlm("qwen2_5_vl", seed=0)
    assert main(["plan", "--config", str(DEFAULT_CONFIG)]) == 0
    out = capsys.readouterr().out
    assert f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters" in out
    assert "per eval GPU" in out and "host peak per worker" in out
    # a released checkpoint's directory is recognized by its name when its files are not here
    assert main(["plan", "--config", str(DEFAULT_CONFIG), "model.path=/nowhere/Qwen2.5-VL-7B-Instruct"]) == 0
    assert "8.29 B parameters" in capsys.readouterr().out
    assert main(["plan", "--config", str(DEFAULT_CONFIG), "train.method=none"]) == 0
    out = capsys.readouterr().out  # only eval runs: no training rows, no probe, no training host phases
    assert (
        "no training" in out and "no probe" in out and "train, loading" not in out and "per eval GPU" in out
    )
    for bad, needle in (
        (["--config", str(DEFAULT_CONFIG), "--zero", "3"], "train.deepspeed"),
        (["train.workers=2"], "need --config"),
        (["--config", str(DEFAULT_CONFIG), "model.path=/nowhere/mine"], "model.path /nowhere/mine"),
        (["--config", str(DEFAULT_CONFIG), "eval.backend=tp"], "eval.backend"),
    ):
        assert main(["plan", *bad]) == 2, bad
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def _gpu_worker_memory_limits_gib() -> list[float]:
    limits = []
    for path in sorted((REPO / "k8s" / "gpu").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "RayCluster":
                for group in doc["spec"]["workerGroupSpecs"]:
                    res = group["template"]["spec"]["containers"][0]["resources"]["limits"]
                    if "nvidia.com/gpu" in res:
                        number, unit = re.fullmatch(r"(\d+)([KMGT]i)", res["memory"]).groups()
                        limits.append(int(number) * UNITS[unit] / GIB)
    return limits


@pytest.mark.parametrize("size", ["3b", "7b", "32b", "72b"])
def test_every_shipped_config_probes_trains_and_evaluates_on_its_cluster(size):
    cfg = load_config(CONFIGS / f"qwen2_5_vl_{size}.yaml")
    plan = make_plan(request_from_config(cfg, gpu_memory_gib=141.0))  # the configs' H200 nodes
    assert cfg.eval.num_samples is None  # a benchmark's number: every sample
    totals = plan.eval_totals
    assert cfg.eval.backend == resolve_eval_backend("auto", totals["replicas"], totals["device_map"], 141.0)
    assert plan.fits(plan.eval) and plan.fits(plan.probe)
    assert plan.fits(plan.train_checkpointed if cfg.train.gradient_checkpointing else plan.train)
    eval_gpus = cfg.ray.num_workers if cfg.eval.backend == "zero3" else cfg.eval.workers
    assert eval_gpus <= plan.gpus  # the GPUs it trains on
    # The GPU worker pods hold the most host memory one worker needs in any stage (issue 33)
    limits = _gpu_worker_memory_limits_gib()
    assert limits and all(plan.host_peak_gib <= limit for limit in limits), (plan.host_peak_gib, limits)
    header = (CONFIGS / f"qwen2_5_vl_{size}.plan.txt").read_text().partition("\n")[0]
    assert f"--host-memory-gib {min(limits):g}" in header  # the shipped plan compares with the real pods
