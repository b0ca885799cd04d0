"""Two extensions for the documentation site (mkdocs.yml names both; only mkdocs imports this).

* :class:`SphinxMarkup`, a griffe extension: the docstrings are written for readers of the code,
  with Sphinx roles (``:func:`name```), reST literal blocks (a paragraph ending in ``::``) and
  doctest lines. On the site a role becomes a link to the object's API entry when it names a
  documented object of ``flhelpers`` or ``flhelpers_lab`` (resolved in the docstring's scope as
  Python resolves the name), else its name in code; a literal block becomes a fenced block; a run
  of ``>>>`` lines becomes a ``pycon`` block.
* :func:`makeExtension`, a Python-Markdown extension (``flhelpers_lab.docsite_markup``): ``$...$``
  and ``$$...$$`` become MathML with ``latex2mathml`` when the page is built, so formulas read as
  formulas in any current browser, offline and without a script.
"""

from __future__ import annotations

import re
from typing import Any

import griffe
from markdown import Extension
from markdown.inlinepatterns import InlineProcessor
from markdown.preprocessors import Preprocessor

PACKAGES = ("flhelpers", "flhelpers_lab")
ROLE = re.compile(r":(?:py:)?(?:func|meth|class|attr|mod|data|obj|exc|const):`(~?)([^`<]+?)(?:\s*<([^>`]+)>)?`")


# -- docstrings ------------------------------------------------------------------------------

def _lookup(scope: Any, dotted: str) -> Any:
    current = scope
    for part in dotted.split("."):
        try:
            members = current.all_members if current.is_class else current.members
            current = members[part]
        except (KeyError, AttributeError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return current


def _canonical(obj: Any) -> Any:
    try:
        return obj.final_target if obj.is_alias else obj
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _documented(obj: Any) -> bool:
    """Whether the site renders ``obj`` (a public object of a public module of our packages)."""
    parts = obj.path.split(".")
    return parts[0] in PACKAGES and not any(p.startswith("_") for p in parts)


def resolve(name: str, where: Any) -> str | None:
    """The path of the documented object ``name`` means in the docstring of ``where``, if any."""
    name = name.strip().rstrip("()")
    scopes = []
    scope = where
    while scope is not None:
        scopes.append(scope)
        scope = scope.parent
    for scope in scopes:
        found = _lookup(scope, name)
        if found is not None:
            break
    else:
        top = name.split(".")[0]
        collection = where.modules_collection
        found = None
        if top in PACKAGES and top in collection.members:
            found = _lookup(collection.members[top], name.split(".", 1)[1]) if "." in name else collection.members[top]
    target = _canonical(found) if found is not None else None
    return target.path if target is not None and _documented(target) else None


def convert_roles(text: str, where: Any) -> str:
    def role(m: re.Match) -> str:
        tilde, shown, explicit = m.group(1), m.group(2).strip(), m.group(3)
        target = explicit or shown
        label = shown.split(".")[-1] if tilde and not explicit else shown
        path = resolve(target.lstrip("~"), where)
        label = label.lstrip("~")
        return f"[`{label}`][{path}]" if path else f"`{label}`"

    return ROLE.sub(role, text)


def convert_blocks(text: str) -> str:
    """reST literal blocks (``text::`` then an indented block) and doctest runs as fenced blocks."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    fenced = False
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.rstrip().endswith("::") and line.strip() != "::" and not line.lstrip().startswith(">>>"):
            indent = len(line) - len(line.lstrip())
            out.append(line.rstrip()[:-1])
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            block = []
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            if block:
                cut = min(len(b) - len(b.lstrip()) for b in block if b.strip())
                pad = " " * _content_indent(line, indent)
                out += ["", pad + "```text"] + [pad + b[cut:] if b.strip() else "" for b in block] + [pad + "```", ""]
                i = j
                continue
            i += 1
            continue
        if not fenced and line.lstrip().startswith(">>> "):
            indent = len(line) - len(line.lstrip())
            pad = " " * indent
            block = []
            while i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) >= indent:
                block.append(lines[i][indent:])
                i += 1
            if out and out[-1].strip():
                out.append("")
            out += [pad + "```pycon"] + [pad + b for b in block] + [pad + "```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _content_indent(line: str, indent: int) -> int:
    """Where a list item's content starts (its continuation's indentation); else ``indent``."""
    m = re.match(r"(\s*)([*+-]|\d+\.)\s+", line)
    return len(m.group(0)) if m else indent


SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Attributes|Other Parameters|Keyword Args):\s*$")


def split_grouped_entries(text: str) -> str:
    """``a, b: text`` in an ``Args:``-like section (one description for several names) becomes one
    entry per name, each with the description, as the Google style the site parses requires."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        section = SECTION.match(lines[i])
        out.append(lines[i])
        i += 1
        if not section:
            continue
        entry_indent = None
        while i < len(lines):
            line = lines[i]
            if line.strip() and len(line) - len(line.lstrip()) <= len(section.group(1)):
                break
            if entry_indent is None and line.strip():
                entry_indent = len(line) - len(line.lstrip())
            grouped = re.match(r"^(\s*)(\w+(?:\s*,\s*\w+)+)(\s*\([^)]*\))?:(.*)$", line)
            if grouped and len(grouped.group(1)) == entry_indent:
                j = i + 1
                while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > entry_indent):
                    if not lines[j].strip() and (j + 1 >= len(lines) or not lines[j + 1].strip()
                                                 or len(lines[j + 1]) - len(lines[j + 1].lstrip()) <= entry_indent):
                        break
                    j += 1
                rest = lines[i + 1:j]
                for name in re.split(r"\s*,\s*", grouped.group(2)):
                    out.append(f"{grouped.group(1)}{name}{grouped.group(3) or ''}:{grouped.group(4)}")
                    out.extend(rest)
                i = j
                continue
            out.append(line)
            i += 1
    return "\n".join(out)


