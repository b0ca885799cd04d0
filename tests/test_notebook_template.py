"""The MNIST, CIFAR10 and IMDB notebooks are one template, and the report they call draws from the data.

Each benchmark notebook keeps its own parameters cell and prose; every other code cell is the same
in the three (same number, same source), so whatever differs between them must follow from the
parameters and the data (:mod:`flhelpers_lab.benchmark`).
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import numpy as np
import pandas as pd
import pytest

from flhelpers_lab.benchmark import (BenchmarkReport, dataset_benchmarks, paper_table1, paper_table3,
                                     plan_overview)
from flhelpers_lab.published import PAPER_TABLE1
from flhelpers_lab.paper import plan_grid
from flhelpers_lab.reproduce import NOTEBOOKS, notebooks_dir
from flhelpers_lab.table3 import PAPER_TABLE3


def _code_cells(name: str, suffix: str) -> tuple[list[str], list[int]]:
    """The sources of a notebook's code cells, and the positions of those tagged ``parameters``."""
    nb = jupytext.read(notebooks_dir() / f"{name}{suffix}")
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    return [c.source for c in code], tagged


@pytest.mark.parametrize("suffix", [".py", ".ipynb"])
def test_benchmark_notebooks_share_every_code_cell_but_the_parameters(suffix: str) -> None:
    cells = {name: _code_cells(name, suffix) for name in NOTEBOOKS}
    for name, (_, tagged) in cells.items():
        assert len(tagged) == 1, f"{name}{suffix} has {len(tagged)} parameters cells, not one"
    first, (reference, [at]) = NOTEBOOKS[0], cells[NOTEBOOKS[0]]
    for name, (code, [where]) in cells.items():
        assert where == at, f"the parameters cell of {name}{suffix} is code cell {where}, of {first} {at}"
        assert len(code) == len(reference), f"{name}{suffix} has {len(code)} code cells, {first} {len(reference)}"
        for i, (ours, theirs) in enumerate(zip(code, reference)):
            if i != at:
                assert ours == theirs, f"code cell {i} of {name}{suffix} differs from {first}'s"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_each_parameters_cell_names_its_own_dataset(name: str) -> None:
    code, [at] = _code_cells(name, ".py")
    namespace: dict = {}
    exec(compile(code[at], f"{name}.py", "exec"), namespace)  # noqa: S102 - the project's own notebook
    assert namespace["dataset"] == name.lower()
    assert dataset_benchmarks(namespace["dataset"])


def test_dataset_benchmarks_follow_the_paper_and_refuse_an_unknown_dataset() -> None:
    assert dataset_benchmarks("mnist") == ["mnist-iid", "mnist-mild", "mnist-extreme"]
    assert dataset_benchmarks("CIFAR10") == ["cifar10-iid", "cifar10-mild"]
    with pytest.raises(ValueError, match="known datasets"):
        dataset_benchmarks("svhn")


def test_paper_tables_are_printed_from_the_papers_values() -> None:
    t3 = paper_table3("imdb")
    assert list(t3.index[:2]) == ["fedavg-no-attack", "fedavg"]
    assert (t3.loc["lfighter", "Src-Acc %"], t3.loc["lfighter", "ASR %"]) == PAPER_TABLE3["imdb"]["lfighter"]
    assert np.isnan(t3.loc["median", "All-Acc %"]) and t3.loc["fedavg", "All-Acc %"] > 0
    t1 = paper_table1()
    assert t1.shape == (3, 4) and t1.loc["angle (degrees)", "whole update"] == PAPER_TABLE1["angle (degrees)"][0]


def test_plan_overview_adds_the_training_setting() -> None:
    table = plan_overview({"mnist-extreme": plan_grid("mnist-extreme", "quick")})
    assert table.loc["mnist-extreme", "flip"] == "7 -> 1"
    assert table.loc["mnist-extreme", "optimizer"].startswith("sgd lr ")


def _summaries() -> pd.DataFrame:
    """A hand-made IMDB grid: FedAvg at 0 % and 40 %, LFighter at 40 %."""
    rows = [("fedavg", 0.0, 0.80, 0.85), ("fedavg", 0.4, 0.10, 0.55), ("lfighter", 0.4, 0.78, 0.84)]
    return pd.DataFrame([{"benchmark": "imdb", "defense": d, "attacker_ratio": r, "source_accuracy": s,
                          "attack_success_rate": 1 - s, "accuracy": a} for d, r, s, a in rows])


def test_the_report_compares_a_grid_with_the_paper_and_writes_its_findings(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    report = BenchmarkReport("imdb", "quick", {"imdb": plan_grid("imdb", "quick")}, str(tmp_path))
    report.summaries = _summaries()
    findings = report.compare_with_paper()
    holds = dict(zip(findings["finding"], findings["holds"]))
    assert holds == {"the attack hurts FedAvg's source class": "yes", "LFighter holds the source class": "yes"}
    assert (tmp_path / "tables" / "findings_imdb.csv").is_file()
    assert (tmp_path / "tables" / "paper_vs_ours_imdb.csv").is_file()
    capsys.readouterr()
    report.show_foolsgold_trap()  # the study has no IMDB run: nothing drawn
    assert capsys.readouterr().out == "" and not (tmp_path / "figures").exists()


def test_the_capture_table_says_which_captured_runs_the_grid_already_has(tmp_path: Path) -> None:
    plan = {b: plan_grid(b, "quick") for b in ("mnist-iid", "imdb")}
    table = BenchmarkReport("mnist", "quick", plan, str(tmp_path)).capture_table()
    assert table.loc["mnist-iid", "a run of the grid"].startswith("no")  # Fig 1's ratio, not the grid's
    assert table.loc["imdb", "a run of the grid"] == "yes"
