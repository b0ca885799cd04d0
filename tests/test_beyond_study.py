"""The Beyond study (issue 20): its plans, tables and findings on hand-made summary rows, its figures."""

from __future__ import annotations

import collections

import numpy as np
import pandas as pd
import pytest

from flhelpers.config import validate_config
from flhelpers_lab.plots.beyond import plot_attack_heatmap, plot_camouflage_curve, plot_lfighter_detection
from flhelpers_lab import beyond


def test_quick_plan_runs_every_attack_with_its_rules_and_two_clean_runs():
    plan = beyond.beyond_plan("quick")
    runs = beyond.planned_runs(plan)
    keys = collections.Counter(r.key for r in runs)
    assert keys == {"flip": 3, "partial": 2, "pairs": 3, "rate": 2, "late": 2, "camouflage": 2, "backdoor": 5,
                    "clean-pairs": 1, "clean-backdoor": 1, "lam=1": 1, "mend-flip": 1, "mend-pairs": 1}
    assert len({r.config.run_id() for r in runs}) == len(runs)
    for r in runs:
        validate_config(r.config)
        assert r.config.benchmark == "mnist-mild" and r.config.profile == "quick"
    clean = [r.config for r in runs if r.key.startswith("clean")]
    assert all(c.attacker_ratio == 0 and c.defense == "fedavg" for c in clean)
    late = next(r.config for r in runs if r.key == "late")
    assert late.attack_kwargs == {"start_round": 5}  # R0 = 15 // 3
    mended = [r.config for r in runs if r.key.startswith("mend-")]
    assert all(c.defense == "lfighter" and c.defense_kwargs == {"passes": 2} for c in mended)
    assert {r.config.defense for r in runs if r.key == "backdoor"} == {"fedavg", "median", "multi-krum", "flame",
                                                                       "lfighter"}


def test_medium_plan_has_every_rule_both_ratios_and_model_replacement():
    plan = beyond.beyond_plan("medium")
    runs = beyond.planned_runs(plan)
    assert plan.ratios == (0.3, 0.4) and set(plan.flip_defenses) == set(beyond.ALL_DEFENSES)
    keys = collections.Counter(r.key for r in runs)
    assert keys["boost"] == 14 and keys["pairs-each"] == 14 and keys["lam=0.25"] == 1 and len(runs) == 133
    with pytest.raises(ValueError, match="Unknown profile"):
        beyond.beyond_plan("fast")


def test_select_runs_keeps_the_ratio_key_and_rule_asked_for_and_the_clean_runs():
    runs = beyond.planned_runs(beyond.beyond_plan("medium"))
    at40 = beyond.select_runs(runs, ratios=[0.4])
    # 68 at 40 %, the 2 clean runs with them; 63 at 30 % left out
    assert len(at40) == 70 and {r.config.attacker_ratio for r in at40} == {0.0, 0.4}
    assert [r for r in runs if r in at40] == at40  # plan order kept
    backdoor_median = beyond.select_runs(runs, ratios=[0.3], keys=["backdoor"], defenses=["median"])
    assert [(r.key, r.config.defense, r.config.attacker_ratio) for r in backdoor_median] == [("backdoor", "median", 0.3)]
    assert beyond.select_runs(runs) == runs
    with pytest.raises(ValueError, match=r"Unknown attack key\(s\) \['flop'\]; valid: .*'flip'"):
        beyond.select_runs(runs, keys=["flop"])


