"""The world-size-independent resume state without ZeRO (the torch optimizer holds the module's own
parameters) and its refusals; the ZeRO paths run in tests/integration/test_train.py.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.train.portable_state import PORTABLE_FILE, load_portable_state, save_portable_state


def _engine(seed: int, size: int = 3) -> SimpleNamespace:
    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(4, size), torch.nn.Linear(size, 2))
    module[0].bias.requires_grad_(False)  # frozen: not part of the state
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=0.05, weight_decay=0.1)
    return SimpleNamespace(module=module, optimizer=opt, lr_scheduler=None, global_steps=0, global_samples=0,
                           micro_steps=0, train_batch_size=lambda: 8, gradient_accumulation_steps=lambda: 2)  # fmt: skip


def _step(engine: SimpleNamespace, x: torch.Tensor) -> None:
    engine.optimizer.zero_grad()
    engine.module(x).square().sum().backward()
    engine.optimizer.step()


def test_a_resumed_optimizer_continues_exactly_like_the_original(tmp_path):
    x = torch.randn(5, 4)
    a = _engine(0)
    for _ in range(3):
        _step(a, x)
    save_portable_state(a, tmp_path, rank=0, step=3, cursor={"epoch": 1, "batches": 2})
    b = _engine(0)  # the same frozen base; other trainable weights, no optimizer state yet
    with torch.no_grad():
        for p in b.optimizer.param_groups[0]["params"]:
            p.add_(torch.randn_like(p))
    state = load_portable_state(b, tmp_path / PORTABLE_FILE)
    assert (state.step, state.cursor, b.global_steps, b.micro_steps) == (3, {"epoch": 1, "batches": 2}, 3, 6)
    for _ in range(2):  # AdamW's update depends on the moments and on the step count (bias correction)
        _step(a, x)
        _step(b, x)
    for (name, pa), pb in zip(a.module.named_parameters(), b.module.parameters(), strict=True):
        if pa.requires_grad:
            assert torch.equal(pa, pb), name
    stored = load_file(str(tmp_path / PORTABLE_FILE))
    assert not any(k.endswith("0.bias") for k in stored)  # frozen weights are never in it


def test_a_state_for_other_parameters_or_another_file_is_refused(tmp_path):
    a = _engine(0)
    _step(a, torch.randn(5, 4))
    save_portable_state(a, tmp_path, rank=0, step=1, cursor={})
    with pytest.raises(
        ImageLoRAError, match=r"does not fit .*missing \['exp_avg/2.bias'.*unexpected \['exp_avg/0.weight'"
    ):
        load_portable_state(_renamed(_engine(0)), tmp_path / PORTABLE_FILE)
    with pytest.raises(ImageLoRAError, match=r"0.weight has 12 values, the model 20"):
        load_portable_state(_engine(0, size=5), tmp_path / PORTABLE_FILE)
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(other))
    with pytest.raises(
        ImageLoRAError, match=r"other.safetensors: format None, expected 'imagelora-portable-1'"
    ):
        load_portable_state(a, other)
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(ImageLoRAError, match=r"broken.safetensors: not a readable safetensors file"):
        load_portable_state(a, tmp_path / "broken.safetensors")


def _renamed(engine: SimpleNamespace) -> SimpleNamespace:
    engine.module = torch.nn.Sequential(torch.nn.Identity(), *engine.module)  # names shift: 0.* -> 1.*
    return engine
