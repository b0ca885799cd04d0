"""The house rules (docs/architecture.md): imports flow one way, the lab sits on top of the library.

Every module of ``flhelpers`` (the library) belongs to one layer; a module may import its own
layer and the layers below it, never one above, function-level (lazy) imports included. The
package's ``__init__`` is the public facade: it ranks with the interfaces. ``flhelpers_lab``
(the paper's studies) is the top layer: it imports the library, and no library module imports
it, lazily or by name. Run alone with ``python -m pytest -q tests/test_architecture.py``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flhelpers"
LAB = ROOT / "flhelpers_lab"
NOTEBOOKS = ROOT / "notebooks"
PACKAGES = ("flhelpers", "flhelpers_lab")
#: the most lines a module of the library may have
MAX_LINES = 500

#: bottom to top: settings -> data/models -> attacks/defenses -> the attack on privacy ->
#: metrics/results -> fl -> the gradient analysis -> plots -> the interfaces (command line,
#: Flower) -> the lab
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("settings", ("_version", "config", "optional", "presets", "registry", "params", "seeding")),
    ("data and models", ("data", "models")),
    ("attacks and defenses", ("attacks", "defenses")),
    ("privacy attack", ("privacy",)),
    ("metrics and results", ("metrics", "results")),
    ("fl", ("fl",)),
    ("analysis", ("analysis",)),
    ("plots", ("plots",)),
    ("interfaces", ("cli", "flower", "__main__")),
)
_RANK = {top: rank for rank, (_, tops) in enumerate(LAYERS) for top in tops}
LAB_RANK = len(LAYERS)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for folder in (PACKAGE, LAB) for p in sorted(folder.rglob("*.py"))}


def layer_of(module: str) -> int:
    """The rank of a module: ``flhelpers.<top>...`` by its top; the package root (the public
    facade, which imports the built-ins to register them) with the interfaces; the lab above all."""
    parts = module.split(".")
    if parts[0] == "flhelpers_lab":
        return LAB_RANK
    return _RANK["cli"] if len(parts) == 1 else _RANK[parts[1]]


def _layer_title(rank: int) -> str:
    return "lab" if rank == LAB_RANK else LAYERS[rank][0]


def imported_modules(path: Path, known: set[str]) -> list[tuple[int, str]]:
    """Every ``flhelpers``/``flhelpers_lab`` module ``path`` imports, anywhere in the file: (line, module).
    ``from flhelpers.x import y`` counts as ``flhelpers.x.y`` when that is a module, else ``flhelpers.x``.
    ``importlib.import_module("flhelpers_lab...")`` and ``__import__`` with a literal name count too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((node.lineno, sub if sub in known else node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}:{node.lineno}: relative import; the house uses absolute imports")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and node.args[0].value.split(".")[0] in PACKAGES \
                and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__"):
            found.append((node.lineno, node.args[0].value))
    return found


def upward_imports() -> list[str]:
    known = set(modules())
    bad = []
    for name, path in modules().items():
        if name in PACKAGES:  # the facades re-export the public names
            continue
        own = layer_of(name)
        for line, target in imported_modules(path, known):
            rank = layer_of(target)
            if rank > own:
                bad.append(f"{path.relative_to(ROOT)}:{line} (layer '{_layer_title(own)}') imports {target} "
                           f"(layer '{_layer_title(rank)}')")
    return bad


def test_every_module_has_a_layer():
    tops = {name.split(".")[1] for name in modules() if name.startswith("flhelpers.")}
    assert tops <= set(_RANK), f"place these in LAYERS (and docs/architecture.md): {sorted(tops - set(_RANK))}"


def test_no_module_imports_a_layer_above_it():
    bad = upward_imports()
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_library_module_imports_the_lab():
    known = set(modules())
    bad = [f"{path.relative_to(ROOT)}:{line} imports {target}" for name, path in modules().items()
           if name.split(".")[0] == "flhelpers" for line, target in imported_modules(path, known)
           if target.split(".")[0] == "flhelpers_lab"]
    assert not bad, "the library imports the lab:\n" + "\n".join(bad)


def test_the_checker_sees_an_upward_import(tmp_path):
    path = tmp_path / "flhelpers" / "defenses" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text("def f():\n    from flhelpers.fl.engine import run_experiment\n")
    found = [t for _, t in imported_modules(path, {"flhelpers.fl.engine"})]
    assert found == ["flhelpers.fl.engine"] and layer_of(found[0]) > layer_of("flhelpers.defenses.x")