def _rows() -> pd.DataFrame:
    """Hand-made summary rows: the clean runs, then FedAvg and LFighter under the flip, two pairs,
    camouflage, and a backdoor."""
    rows = [
        dict(key="clean-pairs", defense="fedavg", attacker_ratio=0.0, source_accuracy=0.95, attack_success_rate=0.01,
             source_accuracy_7_1=0.95, attack_success_rate_7_1=0.01, source_accuracy_3_8=0.9,
             attack_success_rate_3_8=0.02, detection_tpr=None, detection_fpr=0.0, accuracy=0.96),
        dict(key="clean-backdoor", defense="fedavg", attacker_ratio=0.0, source_accuracy=0.95,
             attack_success_rate=0.01, backdoor_attack_success_rate=0.02, detection_tpr=None, detection_fpr=0.0,
             accuracy=0.96),
        dict(key="flip", defense="fedavg", attacker_ratio=0.4, source_accuracy=0.5, attack_success_rate=0.45,
             detection_tpr=0.0, detection_fpr=0.0),
        dict(key="flip", defense="lfighter", attacker_ratio=0.4, source_accuracy=0.9, attack_success_rate=0.02,
             detection_tpr=0.9, detection_fpr=0.05),
        dict(key="pairs", defense="lfighter", attacker_ratio=0.4, source_accuracy=0.92, attack_success_rate=0.02,
             source_accuracy_7_1=0.92, attack_success_rate_7_1=0.02, source_accuracy_3_8=0.4,
             attack_success_rate_3_8=0.5, detection_tpr=0.3, detection_fpr=0.2, run_id="abc"),
        dict(key="camouflage", defense="lfighter", attacker_ratio=0.4, source_accuracy=0.7, attack_success_rate=0.25,
             detection_tpr=0.4, detection_fpr=0.1),
        dict(key="lam=1", defense="lfighter", attacker_ratio=0.4, source_accuracy=0.85, attack_success_rate=0.1,
             detection_tpr=0.1, detection_fpr=0.1),
        dict(key="backdoor", defense="fedavg", attacker_ratio=0.4, backdoor_attack_success_rate=0.99,
             source_accuracy=0.95, attack_success_rate=0.0, detection_tpr=0.0, detection_fpr=0.0),
        dict(key="backdoor", defense="lfighter", attacker_ratio=0.4, backdoor_attack_success_rate=0.05,
             source_accuracy=0.95, attack_success_rate=0.0, detection_tpr=1.0, detection_fpr=0.0),
    ]
    return pd.DataFrame(rows)


def _plan() -> beyond.BeyondPlan:
    return beyond.beyond_plan("quick")


def test_attack_tables_set_each_metric_beside_its_clean_value():
    rows, plan = _rows(), _plan()
    src = beyond.attack_table(rows, plan, "src", 0.4)
    assert list(src.index) == ["fedavg", "lfighter"] and list(src.columns)[:2] == ["no attack", "flip (paper)"]
    assert src.loc["lfighter", "no attack"] == pytest.approx(95.0)
    assert src.loc["fedavg", "flip (paper)"] == pytest.approx(50.0)
    assert src.loc["lfighter", "two pairs (split): 3->8"] == pytest.approx(40.0)
    assert np.isnan(src.loc["fedavg", "two pairs (split): 3->8"])  # not run
    asr = beyond.attack_table(rows, plan, "asr", 0.4)
    assert asr.loc["lfighter", "two pairs (split): 3->8"] == pytest.approx(50.0)
    door = beyond.attack_table(rows, plan, "backdoor", 0.4)
    assert door.loc["fedavg", "no attack"] == pytest.approx(2.0)
    assert door.loc["fedavg", "backdoor (BadNets, 4x4, f = 0.5)"] == pytest.approx(99.0)


def test_attack_tables_keep_both_spreads_of_two_pairs_apart():
    """The medium plan runs two pairs split among the attackers and carried by each: two columns
    per pair, never one overwriting the other."""
    rows = pd.concat([_rows(), pd.DataFrame([
        dict(key="pairs-each", defense="lfighter", attacker_ratio=0.4, source_accuracy_7_1=0.91,
             attack_success_rate_7_1=0.01, source_accuracy_3_8=0.88, attack_success_rate_3_8=0.02)])],
        ignore_index=True)
    src = beyond.attack_table(rows, beyond.beyond_plan("medium"), "src", 0.4)
    assert src.loc["lfighter", "two pairs (split): 3->8"] == pytest.approx(40.0)
    assert src.loc["lfighter", "two pairs (each): 3->8"] == pytest.approx(88.0)
    assert src.columns.is_unique


