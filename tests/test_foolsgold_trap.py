"""FoolsGold's self-locking study (issue 19, section 1): source holders, the weight-share record,
the summary's escape round, and one small end-to-end poisoned-start run on real MNIST."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from flhelpers.config import benchmark_config
from flhelpers.defenses.base import AggregationResult
from flhelpers.results import run_dir
from flhelpers.fl.grid import run_grid
from flhelpers_lab.investigations.foolsgold_trap import (ARXIV_SETTING, SWEEP_DEFENSES, SWEEP_K, WeightShareRecorder,
                                                         WeightShares, copy_reference_runs, read_shares, share_path,
                                                         source_holders, study_configs, trap_rounds, trap_summary)


def test_source_holders_by_hand() -> None:
    hist = np.array([[5, 5], [1, 9], [0, 0], [2, 2], [3, 1]])
    # source 0, C = 2: holders have at least half of their samples in class 0
    assert source_holders(hist, 0).tolist() == [True, False, False, True, True]
    assert source_holders(hist, 1).tolist() == [True, True, False, True, False]


def _record(tmp_path, result: AggregationResult, attackers, ids=(0, 1, 2, 3)) -> pd.DataFrame:
    config = tmp_path / "config.json"
    # peers 0..3 of 10 classes, source 7: peers 1 and 3 hold >= 10 % sevens, peer 2 holds none
    hist = np.zeros((4, 10), dtype=int)
    hist[:, 0] = [100, 80, 100, 50]
    hist[:, 7] = [5, 20, 0, 50]
    config.write_text(json.dumps({"partition_histogram": hist.tolist()}))
    rec = WeightShareRecorder(tmp_path / "shares.csv", config, source_class=7)
    rec(SimpleNamespace(round=0, peer_ids=np.array(ids), is_attacker=np.array(attackers), result=result))
    return read_shares(tmp_path / "shares.csv")


def test_recorder_shares_by_hand(tmp_path) -> None:
    # peer 3 is an attacker (it is not counted as an honest holder); peer 1 is the honest holder
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    res = AggregationResult(torch.zeros(2), weights > 0, weights, {})
    row = _record(tmp_path, res, [False, False, False, True]).iloc[0]
    assert row["share_attackers"] == pytest.approx(0.4)
    assert row["share_honest_source_holders"] == pytest.approx(0.2)
    assert row["share_honest_others"] == pytest.approx(0.4)
    assert not row["poisoned"] and row["known"]
    assert row["weights"] == "0:H:1 1:S:2 2:H:3 3:A:4"


def test_recorder_uses_foolsgolds_alpha_in_a_poisoned_round(tmp_path) -> None:
    """In a poisoned-start round the applied weights are the attackers' FedAvg; the record keeps the
    rule's own verdict (FoolsGold's alpha), which is what shows whether the trap has closed."""
    applied = torch.tensor([0.0, 0.0, 0.0, 50.0])
    res = AggregationResult(torch.zeros(2), applied > 0, applied,
                            {"alpha": [0.0, 0.0, 1.0, 1.0], "poisoned_start": "FedAvg over 1 attacker update(s)"})
    row = _record(tmp_path, res, [False, False, False, True]).iloc[0]
    assert row["poisoned"] and row["known"]
    assert row["share_attackers"] == pytest.approx(0.5) and row["share_honest_source_holders"] == 0.0


def test_recorder_leaves_unknown_weights_nan(tmp_path) -> None:
    applied = torch.tensor([0.0, 0.0, 0.0, 50.0])
    res = AggregationResult(torch.zeros(2), applied > 0, applied, {"poisoned_start": "FedAvg over 1"})
    row = _record(tmp_path, res, [False, False, False, True]).iloc[0]
    assert not row["known"] and math.isnan(row["share_attackers"])
    (tmp_path / "z").mkdir()
    zero = AggregationResult(torch.zeros(2), torch.zeros(4, dtype=torch.bool), torch.zeros(4), {})
    assert math.isnan(_record(tmp_path / "z", zero, [False] * 4).iloc[0]["share_attackers"])


def test_summary_escape_round_and_shares_after_k() -> None:
    src = [0.0, 0.0, 0.6, 0.4, 0.7, 0.8, 0.9]
    rounds = pd.DataFrame({"run_id": "r", "label": "x", "benchmark": "mnist-mild", "defense": "foolsgold",
                           "poisoned_rounds": 2, "lr": 0.01, "local_epochs": 1, "round": range(7),
                           "source_accuracy": src, "attack_success_rate": [1 - s for s in src],
                           "accuracy": 0.9, "share_attackers": [1, 1, 0.5, 0.5, 0.2, 0.2, 0.2],
                           "share_honest_source_holders": [0, 0, 0, 0, 0.3, 0.3, 0.3]})
    row = trap_summary(rounds, last=3).iloc[0]
    assert row["escaped_at"] == 4  # 0.6 at round 2 falls back to 0.4 at round 3
    assert row["src_acc"] == pytest.approx(80.0) and row["asr"] == pytest.approx(20.0)
    assert row["min_src_acc_after_k"] == pytest.approx(40.0)
    assert row["mean_share_attackers"] == pytest.approx((0.5 + 0.5 + 0.2 * 3) / 5)
    never = trap_summary(rounds.assign(source_accuracy=0.1)).iloc[0]
    assert never["escaped_at"] is None or math.isnan(never["escaped_at"])


def test_study_plan() -> None:
    configs = study_configs("medium")
    sweep = [(c.defense, c.poisoned_rounds) for c in configs if c.lr == 0.01]
    assert sorted(sweep) == sorted((d, k) for d in SWEEP_DEFENSES for k in SWEEP_K)
    arxiv = [c for c in configs if c.lr != 0.01]
    assert sorted(c.benchmark for c in arxiv) == ["mnist-iid", "mnist-mild"]
    assert all(c.defense == "foolsgold" and c.poisoned_rounds == 0 and c.lr == ARXIV_SETTING["lr"]
               and c.local_epochs == ARXIV_SETTING["local_epochs"] for c in arxiv)
    # k = 0 is the committed reference run of the medium plan (same id)
    ref = benchmark_config("mnist-mild", "medium", defense="foolsgold", attacker_ratio=0.4)
    assert ref.run_id() in {c.run_id() for c in configs}
    assert len({c.run_id() for c in configs}) == len(configs)


def test_poisoned_start_run_records_every_round(data_root, tmp_path) -> None:
    cfg = benchmark_config("mnist-mild", "quick", defense="foolsgold", attacker_ratio=0.4, rounds=3,
                           num_peers=5, train_subset=600, test_subset=200, poisoned_rounds=2)
    rid = cfg.run_id()
    run_grid([cfg], data_root, tmp_path, progress=False, recorder=WeightShares())  # the study's own path
    shares = read_shares(share_path(tmp_path, rid))
    assert shares["round"].tolist() == [0, 1, 2]
    assert shares["poisoned"].tolist() == [True, True, False] and shares["known"].all()
    total = shares[["share_attackers", "share_honest_source_holders", "share_honest_others"]].sum(axis=1)
    np.testing.assert_allclose(total, 1.0)
    assert shares["weights"].str.count(":A:").eq(2).all()  # 2 attackers of 5
    rounds = trap_rounds(tmp_path, [cfg])
    assert len(rounds) == 3 and rounds["share_attackers"].notna().all()
    summary = trap_summary(rounds, last=2)
    assert summary["poisoned_rounds"].tolist() == [2] and summary["rounds"].tolist() == [3]


def test_k0_fedavg_and_lfighter_runs_are_copied_from_the_reference_store(tmp_path) -> None:
    configs = [c for c in study_configs() if c.poisoned_rounds == 0 and c.benchmark == "mnist-mild"]
    ref, out = tmp_path / "reference", tmp_path / "out"
    for cfg in configs:
        folder = run_dir(ref, cfg.run_id())
        folder.mkdir(parents=True)
        for name in ("config.json", "metrics.csv", "summary.json"):
            (folder / name).write_text(name)
    copied = copy_reference_runs(configs, out, ref)
    assert sorted(copied) == sorted(c.run_id() for c in configs if c.defense != "foolsgold" and not c.local_epochs > 1)
    assert not WeightShares().needs_computing(configs[1], out)  # copied without a record: read back as it is
    assert (run_dir(out, copied[0]) / "metrics.csv").read_text() == "metrics.csv"
    assert copy_reference_runs(configs, out, ref) == []


def test_figures_draw_one_column_per_run() -> None:
    import matplotlib
    matplotlib.use("Agg")
    from flhelpers_lab.plots.foolsgold_trap import plot_sweep_source_accuracy, plot_weight_shares

    frames = []
    for defense in ("foolsgold", "fedavg"):
        for k in (0, 2, 8):
            frames.append(pd.DataFrame({"label": f"mnist-mild {defense} k={k}", "defense": defense,
                                        "poisoned_rounds": k, "lr": 0.01, "local_epochs": 1, "round": range(10),
                                        "source_accuracy": 0.5, "attack_success_rate": 0.1,
                                        "share_attackers": 0.4, "share_honest_source_holders": 0.1,
                                        "share_honest_others": 0.5}))
    rounds = pd.concat(frames, ignore_index=True)
    fig = plot_weight_shares(rounds)
    assert len(fig.axes) == 6 and [a.get_title() for a in fig.axes[:3]] == ["mnist-mild k=0", "mnist-mild k=2", "mnist-mild k=8"]
    assert len(plot_sweep_source_accuracy(rounds).axes) == 3
    with pytest.raises(ValueError, match="no finished lfighter run"):
        plot_weight_shares(rounds, defense="lfighter")
