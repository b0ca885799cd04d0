"""Grids of runs (flhelpers.fl.grid, flhelpers_lab.paper): plans, reuse of finished runs, tables and the paper checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from flhelpers.config import ConfigError, benchmark_config

import flhelpers.fl.engine as engine
from flhelpers.defenses import PAPER_DEFENSES
from flhelpers.fl.grid import grid_rounds, run_grid
from flhelpers_lab.paper import (
    PAPER_RATIOS,
    capture_config,
    capture_ratio,
    check_findings,
    default_plan,
    plan_grid,
    paper_comparison,
    plan_table,
    stability_ratio,
    write_benchmark_tables,
)
from flhelpers_lab.table3 import cell_mean, select_cell
from flhelpers.results.tables import metric_table, to_markdown, write_table

TINY = dict(rounds=2, num_peers=5, train_subset=1000, test_subset=500)


def test_paper_plan_is_the_full_grid():
    for b in ("mnist-iid", "cifar10-mild", "imdb"):
        plan = default_plan(b, "paper")
        assert plan.defenses == tuple(PAPER_DEFENSES) and plan.ratios == PAPER_RATIOS
        # Krum-type rules need n > 2f + 2: at 50 % attackers Multi-Krum cannot run and is left out
        with pytest.warns(UserWarning, match=r"skipped multi-krum at 50%.*n > 2f \+ 2"):
            grid = plan_grid(b, "paper")
        assert len(grid) == 7 * 6 - 1
        assert ("multi-krum", 0.5) not in {(c.defense, c.attacker_ratio) for c in grid}
        assert ("multi-krum", 0.4) in {(c.defense, c.attacker_ratio) for c in grid}
    with pytest.raises(ValueError, match="Unknown profile"):
        default_plan("mnist-iid", "fast")


def test_quick_plans_contain_their_capture_run():
    """The gradient analyses' run (FedAvg at the capture ratio) is a grid member: no extra run;
    except on MNIST-iid and MNIST-Mild, whose grids attack at 40 % and captures stay at 30 % (issue 28.4)."""
    for b in ("mnist-iid", "mnist-mild", "mnist-extreme", "cifar10-iid", "cifar10-mild", "imdb"):
        ids = {c.run_id() for c in plan_grid(b, "quick")}
        assert (capture_config(b, "quick").run_id() in ids) == (b not in ("mnist-iid", "mnist-mild")), b
    assert {capture_ratio(b, "quick") for b in ("mnist-iid", "mnist-mild")} == {0.3}
    assert {c.attacker_ratio for b in ("mnist-iid", "mnist-mild") for c in plan_grid(b, "quick")} == {0.0, 0.4}


def test_make_grid_raises_on_other_invalid_settings():
    from flhelpers.config import ConfigError

    with pytest.raises(ConfigError, match="lr must be"):
        plan_grid("mnist-iid", "quick", lr=-1.0)


def test_make_grid_overrides_and_order():
    grid = plan_grid("mnist-iid", "quick", defenses=["fedavg", "lfighter"], attacker_ratios=[0.0, 0.2],
                     seeds=[0, 1], rounds=3, num_peers=None)
    assert len(grid) == 8
    assert {(c.defense, c.attacker_ratio, c.seed) for c in grid} == {
        (d, r, s) for d in ("fedavg", "lfighter") for r in (0.0, 0.2) for s in (0, 1)}
    assert all(c.rounds == 3 and c.profile == "quick" and c.num_peers == 20 for c in grid)
    with pytest.raises(ValueError, match="at least one defense"):
        plan_grid("mnist-iid", "quick", defenses=[])
    table = plan_table({"mnist-iid": grid})
    assert table.loc["mnist-iid", "runs"] == 8 and table.loc["mnist-iid", "attacker ratios"] == "0%, 20%"


@pytest.fixture(scope="module")
def tiny_grid(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    configs = plan_grid("mnist-iid", "quick", defenses=["fedavg", "median"], attacker_ratios=[0.0, 0.4], **TINY)
    first = run_grid(configs, data_root, out, progress=False)
    return out, configs, first


@pytest.mark.slow
def test_run_grid_computes_then_reuses(tiny_grid, data_root, monkeypatch):
    out, configs, first = tiny_grid
    assert len(first) == 4 and not first["reused"].any()
    assert list(first["run_id"]) == [c.run_id() for c in configs]
    for col in ("defense", "attacker_ratio", "source_accuracy", "attack_success_rate", "detection_tpr"):
        assert col in first
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(engine, "build_experiment", no_training)
    second = run_grid(configs, data_root, out, progress=False)
    assert second["reused"].all()
    pd.testing.assert_frame_equal(first.drop(columns=["reused", "wall_time"]),
                                  second.drop(columns=["reused", "wall_time"]))
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()} == mtimes


@pytest.mark.slow
def test_grid_rounds_and_tables_from_a_real_grid(tiny_grid):
    out, _, first = tiny_grid
    rounds = grid_rounds(first, out)
    assert len(rounds) == 4 * TINY["rounds"]
    assert set(rounds["defense"]) == {"fedavg", "median"} and list(rounds["round"].unique()) == [0, 1]
    tables = write_benchmark_tables(first, out, "mnist-iid")
    src = tables["source_accuracy"]
    assert list(src.index) == ["fedavg", "median"] and list(src.columns) == [0.0, 0.4]
    assert src.loc["fedavg", 0.4] == pytest.approx(
        100 * first.query("defense == 'fedavg' and attacker_ratio == 0.4")["source_accuracy"].iloc[0])
    assert (out / "tables" / "mnist-iid_source_accuracy.md").read_text().startswith("| defense | 0% | 40% |")
    with pytest.raises(ValueError, match="No runs of benchmark"):
        write_benchmark_tables(first, out, "imdb")


def test_run_grid_refuses_duplicates(tmp_path):
    cfg = plan_grid("mnist-iid", "quick", defenses=["fedavg"], attacker_ratios=[0.0], **TINY)
    with pytest.raises(ValueError, match="twice"):
        run_grid(cfg * 2, None, tmp_path, progress=False)


def _summaries(values: dict[tuple[str, str, float], tuple[float, float, float]]) -> pd.DataFrame:
    """(benchmark, defense, ratio) -> (accuracy, source_accuracy, attack_success_rate)."""
    return pd.DataFrame([{"benchmark": b, "defense": d, "attacker_ratio": r, "seed": 0, "accuracy": a,
                          "source_accuracy": s, "attack_success_rate": asr}
                         for (b, d, r), (a, s, asr) in values.items()])


def test_metric_table_means_over_seeds_in_paper_order():
    frame = pd.DataFrame({"defense": ["lfighter", "fedavg", "fedavg", "median"], "attacker_ratio": [0.3] * 4,
                          "seed": [0, 0, 1, 0], "source_accuracy": [0.9, 0.5, 0.7, 0.4]})
    table = metric_table(frame, "source_accuracy", scale=100)
    assert list(table.index) == ["fedavg", "median", "lfighter"]
    assert table.loc["fedavg", 0.3] == pytest.approx(60.0)
    with pytest.raises(ValueError, match="No column"):
        metric_table(frame, "accuracy")


def test_to_markdown_and_write_table(tmp_path):
    frame = pd.DataFrame({"a": [1.234, np.nan]}, index=pd.Index(["x", "y"], name="defense"))
    assert to_markdown(frame, 1) == "| defense | a |\n| --- | --- |\n| x | 1.2 |\n| y | n/a |\n"
    csv_path, md_path = write_table(frame, tmp_path, "t")
    assert pd.read_csv(csv_path, index_col=0).loc["x", "a"] == pytest.approx(1.234)
    assert md_path.read_text().count("\n") == 4
    with pytest.raises(ValueError, match="plain file name"):
        write_table(frame, tmp_path, "../t")


def test_paper_comparison_rows_and_values():
    s = _summaries({("mnist-mild", "fedavg", 0.0): (0.95, 0.96, 0.01),
                    ("mnist-mild", "fedavg", 0.4): (0.9, 0.70, 0.25),
                    ("mnist-mild", "lfighter", 0.4): (0.95, 0.94, 0.02)})
    table = paper_comparison(s, "mnist")
    assert list(table.index) == ["fedavg-no-attack", "fedavg", "lfighter (paper's text)"]
    assert table.loc["lfighter (paper's text)", "Src-Acc % (ours, 40%)"] == pytest.approx(94.0)
    assert table.loc["lfighter (paper's text)", "Src-Acc % (paper, 40%)"] == pytest.approx(93.68)
    assert table.loc["fedavg-no-attack", "ASR % (paper, 40%)"] == pytest.approx(0.49)
    with pytest.raises(ValueError, match="Unknown paper_key"):
        paper_comparison(s, "svhn")


def test_check_findings_yes_no_and_not_run():
    s = _summaries({("mnist-iid", "fedavg", 0.0): (0.95, 0.95, 0.0),
                    ("mnist-iid", "fedavg", 0.3): (0.90, 0.70, 0.3),      # hurt by 25 points
                    ("mnist-iid", "lfighter", 0.3): (0.95, 0.93, 0.01),   # holds
                    ("mnist-iid", "foolsgold", 0.3): (0.90, 0.85, 0.1),   # only 10 points down: no
                    ("mnist-extreme", "fedavg", 0.0): (0.9, 0.9, 0.0),
                    ("mnist-extreme", "fedavg", 0.4): (0.85, 0.88, 0.1),  # hurt by 2 points only: no
                    ("mnist-extreme", "median", 0.4): (0.11, 0.0, 0.0)})  # collapses
    f = check_findings(s).set_index(["benchmark", "finding"])["holds"]
    assert f["mnist-iid", "the attack hurts FedAvg's source class"] == "yes"
    assert f["mnist-iid", "LFighter holds the source class"] == "yes"
    assert f["mnist-iid", "FoolsGold fails on MNIST-iid"] == "no"
    assert f["mnist-extreme", "the attack hurts FedAvg's source class"] == "no"
    assert f["mnist-extreme", "LFighter holds the source class"] == "not run"
    assert f["mnist-extreme", "the median collapses on MNIST-Extreme"] == "yes"


def _stored_row(cfg, src: float, drop: tuple[str, ...] = ()) -> dict:
    """One run's row as load_results gives it: config columns (dicts as JSON), run id, a metric;
    ``drop``: fields the run's config.json lacks (written before they existed)."""
    row = {k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
           for k, v in cfg.to_dict().items() if k not in drop}
    return {**row, "run_id": cfg.run_id(), "source_accuracy": src}


