"""The FLAME swing study's update geometry (flhelpers_lab/investigations/flame_swing.py), by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from flhelpers_lab.investigations.flame_swing import COLUMNS, GeometryRecorder, geometry_row, mean_pairwise_cosine, read_geometry


def test_mean_pairwise_cosine_by_hand():
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    # pairs: (1,0).(0,1) = 0, (1,0).(1,1)/sqrt2 = 0.7071, (0,1).(1,1)/sqrt2 = 0.7071
    assert mean_pairwise_cosine(u) == pytest.approx((0 + 2 / math.sqrt(2)) / 3)
    v = torch.tensor([[-1.0, 0.0]])
    assert mean_pairwise_cosine(u, v) == pytest.approx((-1 + 0 - 1 / math.sqrt(2)) / 3)
    assert mean_pairwise_cosine(u[:1]) != mean_pairwise_cosine(u[:1])  # NaN: no pair
    assert mean_pairwise_cosine(torch.zeros(2, 2)) == 0.0  # zero rows count as cosine 0


def test_mean_pairwise_cosine_is_invariant_to_order_and_scale():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(6, 5, generator=g)
    perm = torch.randperm(6, generator=g)
    scale = torch.rand(6, 1, generator=g) + 0.1
    assert mean_pairwise_cosine(u[perm] * scale[perm]) == pytest.approx(mean_pairwise_cosine(u))
    same = u[:1].repeat(4, 1)
    assert mean_pairwise_cosine(same) == pytest.approx(1.0)


def test_geometry_row_by_hand():
    updates = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [3.0, 4.0]])
    groups = {"A": np.array([1, 1, 0, 0, 0], bool), "S": np.array([0, 0, 1, 1, 0], bool),
              "H": np.array([0, 0, 0, 0, 1], bool)}
    row = geometry_row(updates, groups, np.array([1, 0, 1, 1, 0], bool))
    assert row["cos_A"] == pytest.approx(1.0) and row["cos_S"] == pytest.approx(-1.0)
    assert math.isnan(row["cos_H"]) and row["cos_A_S"] == pytest.approx(0.0)
    assert row["norm_A"] == pytest.approx(1.0) and row["norm_H"] == pytest.approx(5.0)
    assert (row["admitted_A"], row["admitted_S"], row["admitted_H"]) == (1, 2, 0)
    assert (row["size_A"], row["size_S"], row["size_H"]) == (2, 2, 1)
    assert set(row) | {"round"} == set(COLUMNS)


def test_recorder_splits_the_honest_peers_by_their_source_share(tmp_path):
    import json

    # 3 peers over 2 classes, source 0: peer 0 (attacker), peer 1 holds 50 % zeros (>= 1/2), peer 2 none
    (tmp_path / "config.json").write_text(json.dumps({"partition_histogram": [[5, 5], [5, 5], [0, 10]]}))
    rec = GeometryRecorder(tmp_path / "g.csv", tmp_path / "config.json", source_class=0)
    result = SimpleNamespace(accepted=torch.tensor([False, True, True]))
    updates = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    for r in (0, 1, 1):  # a resumed round is written again: the last row wins
        rec(SimpleNamespace(round=r, peer_ids=np.array([0, 1, 2]), is_attacker=np.array([True, False, False]),
                            updates=updates, result=result))
    frame = read_geometry(tmp_path / "g.csv")
    assert list(frame["round"]) == [0, 1]
    row = frame.iloc[0]
    assert (row["size_A"], row["size_S"], row["size_H"]) == (1, 1, 1)
    assert (row["admitted_A"], row["admitted_S"], row["admitted_H"]) == (0, 1, 1)
    assert row["norm_H"] == pytest.approx(2.0) and row["cos_A_S"] == pytest.approx(0.0)
    assert isinstance(frame, pd.DataFrame)


def test_the_study_sorts_rounds_and_writes_what_they_show():
    from flhelpers_lab.investigations import flame_swing as tool

    assert tool.flame_flip_config().defense == "flame" and tool.flame_flip_config().attacker_ratio == 0.4
    counts = [dict(tp=10, fn=0), dict(tp=0, fn=10), dict(tp=5, fn=5), dict(tp=0, fn=0)]
    assert [tool.kind(pd.Series(c)) for c in counts] == ["caught", "let in", "mixed", "mixed"]
    rows = []
    for r in range(4):
        caught = r % 2 == 0
        rows.append({"round": r, "kind": "caught" if caught else "let in", "source_accuracy": 0.9 if caught else 0.0,
                     "cos_A": 0.2 if caught else 0.4, "cos_S": 0.45 if caught else 0.2, "cos_H": 0.25, "cos_A_S": 0.0,
                     **{f"norm_{g}": 0.5 for g in "ASH"}, **{f"admitted_{g}": 1 for g in "ASH"},
                     "size_A": 4, "size_S": 2, "size_H": 4})
    text = tool.summary(pd.DataFrame(rows), "abc", 0, 4, 1e-6)
    assert "the same peers admitted in every round" in text and "K // 2 + 1 = 6 peers" in text
    assert "(Src-Acc 0.0 % after them) follow a clean model: the attackers' updates agree" in text
    assert "(cos_A 0.400)" in text and "(cos_S 0.450, against 0.200 in the let-in rounds)" in text
    assert "other peers from round 2" in tool.summary(pd.DataFrame(rows), "abc", 0, 2, 1e-6)