class SphinxMarkup(griffe.Extension):
    """Rewrites every docstring of a loaded package for Markdown (see the module's docstring)."""

    def on_package(self, *, pkg: Any, **kwargs: Any) -> None:
        self._walk(pkg)

    def _walk(self, obj: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = split_grouped_entries(convert_blocks(convert_roles(obj.docstring.value, obj)))
        for member in list(obj.members.values()):
            if not member.is_alias:
                self._walk(member)


# -- formulas --------------------------------------------------------------------------------

def to_mathml(tex: str, display: bool) -> str:
    from latex2mathml.converter import convert

    return convert(tex.strip(), display="block" if display else "inline")


class _InlineMath(InlineProcessor):
    def handleMatch(self, m: re.Match, data: str) -> tuple[str, int, int]:  # noqa: N802 (Python-Markdown's name)
        return self.md.htmlStash.store(to_mathml(m.group(1), display=False)), m.start(0), m.end(0)


class _BlockMath(Preprocessor):
    """``$$`` alone on a line, the formula, ``$$``: one placeholder line at the same indentation."""

    def run(self, lines: list[str]) -> list[str]:
        out, i, fenced = [], 0, False
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(("```", "~~~")):
                fenced = not fenced
            if not fenced and stripped.startswith("$$"):
                indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
                body = [stripped[2:]]
                if stripped.endswith("$$") and len(stripped) > 4:
                    body = [stripped[2:-2]]
                    j = i
                else:
                    j = i + 1
                    while j < len(lines) and not lines[j].strip().endswith("$$"):
                        body.append(lines[j].strip())
                        j += 1
                    if j < len(lines):
                        body.append(lines[j].strip()[:-2])
                out.append(indent + self.md.htmlStash.store(to_mathml("\n".join(body), display=True)))
                i = j + 1
                continue
            out.append(lines[i])
            i += 1
        return out


class MathExtension(Extension):
    def extendMarkdown(self, md: Any) -> None:  # noqa: N802 (Python-Markdown's name)
        md.preprocessors.register(_BlockMath(md), "flhelpers-math-block", 27)
        # after code spans (190), before backslash escapes (180): TeX's backslashes reach the converter
        md.inlinePatterns.register(_InlineMath(r"(?<![\\$\w])\$(?=[^\s$])(.+?)(?<=[^\s\\])\$(?![\w$])", md),
                                   "flhelpers-math-inline", 185)


def makeExtension(**kwargs: Any) -> MathExtension:  # noqa: N802 (Python-Markdown's name)
    return MathExtension(**kwargs)
