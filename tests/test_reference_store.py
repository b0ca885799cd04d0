"""Reading the committed reference results (``results/reference/medium``) end to end.

The README's medium redraw (``python -m flhelpers_lab reproduce --profile medium``) and
``python -m flhelpers_lab table3`` must finish on the committed store, and without the explicit
``--refresh-reference`` flag they must not write into it (``git status`` stays clean).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

import flhelpers_lab.store as lab_store
from flhelpers_lab.cli import main
from flhelpers_lab.reproduce import NOTEBOOKS
from flhelpers_lab.findings import FINDINGS_DIR
from flhelpers.results import is_finished

REFERENCE = lab_store.reference_dir("medium")


def _copy_store(target: Path) -> Path:
    """A copy of the committed medium store (its runs, captures and the files the notebooks draw)."""
    shutil.copytree(REFERENCE, target, ignore=shutil.ignore_patterns("foolsgold-long", "lfighter-*"))
    return target


def _state(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its inode and modification time: a rewrite changes one."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def fake_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository root whose ``results/reference/medium`` is a copy of the committed store, with
    the findings pages (Table 3's written reasons among them)."""
    root = tmp_path / "repo"
    _copy_store(root / "results" / "reference" / "medium")
    shutil.copytree(lab_store.repository_root() / FINDINGS_DIR, root / FINDINGS_DIR)
    (root / "pyproject.toml").write_text("[project]\nname = 'flhelpers'\n")
    monkeypatch.setattr(lab_store, "repository_root", lambda: root)
    return root


@pytest.mark.slow
def test_readme_medium_redraw_finishes_on_a_copy_of_the_committed_store(tmp_path: Path, data_root: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """The README's ``python -m flhelpers_lab reproduce --profile medium`` on a copy of the store, all
    three benchmark notebooks: they redraw from the committed runs (none computed), the runs the
    store lacks (the CIFAR10 row is still being computed) are listed and left out instead of
    trained for hours, and Table 3 is written, its MNIST-iid and MNIST-Extreme section included."""
    store = _copy_store(tmp_path / "medium")
    runs_before = sorted(p.name for p in (store / "runs").iterdir())
    rc = main(["reproduce", "--profile", "medium", "--results-dir", str(store), "--data-root", str(data_root)])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in (store / "runs").iterdir()) == runs_before  # nothing computed
    for name in NOTEBOOKS:
        text = (store / "notebooks" / f"{name}.ipynb").read_text()
        assert "0 computed" in text and '"output_type": "error"' not in text, name
    t3 = pd.read_csv(store / "table3.csv")
    committed = pd.read_csv(REFERENCE / "table3.csv")
    assert list(t3["runs"]) == list(committed["runs"]) and t3["runs"].sum() > 0
    md = (store / "table3.md").read_text()
    assert "## MNIST-iid and MNIST-Extreme" in md  # the section other_runs writes
    assert "**mnist-extreme**" in md and "**mnist-iid**" in md


def test_medium_redraw_leaves_out_missing_runs_unless_asked_to_compute_them() -> None:
    from flhelpers_lab.reproduce import medium_parameters

    assert medium_parameters("medium", False, False, None) == {"only_finished": True}
    assert medium_parameters("medium", False, False, {"rounds": 2}) == {"only_finished": True, "rounds": 2}
    assert medium_parameters("medium", False, False, {"only_finished": False}) == {"only_finished": False}
    assert medium_parameters("medium", False, True, None) is None  # --compute-missing
    assert medium_parameters("medium", True, False, None) is None  # --force recomputes everything
    assert medium_parameters("quick", False, False, None) is None  # quick computes its runs


def test_compute_missing_is_refused_where_it_means_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["reproduce", "--profile", "quick", "--compute-missing", "--results-dir", str(tmp_path)]) == 2
    assert "--compute-missing is for the medium redraw" in capsys.readouterr().err
    assert main(["reproduce", "--profile", "medium", "--compute-missing", "--only-finished",
                 "--results-dir", str(tmp_path)]) == 2
    assert "contradict" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_table3_command_reads_the_committed_runs_without_writing_there(fake_repository: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    committed = fake_repository / "results" / "reference" / "medium"
    before = _state(committed)
    assert main(["table3"]) == 0
    assert _state(committed) == before
    out = fake_repository / "results" / "medium"
    assert (out / "table3.md").read_text() == (REFERENCE / "table3.md").read_text()
    assert (out / "readme_tables.md").read_text() == (REFERENCE / "readme_tables.md").read_text()
    assert f"{out / 'table3.md'}" in capsys.readouterr().out


def test_table3_refresh_flag_writes_into_the_committed_store(fake_repository: Path) -> None:
    committed = fake_repository / "results" / "reference" / "medium"
    (committed / "table3.md").unlink()
    assert main(["table3", "--refresh-reference"]) == 0
    assert (committed / "table3.md").read_text() == (REFERENCE / "table3.md").read_text()
    assert not (fake_repository / "results" / "medium").exists()


@pytest.mark.slow
def test_medium_reproduce_leaves_the_committed_store_untouched(fake_repository: Path, data_root: Path) -> None:
    """The default medium redraw reads the committed runs and writes into ``results/medium``."""
    committed = fake_repository / "results" / "reference" / "medium"
    before = _state(committed)
    from flhelpers_lab.reproduce import reproduce

    assert reproduce("medium", ["IMDB"], data_root=data_root) == 0
    assert _state(committed) == before
    out = fake_repository / "results" / "medium"
    executed = json.loads((out / "notebooks" / "IMDB.ipynb").read_text())
    outputs = json.dumps([c.get("outputs", []) for c in executed["cells"]])
    assert "0 computed" in outputs and '"error"' not in outputs
    assert (out / "table3.md").is_file() and (out / "figures" / "imdb" / "robustness.png").is_file()
    finished = sorted(p.name for p in (committed / "runs").iterdir() if is_finished(p))
    assert sorted(os.listdir(out / "runs")) == finished  # the committed finished runs, copied


def test_reproduce_refuses_refresh_with_another_results_dir(tmp_path: Path) -> None:
    from flhelpers_lab.reproduce import reproduce

    with pytest.raises(ValueError, match="--refresh-reference"):
        reproduce("medium", results_dir=tmp_path, refresh_reference=True)
    with pytest.raises(ValueError, match="medium"):
        reproduce("quick", results_dir=None, refresh_reference=True)
