"""The worked examples of the site's guides run, so that they cannot go stale.

A code block of ``docs/guides/*.md`` right under the line ``<!-- test: run -->`` is one example:
the ``python`` blocks of a page run in one fresh interpreter, in order, each ``bash`` block in a
shell whose ``python`` is this one, all in a temporary folder on the real data root. Words after
``run`` mark the page's test: ``slow`` (pytest's ``slow``), ``ray`` and ``flower`` (skipped
without the extra). Each example is sized to take seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDES = ROOT / "docs" / "guides"
MARK = re.compile(r"^<!-- test: run(?P<marks>[\w ]*)-->\s*$")


def examples(page: Path) -> list[tuple[str, str, set[str]]]:
    """``(language, code, marks)`` of every marked block of ``page``, in order."""
    lines = page.read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        m = MARK.match(line)
        if not m:
            continue
        fence = lines[i + 1] if i + 1 < len(lines) else ""
        assert fence.startswith("```"), f"{page.name}:{i + 1}: the marker must stand right above a code block"
        language = fence[3:].strip().split()[0] if fence[3:].strip() else ""
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        found.append((language, "\n".join(lines[i + 2:end]) + "\n", set(m.group("marks").split())))
    return found


def _cases():
    for page in sorted(GUIDES.glob("*.md")):
        blocks = examples(page)
        if not blocks:
            continue
        marks = set().union(*(b[2] for b in blocks))
        pytest_marks = [getattr(pytest.mark, m) for m in sorted(marks) if m in ("slow", "ray", "flower")]
        yield pytest.param(page.name, blocks, id=page.stem, marks=pytest_marks)


def test_the_guides_have_examples_and_the_marker_finds_them():
    pages = {name for name, *_ in (c.values for c in _cases())}
    assert {"cli.md", "own-dataset.md", "own-attack.md", "own-defense.md", "resume.md", "ray.md",
            "flower.md"} <= pages
    assert examples(GUIDES / "cli.md")[0] == ("bash", "python -m flhelpers list\n", set())


@pytest.mark.parametrize(("name", "blocks"), list(_cases()))
def test_guide_examples_run(name, blocks, tmp_path, data_root):
    marks = set().union(*(b[2] for b in blocks))
    if "ray" in marks:
        pytest.importorskip("ray")
    if "flower" in marks:
        pytest.importorskip("flwr")
    env = dict(os.environ, FLHELPERS_DATA=str(data_root), MPLBACKEND="Agg",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0", FLWR_TELEMETRY_ENABLED="0")
    python = "".join(code for language, code, _ in blocks if language == "python")
    shells = [code for language, code, _ in blocks if language in ("bash", "sh", "shell")]
    for code in shells:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", f'python() {{ "{sys.executable}" "$@"; }}\n{code}'],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{name}: {code}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    if python:
        script = tmp_path / "example.py"
        script.write_text("import torch\ntorch.set_num_threads(1)\n" + python)
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{name}:\n{python}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