def test_the_checker_sees_a_lazy_import_of_the_lab(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("import importlib\ndef f():\n    from flhelpers_lab.paper import plan_grid\n"
                    "    return importlib.import_module('flhelpers_lab.table3')\n")
    found = [t for _, t in imported_modules(path, set())]
    assert found == ["flhelpers_lab.paper", "flhelpers_lab.table3"]
    assert all(layer_of(t) > layer_of("flhelpers.cli") for t in found)


def test_library_modules_are_small():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"


def test_library_code_points_at_no_issue_or_private_notes():
    """Readers of the repository cannot follow "issue 12" or "PAPER.md section 3": the code names
    the paper's section or a document under docs/ instead."""
    pattern = re.compile(r"\b[Ii]ssue \d+|PAPER\.md")
    bad = [f"{p.relative_to(ROOT)}:{k}: {line.strip()}" for p in PACKAGE.rglob("*.py")
           for k, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not bad, "\n".join(bad)


def test_import_flhelpers_registers_every_built_in_name():
    code = ("import flhelpers as f; print(sorted(f.ATTACKS.names())); print(sorted(f.DEFENSES.names())); "
            "print(sorted(f.MODELS.names())); print(sorted(f.DATASETS.names()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    attacks, defenses, models, datasets = out.splitlines()
    assert ast.literal_eval(attacks) == ["alie", "backdoor", "camouflage-flip", "gaussian-noise", "ipm", "label-flip",
                                            "multi-pair-flip", "none", "partial-flip", "timed-flip"]
    assert ast.literal_eval(defenses) == ["dp", "fedavg", "ffl", "ffl-mixing", "flame", "foolsgold", "krum", "lfighter", "lfighter-released",
                              "median", "multi-krum", "repeated-median", "tolpegin", "trimmed-mean",
                              "user-elimination"]
    assert ast.literal_eval(models) == ["bilstm", "mnist-cnn", "resnet18"]
    assert ast.literal_eval(datasets) == ["cifar10", "imdb", "mnist"]


def _cells(nb) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source, list(c.metadata.get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("name", sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_and_its_script_are_in_sync(name):
    """notebooks/<NAME>.ipynb and notebooks/<NAME>.py (percent format) hold the same cells;
    fix with ``jupytext --sync notebooks/<NAME>.ipynb`` (or ``.py``, whichever you edited)."""
    import jupytext

    script = NOTEBOOKS / f"{name}.py"
    assert script.is_file(), f"{script.name} missing: jupytext --sync notebooks/{name}.ipynb"
    assert script.read_text().startswith("# %%"), f"{script.name} is not in the percent format"
    assert _cells(jupytext.read(script)) == _cells(jupytext.read(NOTEBOOKS / f"{name}.ipynb")), \
        f"notebooks/{name}.ipynb and {name}.py differ: jupytext --sync the one you edited"


@pytest.mark.parametrize("name", sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_declares_a_kernel_every_fresh_install_has(name):
    """Each notebook names the kernel ``python3``, which ipykernel gives every environment it is
    installed in (no ``make lab`` needed), so ``papermill notebooks/X.ipynb out.ipynb`` finds it;
    ``make lab`` still installs "Python (flhelpers)" for other Jupyters."""
    import nbformat
    from jupyter_client.kernelspec import find_kernel_specs

    spec = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4).metadata.get("kernelspec", {})
    assert spec.get("name") == "python3", f"{name}.ipynb declares kernel {spec.get('name')!r}"
    assert spec["name"] in find_kernel_specs(), "the declared kernel is not installed in this environment"
    makefile = (NOTEBOOKS.parent / "Makefile").read_text()
    assert "ipykernel install --user --name flhelpers" in makefile


def test_every_script_has_its_notebook():
    scripts = {p.stem for p in NOTEBOOKS.glob("*.py")}
    assert scripts == {p.stem for p in NOTEBOOKS.glob("*.ipynb")}


def test_import_optional_names_the_install_command_when_a_module_is_missing() -> None:
    from flhelpers.config import ConfigError
    from flhelpers.optional import import_optional

    assert import_optional(("json", "ast"), "never raised").__name__ == "json"
    with pytest.raises(ConfigError, match="pip install x") as info:
        import_optional(("json", "flhelpers_no_such_module"), "needs x: pip install x", ConfigError)
    assert isinstance(info.value.__cause__, ImportError)
