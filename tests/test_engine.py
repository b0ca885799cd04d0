"""End-to-end runs of the FL engine on the real MNIST (small scale)."""

import json

import numpy as np
import pandas as pd
import pytest

from flhelpers.config import benchmark_config
from flhelpers.fl.engine import build_experiment, run_experiment
from flhelpers.results import load_results

SMALL = dict(num_peers=10, train_subset=4000, test_subset=2000, rounds=8, lr=0.05)


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    clean = run_experiment(benchmark_config("mnist-iid", "quick", **SMALL), data_root=data_root,
                           results_dir=out, progress=False)
    attacked = run_experiment(benchmark_config("mnist-iid", "quick", attacker_ratio=0.4, **SMALL),
                              data_root=data_root, results_dir=out, progress=False)
    return out, clean, attacked


def test_fedavg_learns_without_attack(runs):
    _, clean, _ = runs
    final = clean.metrics.iloc[-1]
    assert final["accuracy"] > 0.85  # from 0.1 at random init, in 8 rounds of 400 samples per peer
    assert final["accuracy"] > clean.metrics["accuracy"].iloc[0] + 0.3
    assert clean.summary["source_accuracy"] > 0.65  # mean of all 8 rounds, round 0 included
    assert clean.summary["attack_success_rate"] < 0.08
    # no attackers: nobody to detect, FedAvg rejects nobody
    assert clean.summary["detection_tpr"] is None
    assert clean.summary["detection_fpr"] == 0.0


def test_label_flipping_hurts_source_class(runs):
    _, clean, attacked = runs
    s0, s1 = clean.summary, attacked.summary
    assert s1["source_accuracy"] < s0["source_accuracy"] - 0.1
    assert s1["attack_success_rate"] > s0["attack_success_rate"] + 0.1
    assert s1["detection_tpr"] == 0.0  # FedAvg accepts everyone


def test_results_store_layout(runs):
    out, clean, attacked = runs
    for r in (clean, attacked):
        assert (r.path / "config.json").is_file() and (r.path / "summary.json").is_file()
        frame = pd.read_csv(r.path / "metrics.csv")
        assert list(frame["round"]) == list(range(8))
        for key in ("test_loss", "accuracy", "source_accuracy", "attack_success_rate", "tp", "fp",
                    "class_accuracy_7", "rounds_since_eval", "non_finite_updates", "discarded_rounds"):
            assert key in frame
        timings = pd.read_csv(r.path / "timings.csv")  # wall times apart: metrics.csv is deterministic
        assert list(timings["round"]) == list(range(8)) and "train_time" not in frame
        assert r.summary["train_time_per_round"] == pytest.approx(timings["train_time"].mean())
        assert not (r.path / "checkpoint.pt").exists()  # a finished run keeps no checkpoint
        summary = json.loads((r.path / "summary.json").read_text())
        for key in ("test_loss", "accuracy", "source_accuracy", "attack_success_rate",
                    "source_accuracy_cv", "detection_tpr", "detection_fpr"):
            assert key in summary
        for key in ("accuracy", "source_accuracy", "attack_success_rate"):
            assert 0.0 <= summary[key] <= 1.0
    record = json.loads((attacked.path / "config.json").read_text())
    assert len(record["attackers"]) == 4
    assert record["config"]["seed"] == 0 and "torch" in record["versions"]
    table = load_results(out)
    assert len(table) == 2 and set(table["attacker_ratio"]) == {0.0, 0.4}
    per_round = load_results(out, per_round=True)
    assert len(per_round) == 16


def test_identical_config_is_reused_not_recomputed(runs, data_root):
    out, clean, _ = runs
    again = run_experiment(clean.config, data_root=data_root, results_dir=out, progress=False)
    assert again.reused and again.run_id == clean.run_id
    assert again.summary == clean.summary


def test_summary_averages_last_ten_evaluated_rounds(runs):
    _, clean, _ = runs
    m = clean.metrics
    assert clean.summary["accuracy"] == pytest.approx(m["accuracy"].tail(10).mean())
    src = m["source_accuracy"].to_numpy()
    assert clean.summary["source_accuracy_cv"] == pytest.approx(src.std() / src.mean())


def test_attackers_hold_source_class_and_flip_all_of_it(data_root):
    cfg = benchmark_config("mnist-extreme", "quick", attacker_ratio=0.4, num_peers=50)
    exp = build_experiment(cfg, data_root=data_root)
    holders = set(exp.partition.holders_of(7).tolist())
    assert len(exp.attackers) == 2  # 40 % of the 5 class-7 holders
    assert set(exp.attackers.tolist()) <= holders
    for k in exp.attackers:
        peer = exp.peers[k]
        true = exp.dataset.train_y[peer.indices]
        assert (true == 7).all() and (peer.labels == 1).all()
    honest = next(k for k in holders if k not in set(exp.attackers.tolist()))
    assert (exp.peers[honest].labels == 7).all()


def test_same_seed_same_numbers_on_cpu(data_root, tmp_path):
    cfg = benchmark_config("mnist-iid", "quick", num_peers=4, train_subset=1000, test_subset=500,
                           rounds=2, attacker_ratio=0.25)
    a = run_experiment(cfg, data_root=data_root, results_dir=tmp_path / "a", progress=False)
    b = run_experiment(cfg, data_root=data_root, results_dir=tmp_path / "b", progress=False)
    cols = ["test_loss", "accuracy", "source_accuracy", "attack_success_rate"]
    pd.testing.assert_frame_equal(a.metrics[cols], b.metrics[cols])


def test_fraction_selects_m_peers(data_root, tmp_path):
    seen = []
    cfg = benchmark_config("mnist-iid", "quick", num_peers=10, train_subset=2000, test_subset=500,
                           rounds=2, fraction=0.5)
    run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False,
                   on_round=lambda rec: seen.append(rec.peer_ids))
    assert [len(s) for s in seen] == [5, 5]
    assert not np.array_equal(seen[0], seen[1])
