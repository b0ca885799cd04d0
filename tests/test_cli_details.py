"""What the command line prints and refuses, and the files it leaves for others on a shared store."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from flhelpers.cli import main
from flhelpers.config import ConfigError, benchmark_config, validate_config
from flhelpers.results import atomic_write_text

TINY = ["--rounds", "1", "--set", "num_peers=5", "--set", "train_subset=600", "--set", "test_subset=200"]


@pytest.mark.slow
def test_run_summary_says_it_is_a_last_10_round_mean(tmp_path: Path, data_root: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    rc = main(["run", "--benchmark", "mnist-iid", *TINY, "--data-root", str(data_root),
               "--results-dir", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "means of the last 10 evaluated rounds" in out
    assert out.index("means of the last 10") < out.index("source_accuracy")


def test_grid_help_and_run_help_name_the_attack_as_list_does(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "label-flip" in text and "label_flip" not in text


@pytest.mark.parametrize("benchmark", ["mnist-iid", "mnist-extreme", "mnist-mild"])
def test_negative_dirichlet_alpha_is_refused_on_every_split(benchmark: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    rc = main(["run", "--benchmark", benchmark, *TINY, "--set", "dirichlet_alpha=-1",
               "--results-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "dirichlet_alpha must be a positive finite number, got -1.0" in err[0]
    assert not (tmp_path / "runs").exists()  # refused before any training
    with pytest.raises(ConfigError, match="dirichlet_alpha"):
        validate_config(benchmark_config(benchmark, "quick").replace(dirichlet_alpha=0.0))


def test_result_files_are_readable_by_others(tmp_path: Path) -> None:
    before = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "summary.json", "{}\n")
        os.umask(0o002)
        atomic_write_text(tmp_path / "metrics.csv", "round\n0\n")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "metrics.csv").stat().st_mode) == 0o664
