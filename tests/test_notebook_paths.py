"""Where the notebooks write when nobody says: the repository's ``results/``, whether the kernel
runs in the repository root (``make reproduce``) or in ``notebooks/`` (``make lab``)."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest

from flhelpers_lab.reproduce import ALL_NOTEBOOKS, notebooks_dir
from flhelpers_lab.store import default_results_dir, repository_root


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
    from flhelpers_lab.store import results_root

    monkeypatch.chdir(tmp_path)
    assert results_root() == repository_root() / "results"
    assert default_results_dir("quick") == repository_root() / "results"
    assert default_results_dir("medium") == repository_root() / "results" / "medium"


def test_results_folders_of_notebooks_and_headless_runs_are_git_ignored() -> None:
    """Whatever a run, grid or notebook writes under results/ is ignored (the Beyond study's
    records/ once was not), the committed reference results are not."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (repository_root() / ".git").exists():
        pytest.skip("not a git checkout")
    written = ["results/medium/table3.md", "results/records/0123.csv", "results/runs/x/metrics.csv",
               "results/notebooks/MNIST.ipynb", "results/figures/mnist-iid/a.png", "results/anything/new.csv",
               "notebooks/results/runs/x/metrics.csv", "results/reference/medium/runs/x/checkpoint.pt"]
    kept = ["results/reference/medium/table3.md", "results/reference/medium/runs/x/metrics.csv"]
    out = subprocess.run(["git", "check-ignore", "--no-index", *written, *kept], cwd=repository_root(),
                         capture_output=True, text=True).stdout.split()
    assert out == written


def test_injected_parameters_carry_no_absolute_path_of_this_machine(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from flhelpers_lab.reproduce import notebook_parameters

    repo, nbs = repository_root(), notebooks_dir()
    monkeypatch.setenv("FLHELPERS_DATA", str(tmp_path / "shared-data"))
    params = notebook_parameters("medium", repo / "results" / "medium", None, "cpu", nbs)
    assert params == {"profile": "medium", "results_dir": "../results/medium", "device": "cpu"}
    monkeypatch.delenv("FLHELPERS_DATA")
    monkeypatch.chdir(repo)
    params = notebook_parameters("quick", repo / "results", None, "cpu", nbs, force=True, parameters={"rounds": 2})
    assert params == {"profile": "quick", "results_dir": "../results", "device": "cpu", "data_root": "../data",
                      "force": True, "rounds": 2}
    outside = notebook_parameters("quick", tmp_path, tmp_path / "d", "cpu", nbs)
    assert outside["results_dir"] == str(tmp_path.resolve()) and outside["data_root"] == str((tmp_path / "d").resolve())