def test_verdicts_hold_within_ten_points_and_two_pairs_take_the_worse_pair():
    assert beyond.holds(0.86, 0.95, True) and not beyond.holds(0.84, 0.95, True)
    assert beyond.holds(0.11, 0.02, False) and not beyond.holds(0.13, 0.02, False)
    v = _rows().pipe(beyond.verdicts, _plan(), 0.4).set_index(["attack", "defense"])
    assert not v.loc[("flip", "fedavg"), "holds"] and v.loc[("flip", "lfighter"), "holds"]
    assert v.loc[("pairs", "lfighter"), "metric"] == "source_accuracy_3_8"
    assert not v.loc[("pairs", "lfighter"), "holds"]
    assert v.loc[("backdoor", "lfighter"), "holds"] and not v.loc[("backdoor", "fedavg"), "holds"]
    closing = beyond.defense_attack_table(_rows(), _plan())
    assert closing.loc["lfighter", "two pairs 7->1, 3->8 (split)"] == pytest.approx(40.0)
    assert closing.loc["no attack (FedAvg)", "two pairs 7->1, 3->8 (split)"] == pytest.approx(90.0)


def test_camouflage_curve_takes_lam_zero_from_the_flip_run():
    curve = beyond.camouflage_curve(_rows(), _plan())
    assert list(curve.index) == [0.0, 0.5, 1.0]
    assert curve.loc[0.0, "ASR (%)"] == pytest.approx(2.0) and curve.loc[0.5, "ASR (%)"] == pytest.approx(25.0)
    assert curve.loc[1.0, "TPR (%)"] == pytest.approx(10.0)


def test_findings_name_the_rules_that_hold_and_the_neurons_procedure_1_picked(tmp_path):
    (tmp_path / "records").mkdir()
    pd.DataFrame({"round": [0, 1, 2], "neurons": ["7 1", "1 7", "3 8"]}).to_csv(tmp_path / "records" / "abc.csv",
                                                                                 index=False)
    notes = beyond.findings(_rows(), _plan(), tmp_path)
    flip = next(n for n in notes if n.startswith("**flip (paper)**"))
    assert "Holds (within 10 points of no attack): lfighter; breaks: fedavg." in flip
    pairs = next(n for n in notes if n.startswith("**two pairs"))
    assert "1 & 7 in 2 rounds, 3 & 8 in 1 rounds (of 3)" in pairs and "breaks: lfighter" in pairs
    assert "LFighter rejected 30% of the attackers' updates" in pairs
    assert beyond.write_findings(notes, tmp_path).read_text().count("**") == 2 * len(notes)


def _swinging_run(tmp_path, run_id="swing"):
    """Rounds 0-9 of a rule over 4 attackers and 6 honest peers, by hand: rounds 0-4 reject no one;
    from round 5 it alternates catching all 4 attackers (rounds 5, 7, 9, 11) and keeping them while
    rejecting 3 of the 6 honest peers (6, 8, 10); Src-Acc 0.9 after a catch, 0.1 after a let-in."""
    caught = dict(tp=4, fn=0, fp=0, tn=6, accepted=6, source_accuracy=0.9)
    let_in = dict(tp=0, fn=4, fp=3, tn=3, accepted=7, source_accuracy=0.1)
    idle = dict(tp=0, fn=4, fp=0, tn=6, accepted=10, source_accuracy=0.5)
    rounds = [idle] * 5 + [caught, let_in] * 3 + [caught]
    folder = tmp_path / "runs" / run_id
    folder.mkdir(parents=True)
    pd.DataFrame([{"round": i, **r} for i, r in enumerate(rounds)]).to_csv(folder / "metrics.csv", index=False)
    return run_id


def test_swings_sort_the_rounds_into_caught_and_let_in(tmp_path):
    run = _swinging_run(tmp_path)
    s = beyond.swings(tmp_path, run)
    assert s["rounds"] == 7 and s["caught"] == 4 and s["let_in"] == 3 and s["let_in_after_caught"] == 3
    assert s["src_caught"] == pytest.approx(0.9) and s["src_let_in"] == pytest.approx(0.1)
    assert s["fpr_let_in"] == pytest.approx(0.5) and s["admitted_let_in"] == pytest.approx(7.0)
    whole = beyond.swings(tmp_path, run, start=0)  # rounds 0-4 keep every attacker: let-in rounds too
    assert whole["let_in"] == 8 and whole["let_in_after_caught"] == 3 and whole["fpr_let_in"] == pytest.approx(1.5 / 8)
    assert beyond.swings(tmp_path, "missing") is None


