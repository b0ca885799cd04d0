"""Where the notebooks write when nobody says: the repository's ``results/``, whether the kernel
runs in the repository root (``make reproduce``) or in ``notebooks/`` (``make lab``)."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest

from flhelpers.reproduce import ALL_NOTEBOOKS, notebooks_dir
from flhelpers.studies.reference import default_results_dir, repository_root


def _setup_namespace(name: str) -> dict:
    """Run a notebook's parameters cell and the code cell after it (its imports and setup),
    as a kernel would, and return the variables they define."""
    nb = jupytext.read(notebooks_dir() / f"{name}.py")
    code = [c for c in nb.cells if c.cell_type == "code"]
    first = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    namespace: dict = {"__name__": "__main__"}
    for cell in code[first:first + 2]:
        exec(compile(cell.source, f"{name}.py", "exec"), namespace)  # noqa: S102 - the project's own notebook
    return namespace


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_notebook_writes_into_the_repository_results_from_notebooks_folder(name: str, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    kernel_cwd = tmp_path / "notebooks"  # a kernel started by JupyterLab runs in the notebook's folder
    kernel_cwd.mkdir()
    monkeypatch.chdir(kernel_cwd)
    namespace = _setup_namespace(name)
    assert namespace["profile"] == "quick"
    assert Path(namespace["results_dir"]) == repository_root() / "results"
    assert not (kernel_cwd / "results").exists()


def test_default_results_dirs_are_absolute_and_in_the_repository(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from flhelpers.studies.reference import results_root

    monkeypatch.chdir(tmp_path)
    assert results_root() == repository_root() / "results"
    assert default_results_dir("quick") == repository_root() / "results"
    assert default_results_dir("medium") == repository_root() / "results" / "medium"


def test_results_folders_of_notebooks_and_headless_runs_are_git_ignored() -> None:
    ignore = (repository_root() / ".gitignore").read_text().splitlines()
    for entry in ("/results/medium/", "/notebooks/results/"):
        assert entry in ignore, entry
