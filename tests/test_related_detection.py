"""Detection metrics of eliminated peers, and rounds in which a selection rule kept an attacker."""

import math

import numpy as np
import pandas as pd
import pytest

from flhelpers.metrics.detection import (attacked_class_recall, attacker_selected_rounds,
                                         attacker_selected_share, detection_scores, detection_table,
                                         overall_detection, per_round_detection)


def test_scores_by_hand():
    s = detection_scores(tp=3, fp=1, tn=14, fn=2)
    assert s["detection_accuracy"] == pytest.approx(17 / 20)
    assert s["detection_precision"] == pytest.approx(3 / 4)
    assert s["detection_recall"] == pytest.approx(3 / 5)
    assert s["detection_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))  # = 2PR / (P + R) = 2/3
    none = detection_scores(tp=0, fp=0, tn=10, fn=0)  # no attacker, nobody rejected
    assert none["detection_accuracy"] == 1.0
    assert all(math.isnan(none[k]) for k in ("detection_precision", "detection_recall", "detection_f1"))
    with pytest.raises(ValueError, match=">= 0"):
        detection_scores(-1, 0, 0, 0)


ROWS = pd.DataFrame({"round": [0, 1, 2, 3], "tp": [0, 2, 1, 0], "fp": [0, 1, 0, 0], "tn": [8, 7, 8, 8],
                     "fn": [2, 0, 1, 2], "rounds_since_eval": [1, 1, 1, 1],
                     "accuracy": [0.5, 0.6, 0.7, 0.8], "source_accuracy": [0.1, 0.2, 0.3, 0.4],
                     "class_accuracy_7": [0.1, 0.2, 0.3, 0.4]})


def test_per_round_and_overall():
    per = per_round_detection(ROWS)
    assert per["detection_recall"].tolist() == [0.0, 1.0, 0.5, 0.0]
    assert per["detection_precision"].iloc[1] == pytest.approx(2 / 3)
    assert math.isnan(per["detection_precision"].iloc[0])
    tot = overall_detection(ROWS)  # tp 3, fp 1, tn 31, fn 5
    assert tot["detection_recall"] == pytest.approx(3 / 8) and tot["detection_accuracy"] == pytest.approx(34 / 40)


def test_attacker_selected_rounds():
    assert attacker_selected_rounds(ROWS) == 3  # rounds 0, 2, 3 kept an attacker
    assert attacker_selected_share(ROWS) == pytest.approx(3 / 4)
    assert attacked_class_recall(ROWS, 7, last=2) == pytest.approx(0.35)
    with pytest.raises(ValueError, match="eval_every=1"):
        attacker_selected_rounds(ROWS.assign(rounds_since_eval=[1, 2, 1, 1]))
    with pytest.raises(ValueError, match="class_accuracy_3"):
        attacked_class_recall(ROWS, 3)


def test_detection_table_one_row_per_run():
    frame = pd.concat([ROWS.assign(run_id="a", defense="krum", benchmark="b", attack="ipm", attacker_ratio=0.2),
                       ROWS.assign(run_id="b", defense="fedavg", benchmark="b", attack="ipm", attacker_ratio=0.2,
                                   fn=[2, 2, 2, 2], tp=0)])
    t = detection_table(frame).set_index("run_id")
    assert t.loc["a", "attacker_selected_rounds"] == 3 and t.loc["b", "attacker_selected_rounds"] == 4
    assert t.loc["a", "rounds"] == 4 and t.loc["a", "accuracy"] == pytest.approx(0.65)


def test_krum_under_ipm_counts_rounds_it_picked_an_attacker(data_root, tmp_path):
    from flhelpers.config import benchmark_config
    from flhelpers.fl.engine import run_experiment

    picked = []

    def on_round(rec):
        chosen = rec.result.info["selected"][0]
        picked.append(bool(rec.is_attacker[chosen]))

    cfg = benchmark_config("mnist-iid", "quick", num_peers=10, train_subset=1000, test_subset=300, rounds=4,
                           lr=0.05, attack="ipm", attacker_ratio=0.3, attack_kwargs={"epsilon": 1.0, "start_round": 2},
                           defense="krum")
    res = run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False, on_round=on_round)
    m = res.metrics
    assert (m["tp"] + m["fn"] == 3).all() and (m["accepted"] == 1).all()
    assert attacker_selected_rounds(m) == sum(picked)
    assert ((m["fn"] > 0).to_numpy() == np.array(picked)).all()
