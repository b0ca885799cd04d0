"""``python -m flhelpers_lab study NAME``: every investigation is a module with its own ``main(argv)``,
listed in ``flhelpers_lab.cli.STUDIES`` (no scripts folder beside the packages)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from flhelpers_lab.cli import STUDIES, main

ROOT = Path(__file__).resolve().parents[1]


def test_every_investigation_module_is_a_study_and_no_tools_folder_is_left():
    folder = ROOT / "flhelpers_lab" / "investigations"
    modules = {f"flhelpers_lab.investigations.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"}
    assert modules <= set(STUDIES.values())
    assert {"flhelpers_lab.beyond", "flhelpers_lab.compute"} <= set(STUDIES.values())
    assert not (ROOT / "tools").exists()


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_each_study_has_a_main_taking_argv_and_a_one_line_summary(name):
    module = importlib.import_module(STUDIES[name])
    params = inspect.signature(module.main).parameters
    assert list(params) == ["argv"] and params["argv"].default is None
    first, *rest = (module.__doc__ or "").strip().splitlines()
    assert first and (not rest or rest[0] == ""), f"{name}: the docstring's first line is its summary"
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0


def test_study_list_names_every_study(capsys):
    assert main(["study", "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == list(STUDIES)
