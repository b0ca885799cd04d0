"""The Related notebook's grids, tables and figures (no training: hand-made tables)."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from flhelpers.config import validate_config  # noqa: E402
from flhelpers_lab import related as study  # noqa: E402
from flhelpers_lab.plots.related import (plot_elimination_detection, plot_elimination_effect, plot_ffl,  # noqa: E402
                                     plot_krum_ipm)


def test_quick_grids_have_the_asked_attacker_counts():
    ffl = study.ffl_grid("quick")
    for cfg in ffl:
        validate_config(cfg)
    assert len({c.run_id() for c in ffl}) == len(ffl)
    counts = {(c.defense, c.attack, study.attacker_count(c)) for c in ffl}
    assert ("ffl", "gaussian-noise", 0) in counts and ("ffl", "label_flip", 0) not in counts  # shared clean run
    assert {n for _, _, n in counts} == {0, 3, 6}
    assert all(c.defense_kwargs == {"warmup": 3} for c in ffl if c.defense == "ffl")
    assert {c.defense for c in ffl} == set(study.FFL_QUICK_RULES) and "trimmed-mean" not in study.FFL_QUICK_RULES
    assert {c.defense for c in study.ffl_grid("paper")} == set(study.FFL_RULES)
    assert {c.defense for c in study.ffl_grid("quick", rules=("ffl",))} == {"ffl"}
    krum = study.krum_ipm_grid("quick")
    assert [study.attacker_count(c) for c in krum] == [0, 1, 3, 5, 7, 11]
    assert all(c.num_peers == 25 and c.fraction == 1.0 and c.attack_kwargs == {"epsilon": 1.0, "start_round": 10}
               for c in krum)
    # the attack starts at round 10 and leaves 10 attacked rounds, a quarter of which are averaged
    assert krum[0].rounds == 20 and study.last_rounds(krum[0].rounds) == 5
    paper = study.krum_ipm_grid("paper")
    assert [study.attacker_count(c) for c in paper] == list(range(12)) and paper[0].rounds == 50
    ue = study.elimination_grid("quick")
    for cfg in ue:
        validate_config(cfg)
    assert len({c.run_id() for c in ue}) == len(ue)
    runs = [(c.defense_kwargs.get("epsilon"), c.defense_kwargs.get("separation_test", True), c.attacker_ratio)
            for c in ue if c.defense == "user-elimination"]
    assert sorted(r for e, t, r in runs if e == 1000.0 and t) == [0.0, 0.1, 0.2, 0.3, 0.4]  # our rule
    assert sorted(r for e, t, r in runs if e == 1000.0 and not t) == [0.0, 0.1, 0.2, 0.3, 0.4]  # the original's
    assert [r for e, t, r in runs if e == 10.0] == [0.4]
    assert sorted(c.attacker_ratio for c in ue if c.defense == "fedavg") == [0.1, 0.2, 0.3, 0.4]
    assert all(c.defense_kwargs.get("alpha") == 0.01 for c in study.elimination_grid("quick", alpha=0.01)
               if c.defense == "user-elimination" and c.defense_kwargs.get("separation_test", True))
    assert not any(c.defense_kwargs.get("separation_test") is False
                   for c in study.elimination_grid("quick", original=False))
    assert study.last_rounds(10) == 2 and study.last_rounds(200) == 10
    # None overrides keep the grid's quick values; others replace them; seeds multiply
    assert study.ffl_grid("quick", rounds=None)[0].rounds == 10 and study.ffl_grid("quick", rounds=4)[0].rounds == 4
    seeded = study.with_seeds(krum, [0, 1])
    assert len(seeded) == 2 * len(krum) and {c.seed for c in seeded} == {0, 1}


def _ffl_curves():
    rows = []
    for d in study.FFL_RULES:
        for attack in ("gaussian-noise", "label_flip"):
            for n in (3, 6):
                rows.append(dict(defense=d, attack=attack, attackers=n, accuracy=0.5, source_accuracy=0.4))
        rows.append(dict(defense=d, attack="none", attackers=0, accuracy=0.9, source_accuracy=0.9))
    return study.ffl_curves(pd.DataFrame(rows))


def test_ffl_curves_repeat_the_clean_run_and_plot():
    curves = _ffl_curves()
    assert len(curves) == 4 * 2 * 3
    assert (curves[curves.attackers == 0].attack.value_counts() == 4).all()
    fig = plot_ffl(curves, "test")
    assert [len(ax.lines) for ax in fig.axes] == [4, 4]
    assert fig.axes[0].lines[0].get_ydata().tolist() == [90.0, 50.0, 50.0]


def test_elimination_and_krum_plots():
    table = pd.DataFrame([
        dict(defense=d, label=l, attacker_ratio=r, detection_accuracy=0.9, detection_f1=np.nan if d == "fedavg" else 0.8,
             accuracy=0.85, source_recall=0.7)
        for d, l in (("fedavg", "fedavg"), ("user-elimination", "user elimination (eps=1000)"))
        for r in (0.0, 0.1, 0.2)])
    fig = plot_elimination_detection(table, "t")
    assert [len(ax.lines) for ax in fig.axes] == [1, 1]  # only the defense, only attacked ratios
    assert fig.axes[1].lines[0].get_xdata().tolist() == [10.0, 20.0]
    fig = plot_elimination_effect(table, "t")
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]
    # a rule keeps its colour and marker whichever other lines a figure holds
    three = pd.concat([table, table[table.defense == "user-elimination"].assign(label="user elimination (eps=10)"),
                       table[table.defense == "user-elimination"].assign(
                           label="user elimination, original rule (eps=1000)")])
    styles = []
    for plot in (plot_elimination_detection, plot_elimination_effect):
        lines = {ln.get_label(): ln for ln in plot(three, "t").axes[0].lines}
        styles.append({k: (ln.get_color(), ln.get_marker(), ln.get_fillstyle()) for k, ln in lines.items()
                       if k.startswith("user elimination")})
    assert styles[0] == styles[1] and len(styles[0]) == 3
    assert styles[0]["user elimination (eps=1000)"][2] == "full" and styles[0]["user elimination (eps=10)"][2] == "none"
    krum = pd.DataFrame(dict(attackers=[0, 5], accuracy=[0.85, 0.3], final_accuracy=[0.9, 0.1],
                             selected_while_attacking=[0, 4], attacking_rounds=[0, 5], averaged_rounds=[5, 5]))
    fig = plot_krum_ipm(krum, "t")
    assert [p.get_height() for p in fig.axes[1].patches] == [0.0, 80.0]
    # the mean of the last rounds is plotted, not the last round alone
    assert fig.axes[0].lines[0].get_ydata().tolist() == [85.0, 30.0]
    assert "last 5 rounds" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="needs the column"):
        plot_krum_ipm(krum.drop(columns="attacking_rounds"), "t")


def test_run_table_counts_selected_attackers_before_and_during_the_attack(tmp_path):
    """A hand-made Krum/IPM run of 6 rounds, attack from round 3, one attacker of 25: Krum
    selected the attacker in rounds 1 (still honest) and 4 (poisoned). The table says 3 attacked
    rounds, 1 selected while attacking, 1 before, 2 in all, and averages the last rounds."""
    from flhelpers.results import run_dir

    cfg = study.krum_ipm_grid("quick", counts=(1,), start_round=3, rounds=6)[0]
    assert study.attacker_count(cfg) == 1
    path = run_dir(tmp_path, cfg.run_id())
    path.mkdir(parents=True)
    fn = [0, 1, 0, 0, 1, 0]
    acc = [0.2, 0.5, 0.6, 0.7, 0.1, 0.8]
    metrics = pd.DataFrame({"round": range(6), "accuracy": acc, "source_accuracy": acc,
                            f"class_accuracy_{cfg.source_class}": acc, "attack_success_rate": [0.0] * 6,
                            "tp": [1 - f for f in fn], "fp": [1] * 6, "tn": [23] * 6, "fn": fn,
                            "rounds_since_eval": [1] * 6})
    metrics.to_csv(path / "metrics.csv", index=False)
    (path / "summary.json").write_text(json.dumps({"train_time_per_round": 1.0}))
    row = study.run_table([cfg], tmp_path).iloc[0]
    assert (row.attacking_rounds, row.selected_while_attacking, row.selected_before_attack,
            row.attacker_selected_rounds) == (3, 1, 1, 2)
    assert row.averaged_rounds == 1 and row.accuracy == 0.8  # 6 rounds // 4 = 1
    row = study.run_table([cfg], tmp_path, last=3).iloc[0]
    assert row.averaged_rounds == 3 and row.accuracy == pytest.approx((0.7 + 0.1 + 0.8) / 3)
    assert row.final_accuracy == 0.8
    per_round = study.round_table(cfg, tmp_path)
    assert per_round.fn.tolist() == fn and per_round.source_recall.tolist() == acc


def test_notebook_matches_its_paired_script():
    import jupytext

    root = Path(__file__).resolve().parents[1]
    script = jupytext.read(root / "notebooks" / "Related.py")
    built = [c.source for c in script.cells]
    on_disk = [("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
               for c in json.loads((root / "notebooks" / "Related.ipynb").read_text())["cells"]]
    assert built == on_disk, "notebooks/Related.ipynb is stale: run jupytext --sync notebooks/Related.py"
    params = [c for c in script.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and 'profile = "quick"' in params[0].source
    for name in ("profile", "benchmarks", "defenses", "attacker_ratios", "seeds", "device", "data_root",
                 "results_dir", "rounds", "peers"):  # the parameters every notebook of the lab takes
        assert f"\n{name} = " in f"\n{params[0].source}", name
    code = "\n".join(c.source for c in script.cells if c.cell_type == "code")
    assert "def " not in code and "class " not in code  # thin: logic lives in flhelpers_lab.related


@pytest.mark.slow
def test_traces_agree_with_the_runs_detection_counts(data_root, tmp_path):
    """The round-by-round traces re-run a configuration; their counts must match the engine's
    per-round detection counts of the same configuration (tiny real MNIST runs)."""
    from flhelpers.config import benchmark_config
    from flhelpers.fl.engine import run_experiment

    tiny = dict(num_peers=8, rounds=3, train_subset=800, test_subset=200, lr=0.05, batch_size=16)
    ue = benchmark_config("mnist-iid", "quick", defense="user-elimination", attacker_ratio=0.25,
                          defense_kwargs={"epsilon": 1000.0, "separation_test": False}, **tiny)
    trace = study.elimination_trace(ue, data_root)
    metrics = run_experiment(ue, data_root=data_root, results_dir=tmp_path, progress=False).metrics
    assert trace["round"].tolist() == [0, 1, 2]
    assert trace.attackers_eliminated.tolist() == metrics.tp.tolist()
    assert trace.honest_eliminated.tolist() == metrics.fp.tolist()
    assert (trace.attackers_eliminated + trace.honest_eliminated).sum() > 0  # the original rule drops without a test
    assert (trace.threshold == 0).all() and (trace.honest_loss_max >= trace.honest_loss_mean).all()

    ffl = benchmark_config("mnist-iid", "quick", defense="ffl", defense_kwargs={"warmup": 1}, attack="gaussian-noise",
                           attack_kwargs={"sigma": 1.0}, attacker_ratio=0.25, **tiny)
    trace = study.ffl_trace(ffl, data_root)
    assert trace["mode"].tolist() == ["median", "reputation", "reputation"]
    assert trace.selected.tolist()[0] == 8 and (trace.selected >= 6).all()  # at most a quarter left out
    assert trace.weight_attacker_rows.isna().tolist() == [True, False, False]
    shares = trace.weight_attacker_rows + trace.weight_rows_mixed_with_attacker
    assert ((shares[1:] >= 0) & (shares[1:] <= 1 + 1e-9)).all()
    with pytest.raises(ValueError, match="FFL run"):
        study.ffl_trace(ue, data_root)