def test_select_cell_averages_seeds_and_refuses_runs_that_differ_in_more():
    base = benchmark_config("mnist-mild", "medium", defense="lfighter", attacker_ratio=0.4)
    seeds = pd.DataFrame([_stored_row(base, 0.90), _stored_row(base.replace(seed=1), 0.80)])
    assert len(select_cell(seeds, "mnist-mild", "lfighter", 0.4)) == 2
    assert cell_mean(seeds, "mnist-mild", "lfighter", 0.4, "source_accuracy") == pytest.approx(0.85)
    other = base.replace(seed=1, defense_kwargs={"distribution": "extreme"})
    mixed = pd.DataFrame([_stored_row(base, 0.90), _stored_row(other, 0.10)])
    with pytest.raises(ConfigError, match=r"differ in more than the seed: defense_kwargs \('\{\}' in "
                                          rf"{base.run_id()}, .*extreme.* in {other.run_id()}\)"):
        select_cell(mixed, "mnist-mild", "lfighter", 0.4)
    for changes, field in (({"rounds": 80}, "rounds"), ({"attack_kwargs": {"flip": "all"}}, "attack_kwargs"),
                           ({"poisoned_rounds": 2}, "poisoned_rounds"), ({"drop_last": True}, "drop_last")):
        frame = pd.DataFrame([_stored_row(base, 0.9), _stored_row(base.replace(seed=2, **changes), 0.1)])
        with pytest.raises(ConfigError, match=rf"in more than the seed: {field} .*another --results-dir"):
            cell_mean(frame, "mnist-mild", "lfighter", 0.4, "source_accuracy")
    # other cells are not affected, and a run stored before drop_last and poisoned_rounds existed
    # compares equal to a new run at their legacy values (False, 0), not to one that sets them
    old = _stored_row(base.replace(seed=3), 0.7, drop=("drop_last", "poisoned_rounds"))
    assert len(select_cell(pd.DataFrame([old, _stored_row(base, 0.9)]), "mnist-mild", "lfighter", 0.4)) == 2
    with pytest.raises(ConfigError, match="drop_last"):
        select_cell(pd.DataFrame([old, _stored_row(base.replace(drop_last=True), 0.9)]), "mnist-mild", "lfighter", 0.4)
    assert select_cell(mixed, "mnist-mild", "fedavg", 0.4).empty


