"""The plan's time model (plan/timing.py), its alternatives (plan/options.py) and ZeRO++ settings: FLOPs and
bytes counted by hand from the tiny model's own parameters, links split as a ring all-gather moves data, and
the shipped configs on the option their plan marks best."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from imagelora_dist import build_tiny_vlm
from imagelora_dist.cli import main
from imagelora_dist.config import load_config
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.plan import DeepSpeedLimits, PlanRequest, make_plan
from imagelora_dist.plan.hardware import GPUS, hardware
from imagelora_dist.plan.timing import gather_split

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def tiny():
    model, _ = build_tiny_vlm("qwen2_5_vl", seed=0)
    return model.config.to_dict(), model


def _request(config, **kw) -> PlanRequest:
    base = dict(config=config, name="tiny", gpus_per_node=2, zero=3, micro_batch=2, accumulation=3,
                visual_tokens=64, text_tokens=32, method="image_lora_all", gradient_checkpointing=True)  # fmt: skip
    return PlanRequest(**{**base, **kw})


def test_train_flops_are_the_models_matmuls_counted_by_hand(tiny):
    config, model = tiny
    plan = make_plan(_request(config), with_alternatives=False)
    layers = model.model.language_model.layers
    layer = sum(p.numel() for p in layers[0].parameters())
    seq, mb, acc = 96, 2, 3
    tokens = mb * seq
    linears = 2 * len(layers) * layer * tokens
    attention = len(layers) * mb * 2 * seq * seq * layers[0].self_attn.q_proj.out_features
    head = 2 * model.lm_head.weight.numel() * tokens
    vision = 2 * sum(p.numel() for p in model.model.visual.parameters()) * mb * 64 * 4  # 2x2 patches a token
    t = plan.times["train"]
    assert t.flops["frozen forward (decoder + LM head)"] == pytest.approx(acc * (linears + attention + head))
    assert t.flops["backward (activations)"] == pytest.approx(acc * (linears + 2 * attention + head))
    assert t.flops["recompute (checkpointing)"] == pytest.approx(acc * (linears + attention))
    assert t.flops["vision tower (forward, no grad)"] == pytest.approx(acc * vision)
    assert t.flops["adapter (forward + backward)"] == pytest.approx(acc * 6 * plan.trainable * mb * 64)
    hw = hardware("h200")
    assert t.useful_flops == pytest.approx(sum(t.flops.values()) - t.flops["recompute (checkpointing)"])
    assert t.compute_s == pytest.approx(sum(t.flops.values()) / (989e12 * hw.matmul_efficiency))
    assert t.mfu(hw) == pytest.approx(t.useful_flops / (t.step_s * 989e12))
    assert t.samples == mb * acc * 2


def test_zero_gather_and_reduce_bytes_are_the_parameters_counted_by_hand(tiny):
    config, model = tiny
    numels = [p.numel() for p in model.parameters()]
    big = sum(n for n in numels if n >= 10**5)  # DeepSpeed's default persistence threshold
    layer = [p.numel() for p in model.model.language_model.layers[0].parameters()]
    acc = 3
    plan = make_plan(_request(config), with_alternatives=False)
    grads = 4 * plan.trainable  # fp32
    v = plan.times["train"].volume
    # forward: the large tensors every micro-batch; the small ones (and the adapter) once a step; the tiny
    # model fits inside DeepSpeed's reuse distance: no re-gathers
    assert v["all-gather"] == pytest.approx(acc * 2 * big + 2 * (sum(numels) - big) + grads)
    assert v["reduce"] == pytest.approx(acc * grads)
    tight = DeepSpeedLimits(stage=3, max_reuse_distance=0, prefetch_bucket_size=0)
    regather = make_plan(_request(config, deepspeed=tight), with_alternatives=False).times["train"].volume
    again = acc * len(model.model.language_model.layers) * 2 * sum(n for n in layer if n >= 10**5)
    assert regather["all-gather"] == pytest.approx(v["all-gather"] + again)
    z2 = make_plan(_request(config, zero=2), with_alternatives=False).times["train"]
    assert z2.volume == pytest.approx({"reduce": acc * grads, "all-gather": grads})
    assert "parameter all-gather, forward" not in z2.comm


def test_links_split_as_a_ring_moves_data_and_zeropp_keeps_regathers_in_the_node(tiny):
    assert gather_split(16.0, 16, 8) == pytest.approx((16 * 7 / 16, 16 * 8 / 16))  # 7 peers here, 8 away
    assert gather_split(16.0, 8, 8) == pytest.approx((16 * 7 / 8, 0.0))
    assert gather_split(16.0, 16, 8, within_node=True) == pytest.approx((16 * 7 / 8, 0.0))
    config, _ = tiny
    tight = DeepSpeedLimits(stage=3, max_reuse_distance=0, prefetch_bucket_size=0)
    two_nodes = _request(config, gpus_per_node=4, nodes=2, deepspeed=tight)
    flat = make_plan(two_nodes, with_alternatives=False).times["train"]
    hpz = make_plan(replace(two_nodes, hpz=4), with_alternatives=False)
    again = next(k for k in flat.comm if "recompute" in k)
    local = next(k for k in hpz.times["train"].comm if "hpZ" in k)
    assert flat.comm[again][1] > 0 and hpz.times["train"].comm[local][1] == 0  # no fabric bytes
    assert (
        hpz.times["train"].comm["parameter all-gather, forward"] == flat.comm["parameter all-gather, forward"]
    )
    assert any(k.startswith("hpZ node-local partition") for k in hpz.train)  # its memory is shown
    q = make_plan(replace(two_nodes, quantized_weights=True), with_alternatives=False).times["train"]
    fwd = "parameter all-gather, forward"
    assert q.comm[fwd][0] == pytest.approx(flat.comm[fwd][0] / 2)


def test_alternatives_keep_the_global_batch_and_the_best_fits_and_is_fastest(tiny):
    config, _ = tiny
    plan = make_plan(_request(config, gpu_memory_gib=3.03))  # the tiny options need 3.01-3.13 GiB
    options = plan.alternatives
    assert {o.micro_batch * o.accumulation for o in options} == {6}
    assert {(o.zero, o.micro_batch, o.checkpointing) for o in options} == {
        (z, m, gc) for z in (2, 3) for m in (1, 2, 3, 6) for gc in (False, True)
    }
    fitting = [o for o in options if o.fits]
    # the fastest that fits (steps within the model's three significant digits are equal)
    assert options[0] is fitting[0] and options[0].time.step_s <= 1.005 * min(o.time.step_s for o in fitting)
    assert all(o.gpu_gib <= 3.03 for o in fitting) and any(not o.fits for o in options)


@pytest.mark.parametrize("size", ["3b", "7b", "32b", "72b"])
def test_every_shipped_config_runs_the_option_its_plan_marks_best(size):
    # test_plan.py checks the plan.txt is what `plan` prints today; here: it marks this config's option best
    # and shows the predicted step time and MFU
    lines = (CONFIGS / f"qwen2_5_vl_{size}.plan.txt").read_text().splitlines()
    mine = [line for line in lines if line.endswith("<- best, this config")]
    assert len(mine) == 1, f"configs/qwen2_5_vl_{size}.yaml: not the option its plan marks best"
    cfg = load_config(CONFIGS / f"qwen2_5_vl_{size}.yaml")
    t = cfg.train
    gc = "on" if t.gradient_checkpointing else "off"
    assert f"micro-batch {t.micro_batch_size} x accumulation {t.grad_accum}, checkpointing {gc}" in mine[0]
    assert any(line.startswith("  train, one optimizer step") for line in lines)
    assert any("MFU" in line and "screenshots/s" in line for line in lines)


def test_cli_takes_the_gpu_and_link_figures_and_rejects_bad_ones(capsys):
    assert (
        main(["plan", "--family", "qwen2_5_vl", "--size", "3b", "--gpu", "h100", "--fabric-gbs", "25"]) == 0
    )
    out = capsys.readouterr().out
    assert "of 80 GiB" in out and "H100 SXM" in out and "fabric 25 GB/s" in out
    assert GPUS["h100"].memory_gib == 80.0
    assert main(["plan", "--family", "qwen2_5_vl", "--size", "3b", "--tflops", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bf16_tflops 0.0: must be > 0" in err[0]
    with pytest.raises(ImageLoRAError, match="--gpu 'a100'"):
        hardware("a100")
    assert main(["plan", "--family", "qwen2_5_vl", "--size", "3b", "--zero", "2", "--quantized-weights"]) == 2
    assert "needs --zero 3" in capsys.readouterr().err


def test_zeropp_settings_reach_the_deepspeed_json_and_need_zero3(tmp_path):
    from imagelora_dist.train.loop import deepspeed_config, load_deepspeed_template

    cfg = load_config(None, ["train.deepspeed=zero3", "train.workers=2", "train.zero3_hpz=2",
                             "train.zero3_quantized_weights=true"])  # fmt: skip
    zero = deepspeed_config(cfg, 2, "bfloat16")["zero_optimization"]
    assert zero["zero_hpz_partition_size"] == 2 and zero["zero_quantized_weights"] is True
    plain = deepspeed_config(load_config(None, ["train.deepspeed=zero3"]), 2, "bfloat16")["zero_optimization"]
    assert "zero_hpz_partition_size" not in plain  # off: DeepSpeed's own defaults, the stage hashes unchanged
    with pytest.raises(ImageLoRAError, match="need ZeRO-3"):
        load_deepspeed_template(
            load_config(None, ["train.deepspeed=zero2", "train.zero3_quantized_weights=true"])
        )
    with pytest.raises(ImageLoRAError, match="zero3_hpz 3 does not divide workers 2"):
        load_config(None, ["train.workers=2", "train.zero3_hpz=3"])