def test_findings_say_when_a_breaking_rule_swings(tmp_path):
    rows = _rows()
    run = _swinging_run(tmp_path)
    rows.loc[(rows["key"] == "flip") & (rows["defense"] == "fedavg"), "run_id"] = run
    flip = next(n for n in beyond.findings(rows, _plan(), tmp_path) if n.startswith("**flip (paper)**"))
    assert ("fedavg swings from round 5 on: in 4 of 7 rounds it rejected at least 90% of the attackers "
            "(Src-Acc 90.0 % after them), in 3 it kept at least 90% of them and rejected 50% of the honest "
            "peers (Src-Acc 10.0 %), 3 of those right after a round that caught them") in flip
    # two let-in rounds are too few to call a swing
    short = _swinging_run(tmp_path, "short")
    pd.read_csv(tmp_path / "runs" / short / "metrics.csv").iloc[:9].to_csv(tmp_path / "runs" / short / "metrics.csv",
                                                                          index=False)
    rows.loc[(rows["key"] == "flip") & (rows["defense"] == "fedavg"), "run_id"] = short
    assert "swings" not in next(n for n in beyond.findings(rows, _plan(), tmp_path) if n.startswith("**flip"))
    # a rule that holds gets no such sentence, and neither does one without the counts
    assert "lfighter swings" not in flip


def test_swing_table_lists_only_the_runs_that_swing(tmp_path):
    rows = _rows()
    rows.loc[(rows["key"] == "flip") & (rows["defense"] == "fedavg"), "run_id"] = _swinging_run(tmp_path)
    steady = tmp_path / "runs" / "steady"
    steady.mkdir(parents=True)
    pd.DataFrame([{"round": r, "tp": 4, "fn": 0, "fp": 0, "tn": 6, "accepted": 6, "source_accuracy": 0.9}
                  for r in range(12)]).to_csv(steady / "metrics.csv", index=False)
    rows.loc[(rows["key"] == "flip") & (rows["defense"] == "lfighter"), "run_id"] = "steady"
    table = beyond.swing_table(rows, _plan(), tmp_path, 0.4)
    assert list(table.index) == [("flip (paper)", "fedavg")]
    row = table.iloc[0]
    assert (row["caught"], row["let in"], row["let in right after caught"], row["from round"]) == (4, 3, 3, 5)
    assert row["Src-Acc caught (%)"] == pytest.approx(90.0) and row["honest rejected when let in (%)"] == pytest.approx(50.0)
    assert beyond.swing_table(rows, _plan(), tmp_path, 0.3).empty


def test_mend_table_sets_the_mended_rule_beside_the_papers():
    rows = pd.concat([_rows(), pd.DataFrame([
        dict(key="mend-pairs", defense="lfighter", attacker_ratio=0.4, source_accuracy_7_1=0.93,
             attack_success_rate_7_1=0.01, source_accuracy_3_8=0.85, attack_success_rate_3_8=0.03, detection_tpr=0.8,
             detection_fpr=0.15, aggregation_time_per_round=0.004)])], ignore_index=True)
    table = beyond.mend_table(rows, _plan())
    pairs = table.loc["two pairs 7->1, 3->8 (split)"]
    assert pairs.loc["LFighter (paper)", "Src-Acc 3->8 (%)"] == pytest.approx(40.0)
    assert pairs.loc["LFighter, 2 passes", "Src-Acc 3->8 (%)"] == pytest.approx(85.0)
    assert pairs.loc["LFighter, 2 passes", "aggregation (ms/round)"] == pytest.approx(4.0)