def test_stability_ratio_prefers_30_percent():
    assert stability_ratio(pd.DataFrame({"attacker_ratio": [0.0, 0.3, 0.4]})) == 0.3
    assert stability_ratio(pd.DataFrame({"attacker_ratio": [0.0, 0.4]})) == 0.4


@pytest.mark.slow
def test_parallel_workers_match_sequential(data_root, tmp_path):
    """Two worker processes compute the same numbers as one process (same torch thread count: 1)."""
    import torch

    configs = plan_grid("mnist-iid", "quick", defenses=["fedavg", "lfighter"], attacker_ratios=[0.4], **TINY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seq = run_grid(configs, data_root, tmp_path / "seq", progress=False)
    finally:
        torch.set_num_threads(threads)
    par_dir = tmp_path / "par"
    par = run_grid(configs, data_root, par_dir, progress=False, workers=2)
    assert not par["reused"].any() and list(par["run_id"]) == list(seq["run_id"])
    if threads // 2 <= 1:  # the workers ran single-threaded like the sequential runs
        for col in ("accuracy", "source_accuracy", "attack_success_rate", "detection_tpr"):
            assert list(par[col]) == list(seq[col])
    assert run_grid(configs, data_root, par_dir, progress=False, workers=2)["reused"].all()
    with pytest.raises(ValueError, match="workers"):
        run_grid(configs, data_root, par_dir, workers=0)


def test_pair_table_formats_and_marks_missing():
    from flhelpers.results.tables import pair_table

    a = pd.DataFrame({0.0: [89.54, np.nan], 0.3: [68.46, 88.4]}, index=["fedavg", "lfighter"])
    b = pd.DataFrame({0.0: [1.8, np.nan], 0.3: [11.26, 1.9]}, index=["fedavg", "lfighter"])
    out = pair_table(a, b)
    assert out.loc["fedavg", 0.0] == "89.5 / 1.8" and out.loc["fedavg", 0.3] == "68.5 / 11.3"
    assert out.loc["lfighter", 0.0] == "not run"
    with pytest.raises(ValueError, match="same rows"):
        pair_table(a, b.iloc[:1])


@pytest.mark.slow
def test_capture_all_parallel_matches_sequential_and_is_reused(data_root, tmp_path):
    """Gradient captures in two worker processes equal those of one process, and are stored."""
    import torch

    from flhelpers.analysis.capture import capture_all, capture_gradients

    small = {**TINY, "num_peers": 10}  # the extreme split needs a multiple of 10 peers
    configs = [capture_config(b, "quick", **small) for b in ("mnist-iid", "mnist-extreme")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seq = [capture_gradients(c, data_root, tmp_path / "seq", progress=False) for c in configs]
    finally:
        torch.set_num_threads(threads)
    par = capture_all(configs, data_root, tmp_path / "par", workers=2)
    assert [c.run_id for c in par] == [c.run_id() for c in configs]
    assert [c.reused for c in par] == [False, False]
    for a, b in zip(seq, par):
        assert len(a.pca) == 3 * small["num_peers"]  # three views, every peer, one round
        if threads // 2 <= 1:
            pd.testing.assert_frame_equal(a.pca, b.pca)
            pd.testing.assert_frame_equal(a.magnitudes, b.magnitudes)
    again = capture_all(configs, data_root, tmp_path / "par", workers=2)
    assert all(c.reused for c in again)
    pd.testing.assert_frame_equal(again[0].pca, par[0].pca, check_dtype=False)


def test_notebook_plan_leaves_out_unfinished_runs_and_empty_benchmarks(tmp_path, capsys):
    from flhelpers_lab.paper import capture_configs, notebook_plan
    from flhelpers.results import atomic_write_json, run_dir

    full = notebook_plan(["mnist-iid", "mnist-mild"], "quick", ["fedavg"], [0.0, 0.3], results_dir=tmp_path, **TINY)
    assert {b: [c.run_id() for c in cs] for b, cs in full.items()} == \
        {b: [c.run_id() for c in plan_grid(b, "quick", ["fedavg"], [0.0, 0.3], **TINY)] for b in full}
    done = full["mnist-iid"][0]
    atomic_write_json(run_dir(tmp_path, done.run_id()) / "summary.json", {})
    kept = notebook_plan(["mnist-iid", "mnist-mild"], "quick", ["fedavg"], [0.0, 0.3], results_dir=tmp_path,
                         only_finished=True, **TINY)
    assert kept == {"mnist-iid": [done]}
    assert capsys.readouterr().out.count("not finished yet, left out:") == 3
    assert len(capture_configs(["mnist-iid", "imdb"], "quick", 0, tmp_path, **TINY)) == 2
    assert capture_configs(["mnist-iid", "imdb"], "quick", 0, tmp_path, only_finished=True, **TINY) == []
