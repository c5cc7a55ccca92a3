"""`imagelora-dist plan`: exact parameter counts from a config, memory terms that follow ZeRO and offload,
and the shipped plans beside configs/ kept current."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from imagelora_dist import HeadSelection, attach_image_lora, build_tiny_vlm, resolve_model, select_heads
from imagelora_dist.cli import main
from imagelora_dist.plan import GIB, PlanRequest, make_plan, render_plan

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
    assert command.startswith("# imagelora-dist plan ")
    args = shlex.split(command.removeprefix("# imagelora-dist "))
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
