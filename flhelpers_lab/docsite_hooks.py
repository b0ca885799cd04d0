"""mkdocs's hooks for the site (mkdocs.yml names this file under ``hooks:``).

:func:`on_config` runs the generator (:mod:`flhelpers_lab.docsite`) when its folders are missing,
so a bare ``mkdocs build`` works from a fresh clone too, and expands a nav entry ending in ``/``
into that folder's pages; :func:`on_page_markdown` points a link into
``results/reference/medium/`` at the site's copy, turns a link to another repository file into
its path (the site holds only ``docs/``), and links every committed run id written in backticks
to its row on the runs page.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from flhelpers_lab.docsite import LINK as _LINK
from flhelpers_lab.docsite import ORDER_FILE, RUN_ID, ROOT, STORE, STORE_SKIP_FILES, committed_runs, generate


def _folder_nav(folder: Path, docs: Path) -> list:
    """The pages of ``folder`` as a nav list: its index first, then files, then subfolders as
    sections titled by their dotted module name (under api/) or folder name."""
    items: list = []
    order = folder / ORDER_FILE
    if order.is_file():
        return [str((folder / n).relative_to(docs)) for n in order.read_text().split() if (folder / n).is_file()]
    if (folder / "index.md").is_file():
        items.append(str((folder / "index.md").relative_to(docs)))
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in (".md", ".ipynb") and path.name != "index.md":
            rel = str(path.relative_to(docs))
            title = path.stem if folder.relative_to(docs).parts[0] == "api" else None
            items.append({title: rel} if title else rel)
    for path in sorted(p for p in folder.iterdir() if p.is_dir()):
        sub = _folder_nav(path, docs)
        if sub:
            items.append({path.name: sub})
    return items


def _expand(nav: list, docs: Path) -> list:
    out = []
    for item in nav:
        if isinstance(item, dict):
            (title, value), = item.items()
            if isinstance(value, str) and value.endswith("/"):
                out.append({title: _folder_nav(docs / value, docs)})
            elif isinstance(value, list):
                out.append({title: _expand(value, docs)})
            else:
                out.append(item)
        else:
            out.append(item)
    return out


def on_config(config: Any) -> Any:
    """Generate the pages when they are missing, then expand nav entries ending in ``/``."""
    docs = Path(config["docs_dir"])
    if not (docs / "store" / ".generated").is_file():
        generate(docs)
    if config.get("nav"):
        config["nav"] = _expand(config["nav"], docs)
    return config


_RUN_CODE = re.compile(r"(?<![\[\w])`([0-9a-f]{16})`(?!\]|\()")
_RUNS: dict[str, Path] | None = None


def _store_target(rel: Path, docs: Path) -> Path | None:
    """Where the site holds the store's ``rel`` (a path under results/reference/medium/), if it does."""
    if rel.parts and rel.parts[0] == "notebooks":
        candidate = docs / rel
    elif str(rel) in STORE_SKIP_FILES:
        candidate = docs / "results" / ("table3.md" if rel.name == "table3.md" else "index.md")
    else:
        candidate = docs / "store" / rel
    if candidate.is_dir() and (candidate / "summary.md").is_file():
        candidate = candidate / "summary.md"
    return candidate if candidate.is_file() else None


def map_link(target: str, page_src: str, docs: Path, root: Path = ROOT) -> tuple[str | None, str | None]:
    """``(new target, None)`` for a link the site holds elsewhere, ``(None, repository path)`` for a
    repository file outside ``docs/`` that the site does not hold, ``(target, None)`` otherwise
    (a link inside ``docs/``, an address, or a path that exists nowhere, which mkdocs then reports).
    ``root`` is the repository (``docs`` lies in it)."""
    store = root / STORE.relative_to(ROOT)
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return target, None
    path, _, anchor = target.partition("#")
    page_dir = (docs / page_src).parent
    resolved = Path(os.path.normpath(page_dir / path))
    if resolved.is_relative_to(docs) and not resolved.exists() \
            and resolved.relative_to(docs).parts[:3] == STORE.relative_to(ROOT).parts:
        resolved = root / resolved.relative_to(docs)  # written relative to docs/, not to the page
    if resolved.is_relative_to(docs) or not resolved.is_relative_to(root):
        return target, None
    rel = resolved.relative_to(root)
    if resolved.is_relative_to(store):
        store_rel = resolved.relative_to(store)
        if len(store_rel.parts) >= 2 and store_rel.parts[-2] == "runs" and RUN_ID.match(store_rel.parts[-1]):
            return os.path.relpath(docs / "store" / "runs.md", page_dir) + "#" + store_rel.parts[-1], None
        held = _store_target(store_rel, docs)
        if held is not None:
            return os.path.relpath(held, page_dir) + (f"#{anchor}" if anchor else ""), None
    if resolved.exists():
        return None, str(rel) + ("/" if resolved.is_dir() else "")
    return target, None


def rewrite_links(markdown: str, page_src: str, docs: Path) -> str:
    """:func:`map_link` on every Markdown link and image of a page, and committed run ids
    written in backticks linked to their row of the runs page (code fences left alone)."""
    global _RUNS
    if _RUNS is None:
        _RUNS = committed_runs()
    runs_page_link = os.path.relpath(docs / "store" / "runs.md", (docs / page_src).parent)

    def link(m: re.Match) -> str:
        text, target, title = m.group(1), m.group(2), m.group(3) or ""
        new, repo_path = map_link(target, page_src, docs)
        if new is not None:
            return f"{text}({new}{title})"
        if text.startswith("!"):
            return m.group(0)
        inner = text[1:-1]
        return inner if f"`{repo_path}`" in inner or inner.strip("`") == repo_path else f"{inner} (`{repo_path}`)"

    def run(m: re.Match) -> str:
        run_id = m.group(1)
        return f"[`{run_id}`]({runs_page_link}#{run_id})" if run_id in _RUNS else m.group(0)

    out, fenced = [], False
    for line in markdown.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced:
            line = _LINK.sub(link, line)
            if not page_src.startswith("store/runs"):
                line = _RUN_CODE.sub(run, line)
        out.append(line)
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return rewrite_links(markdown, page.file.src_uri, Path(config["docs_dir"]))

