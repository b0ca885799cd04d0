"""The documentation site's generator and extensions (``flhelpers_lab.docsite``, ``.docsite_markup``).

``make docs`` builds the whole site strictly (CI runs it); these tests pin the pieces that keep it
honest, in a second or two: the API pages come from walking the packages (no list by hand), links
into the committed store and committed run ids point at the site's copies, the docstrings' reST
becomes Markdown, and formulas become MathML. The extensions' tests need the ``docs`` extra.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flhelpers_lab import docsite, docsite_hooks

ROOT = Path(__file__).resolve().parents[1]


def test_the_api_pages_are_every_public_module_found_on_disk():
    modules = docsite.public_modules("flhelpers")
    on_disk = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in (ROOT / "flhelpers").rglob("*.py")}
    assert set(modules) == {m for m in on_disk if not any(part.startswith("_") for part in m.split("."))}
    assert {"flhelpers", "flhelpers.defenses.lfighter", "flhelpers.config"} <= set(modules)
    assert "flhelpers.defenses._robust_utils" not in modules and "flhelpers.__main__" not in modules
    assert "flhelpers_lab.docsite" in docsite.public_modules("flhelpers_lab")


def test_links_into_the_store_and_the_repository(tmp_path):
    # a repository in tmp_path: a committed store, and the site's generated copies under docs/
    root, docs = tmp_path, tmp_path / "docs"
    store = root / "results" / "reference" / "medium"
    for path in (store / "table3.md", store / "last-batch" / "summary.md", store / "runs" / "0123456789abcdef" / "summary.json",
                 root / "flhelpers" / "presets.py", docs / "results" / "table3.md", docs / "store" / "last-batch" / "summary.md",
                 docs / "findings" / "other.md"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    page, up = "findings/example.md", "../../results/reference/medium"

    def link(target):
        return docsite_hooks.map_link(target, page, docs, root)

    # the committed Table 3 -> the generated results page; a study's summary (or its folder) -> the site's copy
    assert link(f"{up}/table3.md") == ("../results/table3.md", None)
    assert link(f"{up}/last-batch/summary.md#what") == ("../store/last-batch/summary.md#what", None)
    assert link(f"{up}/last-batch/") == ("../store/last-batch/summary.md", None)
    # written relative to docs/ instead of the page: read as meant
    assert link("../results/reference/medium/table3.md") == ("../results/table3.md", None)
    # a run's folder -> its row of the runs page
    assert link(f"{up}/runs/0123456789abcdef/") == ("../store/runs.md#0123456789abcdef", None)
    # a repository file the site does not hold -> its path; an address or a page of docs/ -> unchanged
    assert link("../../flhelpers/presets.py") == (None, "flhelpers/presets.py")
    assert link("https://example.org/x") == ("https://example.org/x", None)
    assert link("other.md#x") == ("other.md#x", None)
    # a path that exists nowhere is left for mkdocs --strict to report
    assert link("../../no/such/file.md") == ("../../no/such/file.md", None)


def test_pages_link_committed_run_ids_and_repository_files():
    run_id = next(iter(docsite.committed_runs()))
    text = (f"run `{run_id}`, unknown `0123456789abcdef`, [the presets](../../flhelpers/presets.py)\n"
            f"```\n`{run_id}`\n```\n")
    out = docsite_hooks.rewrite_links(text, "findings/example.md", docsite.DOCS)
    assert f"[`{run_id}`](../store/runs.md#{run_id})" in out
    assert "unknown `0123456789abcdef`" in out
    assert "the presets (`flhelpers/presets.py`)" in out
    assert out.endswith(f"```\n`{run_id}`\n```\n")  # code blocks are left alone


def test_the_presets_tables_come_from_the_presets():
    from flhelpers.config import BENCHMARKS, PROFILES, benchmark_config

    tables = docsite.presets_tables()
    assert tables.count("| benchmark |") == len(PROFILES)
    for name in BENCHMARKS:
        assert f"| `{name}` |" in tables
    assert f"{benchmark_config('mnist-extreme', 'medium').rounds} x 1" in tables
    assert "5 (dog) -> 3 (cat)" in tables


def test_docstrings_become_markdown():
    markup = pytest.importorskip("flhelpers_lab.docsite_markup")
    text = "Intro::\n\n    a -> b\n    c\n\nAfter.\n\n>>> 1 + 1\n2\n"
    out = markup.convert_blocks(text)
    assert out.startswith("Intro:\n\n```text\na -> b\nc\n```\n")
    assert "```pycon\n>>> 1 + 1\n2\n```" in out
    grouped = markup.split_grouped_entries("Args:\n    a, b: the pair\n        more.\n    c: one.\n")
    assert grouped == "Args:\n    a: the pair\n        more.\n    b: the pair\n        more.\n    c: one.\n"


def test_roles_resolve_to_documented_objects_or_become_code():
    markup = pytest.importorskip("flhelpers_lab.docsite_markup")
    import griffe

    package = griffe.load("flhelpers", search_paths=[str(ROOT)])
    lfighter = package["defenses.lfighter"]
    out = markup.convert_roles(":meth:`AggregationContext.gradients`, :func:`concat_features`, "
                               ":class:`~flhelpers.defenses.base.Defense`, :func:`torch.func.vmap`", lfighter)
    assert "[`AggregationContext.gradients`][flhelpers.defenses.base.AggregationContext.gradients]" in out
    assert "[`concat_features`][flhelpers.defenses.lfighter_procedures.concat_features]" in out
    assert "[`Defense`][flhelpers.defenses.base.Defense]" in out
    assert out.endswith("`torch.func.vmap`")


def test_formulas_become_mathml():
    pytest.importorskip("latex2mathml")
    markdown = pytest.importorskip("markdown")
    html = markdown.markdown("Cost $O(K^2)$, not `$x$`.\n\n$$\n\\Delta = \\frac{1}{K}\n$$\n",
                             extensions=["flhelpers_lab.docsite_markup"])
    assert html.count("<math") == 2 and 'display="block"' in html and "<code>$x$</code>" in html
    assert "$" not in html.replace("<code>$x$</code>", "")