def test_figures_draw_from_the_tables():
    rows, plan = _rows(), _plan()
    for kind in ("src", "asr", "backdoor"):
        table = beyond.attack_table(rows, plan, kind, 0.4)
        fig = plot_attack_heatmap(table, kind, "toy")
        assert len(fig.axes) == 2  # the heatmap and its colour bar
        # a cell the study did not run reads "not run", not blank
        assert [t.get_text() for t in fig.axes[0].texts].count("not run") == int(table.isna().to_numpy().sum())
    src = beyond.attack_table(rows, plan, "src", 0.4)
    assert src.isna().to_numpy().any()  # the toy plan leaves cells out, so the count above is tested
    with pytest.raises(ValueError, match="kind must be one of"):
        plot_attack_heatmap(beyond.attack_table(rows, plan, "src", 0.4), "loss", "toy")
    assert len(plot_lfighter_detection(beyond.lfighter_detection(rows, plan), "toy").axes) == 1
    assert len(plot_camouflage_curve(beyond.camouflage_curve(rows, plan), "toy").axes) == 2


def _tiny_lfighter():
    from flhelpers.config import benchmark_config

    return benchmark_config("mnist-mild", "quick", defense="lfighter", attacker_ratio=0.4, num_peers=5,
                            train_subset=600, test_subset=200, rounds=2)


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_finished_lfighter_run_gets_its_record_without_its_files_being_rewritten(tmp_path, data_root):
    import json

    from flhelpers.fl.engine import run_experiment
    from flhelpers.results import METRICS_DIGEST, run_dir, sha256_text
    from flhelpers_lab.lfighter_record import read_record

    cfg = _tiny_lfighter()
    run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False)
    folder = run_dir(tmp_path, cfg.run_id())
    before = _files(folder)
    assert beyond.RECORDER.needs_computing(cfg, tmp_path)  # finished, but no record
    rows = beyond.run_beyond([beyond.PlannedRun("flip", cfg)], data_root, tmp_path, workers=1)
    assert list(rows["key"]) == ["flip"] and not rows["reused"].any()  # computed again, for its record
    assert _files(folder) == before  # the finished run is read, never rewritten
    record = read_record(beyond.record_path(tmp_path, cfg))
    assert list(record["round"]) == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records", "runs"]  # no temporary folder left
    assert not beyond.RECORDER.needs_computing(cfg, tmp_path)
    assert beyond.run_beyond([beyond.PlannedRun("flip", cfg)], data_root, tmp_path, workers=1)["reused"].all()
    # a stored metrics.csv the recomputation does not reproduce (another CPU: its digest in the summary
    # is its own) keeps no record, and stays as it was
    beyond.record_path(tmp_path, cfg).unlink()
    metrics = folder / "metrics.csv"
    changed = pd.read_csv(metrics)
    changed.loc[1, "accuracy"] += 0.01
    changed.to_csv(metrics, index=False)
    summary = json.loads((folder / "summary.json").read_text())
    summary[METRICS_DIGEST] = sha256_text(metrics.read_text())
    (folder / "summary.json").write_text(json.dumps(summary))
    edited = _files(folder)
    with pytest.warns(UserWarning, match="differs from the stored metrics.csv"):
        beyond.run_beyond([beyond.PlannedRun("flip", cfg)], data_root, tmp_path, workers=1)
    assert not beyond.record_path(tmp_path, cfg).exists() and _files(folder) == edited


def test_a_resumed_lfighter_run_keeps_the_record_of_its_first_rounds(tmp_path, data_root):
    from flhelpers.fl.engine import run_experiment
    from flhelpers_lab.lfighter_record import LFighterRecorder, read_record

    cfg = _tiny_lfighter()
    path = beyond.record_path(tmp_path, cfg)
    run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False, stop_after=1,
                   on_round=LFighterRecorder(path, cfg.source_class, cfg.target_class))
    assert list(read_record(path)["round"]) == [0]
    beyond.run_beyond([beyond.PlannedRun("flip", cfg)], data_root, tmp_path, workers=1)  # resumes at round 1
    whole = tmp_path / "whole"
    run_experiment(cfg, data_root=data_root, results_dir=whole, progress=False,
                   on_round=LFighterRecorder(beyond.record_path(whole, cfg), cfg.source_class, cfg.target_class))
    pd.testing.assert_frame_equal(read_record(path), read_record(beyond.record_path(whole, cfg)))
    assert path.read_bytes() == beyond.record_path(whole, cfg).read_bytes()  # round 1 appended once
