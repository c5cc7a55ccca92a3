"""Selection invariants (hypothesis) and the head_selection.json format."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from imagelora_dist import HeadSelection, SelectionError, select_heads
from imagelora_dist.selection import allocate_layer_budgets

score_tables = st.integers(1, 8).flatmap(
    lambda layers: st.integers(1, 6).flatmap(
        lambda heads: st.lists(
            st.lists(
                st.floats(0, 1e3, allow_nan=False, allow_infinity=False), min_size=heads, max_size=heads
            ),
            min_size=layers,
            max_size=layers,
        )
    )
)


@settings(max_examples=200, deadline=None)
@given(scores=score_tables, data=st.data(), tau=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_selection_invariants(scores, data, tau):
    layers, heads = len(scores), len(scores[0])
    budget = data.draw(st.integers(1, layers * heads))
    sel = select_heads(scores, budget, tau)
    budgets = sel.layer_budgets()
    assert sel.total_heads == budget == sum(budgets)
    assert all(0 <= k <= heads for k in budgets)
    for layer, chosen in sel.kv_indices.items():
        assert chosen == sorted(set(chosen))
        rest = [h for h in range(heads) if h not in chosen]
        if chosen and rest:
            assert min(scores[layer][h] for h in chosen) >= max(scores[layer][h] for h in rest)
    if tau == 0.0:
        assert max(budgets) - min(budgets) <= 1
    again = select_heads(scores, budget, tau)
    assert again.to_dict() == sel.to_dict()


@settings(max_examples=100, deadline=None)
@given(
    masses=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=10),
    cap=st.integers(1, 5),
    tau=st.floats(0, 3),
    data=st.data(),
)
def test_allocation_respects_caps_and_total(masses, cap, tau, data):
    total = data.draw(st.integers(0, cap * len(masses)))
    k = allocate_layer_budgets(masses, [cap] * len(masses), total, tau)
    assert sum(k) == total and all(0 <= x <= cap for x in k)


@settings(max_examples=100, deadline=None)
@given(masses=st.lists(st.floats(0.01, 100, allow_nan=False), min_size=1, max_size=10), data=st.data())
def test_allocation_is_proportional_when_caps_do_not_bind(masses, data):
    total = data.draw(st.integers(1, 20))
    k = allocate_layer_budgets(masses, [total] * len(masses), total, 1.0)
    for share, got in zip(masses, k, strict=True):
        # rounding (<= 0.5) plus at most one repair step per layer
        assert abs(got - total * share / sum(masses)) <= 1.5


def test_proportional_allocation_follows_mass():
    scores = [[10.0, 10.0], [1.0, 1.0], [0.0, 0.0], [5.0, 5.0]]
    sel = select_heads(scores, 4, tau=1.0)
    assert sel.layer_budgets() == [2, 0, 0, 2]
    assert select_heads(scores, 4, tau=0.0).layer_budgets() == [1, 1, 1, 1]


def test_repair_tie_breaks_by_layer_index():
    # 3 equal layers, budget 2: rounding gives 1,1,1; remove from lowest mass, ties -> lowest index first.
    assert allocate_layer_budgets([1.0, 1.0, 1.0], [2, 2, 2], 2, 1.0) == [0, 1, 1]
    # budget 4: rounding gives 1,1,1; add to highest mass first, ties -> lowest index.
    assert allocate_layer_budgets([1.0, 1.0, 1.0], [2, 2, 2], 4, 1.0) == [2, 1, 1]


def test_fraction_budget_and_errors():
    scores = torch.rand(4, 2, dtype=torch.float64)
    assert select_heads(scores, 0.25, 1.0).total_heads == 2
    with pytest.raises(SelectionError, match="outside"):
        select_heads(scores, 9, 1.0)
    with pytest.raises(SelectionError, match="fraction"):
        select_heads(scores, 1.5, 1.0)
    with pytest.raises(SelectionError, match="non-negative"):
        select_heads(-scores, 2, 1.0)
    with pytest.raises(SelectionError, match="tau"):
        select_heads(scores, 2, -1.0)


def test_json_round_trip_and_authors_format(tmp_path):
    scores = [[3.0, 1.0, 2.0], [0.5, 4.0, 0.1]]
    sel = select_heads(
        scores, 3, 1.0, family="qwen2_5_vl", probe_method="rank1", probe_examples=8, config_hash="abc"
    )
    path = sel.to_json(tmp_path / "head_selection.json")
    data = json.loads(path.read_text())
    for key in ("kv_indices", "layer_budgets_kv", "scores", "hkv", "tau", "num_heads"):
        assert key in data
    assert data["num_heads"] == 3 and data["kv_indices"]["1"] == [1]
    assert data["hkv"] == {"0": 3, "1": 3}
    back = HeadSelection.from_json(path)
    assert back.to_dict() == sel.to_dict()
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    # The authors' selector writes `selected_kv` in older scripts and no provenance fields.
    authors = {"num_heads": 2, "tau": 0.5, "selected_kv": {"0": [2], "1": [0]}, "hkv": {"0": 3, "1": 3}}
    parsed = HeadSelection.from_dict(authors)
    assert parsed.kv_indices == {0: [2], 1: [0]} and parsed.num_layers == 2


def test_bad_selection_files(tmp_path):
    bad = tmp_path / "sel.json"
    bad.write_text("{not json")
    with pytest.raises(SelectionError, match="sel.json"):
        HeadSelection.from_json(bad)
    bad.write_text(json.dumps({"kv_indices": {"0": [5]}, "hkv": {"0": 2}}))
    with pytest.raises(SelectionError, match="head 5 out of range"):
        HeadSelection.from_json(bad)
    with pytest.raises(SelectionError, match="not found"):
        HeadSelection.from_json(tmp_path / "missing.json")
