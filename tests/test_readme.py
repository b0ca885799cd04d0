"""The README is read in two minutes: at most 8,000 characters, leading with what a new user needs.

What it leads with, in order: the headline figure, the set-up commands (``make reproduce``,
``make test``, then ``make lab``), the Python example with what it prints, the table of the
notebooks; every link it holds resolves in the repository. Results and guides live in the site
(``docs/``, ``make docs``).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAX_CHARS = 8_000


def _position(text: str) -> int:
    where = README.find(text)
    assert where >= 0, f"README.md lacks {text!r}"
    return where


def test_the_readme_is_short():
    assert len(README) <= MAX_CHARS, f"README.md has {len(README)} characters; at most {MAX_CHARS} (move the rest to docs/)"


def test_it_leads_with_the_figure_the_commands_the_example_and_the_notebooks():
    figure = _position("![")
    commands = _position("```bash\nmake reproduce")
    block = README[commands:README.index("```", commands + 3)]
    assert [line.split()[1] for line in block.splitlines()[1:]] == ["reproduce", "test", "lab"]
    example = _position("```python")
    printed = _position("```text")
    table = _position("| notebook |")
    assert figure < commands < example < printed < table
    assert commands < 1_500, "the set-up commands must be on the first screen"


def test_the_example_prints_what_the_readme_shows():
    example = README[_position("```python"):]
    code = example[len("```python\n"):example.index("```", 3)]
    assert "print(f\"Src-Acc {s['source_accuracy']:.3f}, ASR {s['attack_success_rate']:.3f}\")" in code
    shown = README[_position("```text"):].splitlines()[1]
    assert re.fullmatch(r"Src-Acc 0\.\d{3}, ASR 0\.\d{3}", shown)


def test_the_notebook_table_lists_every_notebook():
    rows = re.findall(r"^\| `(\w+)` \| .+ \| ([\d.]+) \|$", README, flags=re.M)
    assert sorted(name for name, _ in rows) == sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))


def test_every_link_and_image_resolves():
    for target in re.findall(r"\]\(([^)\s]+)\)", README):
        if target.startswith(("http://", "https://", "#")):
            continue
        assert (ROOT / target.split("#")[0]).exists(), f"README.md links to {target}, which does not exist"


def test_the_fidelity_policy_is_stated_once():
    assert README.count("## Fidelity") == 1
    assert len(re.findall(r"released notebooks", README)) == 1
    assert "algorithms follow the paper's\ntext" in README
