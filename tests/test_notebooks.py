"""The benchmark notebooks, executed headless with papermill at a tiny scale on the real data."""

from __future__ import annotations

import json

import nbformat
import pytest

from flhelpers_lab.paper import TABLE3_BENCHMARKS
from flhelpers_lab.reproduce import ALL_NOTEBOOKS, NOTEBOOKS, ensure_kernel, notebooks_dir, reproduce, resolve_notebooks

FIGURES = ("pca_gradients", "robustness", "source_accuracy_rounds", "runtime", "detection")
TINY = {
    "MNIST": dict(benchmarks=["mnist-iid", "mnist-extreme"], rounds=2, peers=20,
                  defenses=["fedavg", "median", "lfighter"], attacker_ratios=[0.0, 0.3, 0.4],
                  config_overrides={"train_subset": 2000, "test_subset": 500}),
    "CIFAR10": dict(rounds=1, peers=5, defenses=["fedavg", "lfighter"], attacker_ratios=[0.0, 0.3],
                    config_overrides={"train_subset": 400, "test_subset": 200}),
    "IMDB": dict(rounds=1, peers=5, defenses=["fedavg", "lfighter"], attacker_ratios=[0.0, 0.4],
                 config_overrides={"train_subset": 500, "test_subset": 200}),
}


def test_every_notebook_exists_with_a_parameters_cell():
    folder = notebooks_dir()
    for path in resolve_notebooks(NOTEBOOKS, folder):
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        source = tagged[0].source
        for name in ("profile", "benchmarks", "defenses", "attacker_ratios", "seeds", "device", "data_root",
                     "results_dir", "rounds", "peers"):
            assert f"\n{name} = " in f"\n{source}", (path.name, name)
        assert 'profile = "quick"' in source
        # thin: no function or class definitions in the notebooks
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "def " not in code and "class " not in code
    assert [p.stem for p in resolve_notebooks(None, folder)] == list(ALL_NOTEBOOKS)


def test_reproduce_refuses_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="Unknown notebook 'SVHN'"):
        reproduce(notebooks=["SVHN"], results_dir=tmp_path)
    with pytest.raises(ValueError, match="Unknown profile"):
        reproduce(profile="fast", results_dir=tmp_path)


def test_timings_keep_other_notebooks_and_replace_a_rerun(tmp_path):
    import pandas as pd

    from flhelpers_lab.reproduce import write_timings

    path = tmp_path / "timings.csv"
    write_timings(path, pd.DataFrame([{"notebook": "MNIST", "profile": "quick", "seconds": 300.0, "status": "ok"},
                                      {"notebook": "IMDB", "profile": "quick", "seconds": 100.0, "status": "failed"}]))
    out = write_timings(path, pd.DataFrame([{"notebook": "IMDB", "profile": "quick", "seconds": 90.0,
                                             "status": "ok"}]))
    assert sorted(zip(out["notebook"], out["seconds"], out["status"])) == [("IMDB", 90.0, "ok"),
                                                                           ("MNIST", 300.0, "ok")]
    assert pd.read_csv(path).shape == (2, 4)


def test_kernel_runs_this_interpreter():
    import sys

    from jupyter_client.kernelspec import KernelSpecManager

    from flhelpers_lab.reproduce import _runs_this_python

    spec = KernelSpecManager().get_kernel_spec(ensure_kernel())
    assert _runs_this_python(spec.argv[0])
    assert _runs_this_python(sys.executable) and not _runs_this_python("/usr/bin/nonexistent-python")


def test_plain_papermill_runs_a_notebook_with_our_kernelspec(tmp_path):
    """``papermill notebooks/X.ipynb out.ipynb`` without ``kernel_name`` (no ``make lab`` before):
    the kernel the notebooks declare starts, runs this environment and imports flhelpers."""
    import nbformat
    import papermill as pm

    ours = nbformat.read(notebooks_dir() / "MNIST.ipynb", as_version=4)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import flhelpers\nprint(flhelpers.__name__)")],
                                  metadata={"kernelspec": dict(ours.metadata["kernelspec"])})
    nbformat.write(nb, tmp_path / "in.ipynb")
    out = pm.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), progress_bar=False)
    assert out.cells[0].outputs[0]["text"].strip() == "flhelpers"


def test_inline_figures_hides_a_headless_backend_from_the_kernels(monkeypatch):
    import os

    from flhelpers_lab.reproduce import inline_figures

    monkeypatch.setenv("MPLBACKEND", "Agg")
    with inline_figures():
        assert "MPLBACKEND" not in os.environ
    assert os.environ["MPLBACKEND"] == "Agg"
    monkeypatch.delenv("MPLBACKEND")
    with inline_figures():
        pass
    assert "MPLBACKEND" not in os.environ


def test_reproduce_starts_the_kernel_without_the_plain_tcp_warning(tmp_path, capfd):
    """ipykernel warns "Kernel is running over TCP without encryption" at every kernel start
    unless the manager provisions CurveZMQ keys; reproduce's manager does, and the cell runs."""
    import nbformat
    import papermill as pm

    from flhelpers_lab.reproduce import kernel_manager_class

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    nbformat.write(nb, tmp_path / "in.ipynb")
    manager = kernel_manager_class()
    assert manager is not None  # the installed jupyter_client has transport_encryption
    out = pm.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name=ensure_kernel(),
                              progress_bar=False, kernel_manager_class=manager)
    assert out.cells[0].outputs[0]["text"].strip() == "42"
    assert "without encryption" not in "".join(capfd.readouterr())


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_and_writes_its_outputs(name, data_root, tmp_path):
    params = {**TINY[name], "workers": 1}
    assert reproduce("quick", [name], tmp_path, data_root=data_root, parameters=params) == 0
    executed = tmp_path / "notebooks" / f"{name}.ipynb"
    nb = nbformat.read(executed, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert errors == []
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "the executed notebook embeds no figure (MPLBACKEND=Agg reached the kernel?)"
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and f"rounds = {params['rounds']}" in injected[0].source
    benchmarks = params.get("benchmarks") or {"CIFAR10": ["cifar10-iid", "cifar10-mild"], "IMDB": ["imdb"]}[name]
    for b in benchmarks:
        for fig in FIGURES:
            png = tmp_path / "figures" / b / f"{fig}.png"
            assert png.is_file() and png.stat().st_size > 10_000, png
        for metric in ("source_accuracy", "attack_success_rate", "source_accuracy_cv", "detection_tpr"):
            assert (tmp_path / "tables" / f"{b}_{metric}.md").is_file()
        assert (tmp_path / "tables" / f"paper_vs_ours_{b}.csv").is_file() == (b in TABLE3_BENCHMARKS)
        assert (tmp_path / "tables" / f"table1_good_bad_update_{b}.csv").is_file()
    assert (tmp_path / "figures" / benchmarks[0] / "gradient_magnitudes.png").is_file()
    assert (tmp_path / "tables" / f"findings_{name.lower()}.md").is_file()
    timings = (tmp_path / "notebooks" / "timings.csv").read_text()
    assert f"{name},quick," in timings and ",ok" in timings
    # the grid's runs are in the results store; a second execution reuses all of them
    runs_before = {p.name for p in (tmp_path / "runs").iterdir()}
    assert reproduce("quick", [name], tmp_path, data_root=data_root, parameters=params) == 0
    assert {p.name for p in (tmp_path / "runs").iterdir()} == runs_before
    nb = nbformat.read(executed, as_version=4)
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "computed, " in text and "0 computed" in text
