"""`python -m flhelpers grid` and `--set`: any config field from the shell, checked before training."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from flhelpers.cli import build_parser, grid_configs, main, parse_settings, run_config
from flhelpers.fl.engine import run_experiment
from flhelpers.fl.grid import make_grid
from flhelpers.results import load_results, run_dir

TINY = ["--rounds", "2", "--set", "num_peers=5", "--set", "train_subset=600", "--set", "test_subset=200"]


def _grid_args(*extra: str):
    return build_parser().parse_args(["grid", "--benchmarks", "mnist-iid", "mnist-mild", "--defenses", "fedavg",
                                      "lfighter", "--ratios", "0", "0.4", "--seeds", "0", "1", *extra])


def test_set_reaches_every_field_and_is_validated():
    args = _grid_args("--set", "lr=0.01", "--set", "batch_size=32", "--set", "source_class=3",
                      "--set", "target_class=8", "--set", "dirichlet_alpha=0.5", "--set", "train_subset=null",
                      "--rounds", "3")
    configs = grid_configs(args)
    assert len(configs) == 2 * 2 * 2 * 2
    assert {(c.benchmark, c.defense, c.attacker_ratio, c.seed) for c in configs} == {
        (b, d, r, s) for b in ("mnist-iid", "mnist-mild") for d in ("fedavg", "lfighter") for r in (0.0, 0.4)
        for s in (0, 1)}
    for c in configs:
        assert (c.lr, c.batch_size, c.source_class, c.target_class, c.rounds) == (0.01, 32, 3, 8, 3)
        assert c.dirichlet_alpha == 0.5 and c.train_subset is None  # null clears the profile's subset
        assert isinstance(c.lr, float) and c.profile == "quick"
    # an integer for a float field is the same run as the float
    assert parse_settings(["lr=1"]) == {"lr": 1.0} and isinstance(parse_settings(["lr=1"])["lr"], float)
    assert parse_settings(["dataset_kwargs={\"a\": [1, 2]}", "optimizer=adam"]) == {
        "dataset_kwargs": {"a": [1, 2]}, "optimizer": "adam"}
    args = build_parser().parse_args(["run", "--benchmark", "imdb", "--set", "lr=0.0005", "--set", "local-epochs=2",
                                      "--defense", "median", "--attacker-ratio", "0.2"])
    cfg = run_config(args)
    assert (cfg.lr, cfg.local_epochs, cfg.defense, cfg.attacker_ratio, cfg.seed) == (0.0005, 2, "median", 0.2, 0)


@pytest.mark.parametrize("argv, message", [
    (["run", "--benchmark", "mnist-iid", "--set", "learning_rate=0.1"], "Did you mean 'lr'?"),
    (["run", "--benchmark", "mnist-iid", "--set", "batchsize=32"], "Did you mean 'batch_size'?"),
    (["grid", "--benchmarks", "mnist-iid", "--set", "dirichlet_alfa=0.5"], "Did you mean 'dirichlet_alpha'?"),
    (["grid", "--benchmarks", "mnist-iid", "--set", "lr"], "--set expects FIELD=VALUE"),
    (["grid", "--benchmarks", "mnist-iid", "--set", "lr=-0.1"], "lr must be a positive finite number"),
    (["grid", "--benchmarks", "mnist-iid", "--set", "batch_size=3.5"], "batch_size must be a positive integer"),
    (["grid", "--benchmarks", "mnist-iid", "--set", "source_class=1"], "source_class and target_class are both 1"),
    (["grid", "--benchmarks", "mnist-iid", "--set", "defense=median"], "choose defense with --defenses"),
    (["grid", "--benchmarks", "mnist-iid", "--set", "profile=paper"], "choose profile with --profile"),
    (["grid", "--benchmarks", "mnist-iid", "--rounds", "2", "--set", "rounds=3"], "rounds is given twice"),
    (["grid", "--benchmarks", "mnist-iid", "--defenses", "lfihgter"], "Did you mean 'lfighter'?"),
    (["grid", "--benchmarks", "mnist-iid", "--gpus-per-run", "1"], "applies only with --executor ray"),
    (["grid", "--benchmarks", "mnist-iid", "--executor", "ray", "--workers", "2"], "--workers is for the local"),
])
def test_bad_input_is_answered_before_any_training(argv, message, tmp_path, capsys):
    assert main([*argv, "--results-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_ray_executor_without_ray_names_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    assert main(["grid", "--benchmarks", "mnist-iid", "--executor", "ray", "--results-dir", str(tmp_path)]) == 2
    assert 'pip install -e ".[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_grid_command_runs_resumes_skips_and_writes_the_summary(data_root, tmp_path, capsys):
    cmd = [sys.executable, "-m", "flhelpers", "grid", "--benchmarks", "mnist-iid", "--defenses", "fedavg",
           "lfighter", "--ratios", "0.4", *TINY, "--results-dir", str(tmp_path / "res"), "--data-root",
           str(data_root), "--threads", "1"]
    configs = make_grid("mnist-iid", "quick", defenses=["fedavg", "lfighter"], attacker_ratios=[0.4], rounds=2,
                        num_peers=5, train_subset=600, test_subset=200)
    # an interrupted run (checkpoint after round 1) that the grid must resume, not restart
    import torch

    torch.set_num_threads(1)
    partial = run_experiment(configs[1], data_root, tmp_path / "res", progress=False, stop_after=1)
    assert partial.extra["unfinished"]
    whole = run_experiment(configs[1], data_root, tmp_path / "whole", progress=False)

    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "grid: 2 runs, 0 finished already, 2 to compute" in out.stderr
    assert "grid: 2/2 runs done (0 reused), 0 to do, ETA 0:00:00" in out.stderr
    assert "2 runs (2 computed, 0 reused)" in out.stdout
    csv = tmp_path / "res" / "tables" / "grid_summary.csv"
    assert f"summary: {csv}" in out.stdout
    table = pd.read_csv(csv)
    stored = load_results(tmp_path / "res")
    assert list(table["run_id"]) == [c.run_id() for c in configs]
    assert set(table.columns) == set(stored.columns)  # the frame of load_results
    for column in ("accuracy", "source_accuracy", "attack_success_rate"):
        assert f"{table[column].iloc[0]:.4f}" in out.stdout
    resumed = run_dir(tmp_path / "res", configs[1].run_id())
    assert (resumed / "metrics.csv").read_bytes() == (whole.path / "metrics.csv").read_bytes()
    # resumed, not restarted: round 0's wall times are those the interrupted attempt measured
    first = pd.read_csv(resumed / "timings.csv").iloc[0]
    assert first["train_time"] == partial.timings.iloc[0]["train_time"]

    assert main(cmd[3:]) == 0  # again, in this process: every run is read back
    assert "2 runs (0 computed, 2 reused)" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(csv), table)


def test_lab_commands_on_the_library_cli_name_the_lab(capsys):
    from flhelpers.cli import main

    assert main(["reproduce", "--profile", "quick"]) == 2
    err = capsys.readouterr().err
    assert "python -m flhelpers_lab reproduce --profile quick" in err


def test_grid_defaults_to_the_papers_defenses_and_ratios():
    from flhelpers.defenses import PAPER_DEFENSES
    from flhelpers.presets import PAPER_RATIOS

    configs = make_grid("mnist-iid", "quick", rounds=1)
    assert {c.defense for c in configs} == set(PAPER_DEFENSES)
    assert {c.attacker_ratio for c in configs} == set(PAPER_RATIOS)
    clean = make_grid("mnist-iid", "quick", clean_defenses=["fedavg"], rounds=1)
    assert {c.defense for c in clean if c.attacker_ratio == 0} == {"fedavg"}
