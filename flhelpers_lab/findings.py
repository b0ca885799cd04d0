"""The findings written as documents (``docs/findings/*.md``), read back section by section.

A finding's prose lives in a Markdown page under ``docs/findings/``, never in code. Code that
prints one (``table3.md``'s reason for each cell far from the paper's, :mod:`flhelpers_lab.table3`)
finds it by its ``### heading`` with :func:`page_sections`, so the page can be read and edited as
a document while the generated tables still show every reason in full.
"""

from __future__ import annotations

import re
from pathlib import Path

from flhelpers_lab import store

#: the folder of the findings pages, relative to the repository
FINDINGS_DIR = Path("docs") / "findings"


def findings_page(name: str) -> Path:
    """``docs/findings/<name>`` of the repository (:func:`flhelpers_lab.store.repository_root`)."""
    return store.repository_root() / FINDINGS_DIR / name


def page_sections(page: str | Path) -> dict[str, str]:
    """Every ``### heading`` of the Markdown page ``page`` with its text: the non-empty lines up to
    the next heading of any level, joined by single spaces into one paragraph (a section holds one
    paragraph). Text under ``#`` and ``##`` headings is the page's own and is not returned.

    Raises:
        FileNotFoundError: the page is missing (a checkout has it; an installed package does not).
        ValueError: a ``###`` heading appears twice (a code looking it up would not know which).
    """
    path = Path(page)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the written findings live there, one '### <heading>' "
                                f"section each; run from a checkout of the repository.")
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            heading = re.match(r"###\s+(.+?)\s*$", line)
            if heading and heading.group(1) in sections:
                raise ValueError(f"{path}: the heading {line!r} appears twice; keep one section per heading.")
            current = sections.setdefault(heading.group(1), []) if heading else None
        elif current is not None and line.strip():
            current.append(line.strip())
    return {heading: " ".join(lines) for heading, lines in sections.items()}


__all__ = ["FINDINGS_DIR", "findings_page", "page_sections"]
