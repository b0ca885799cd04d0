"""Tables of a grid's summaries: defenses x attacker ratios, paired cells, Markdown, files.

:func:`metric_table` pivots one metric (mean over seeds, defenses in the paper's order),
:func:`pair_table` joins two of them into ``"a / b"`` cells, :func:`to_markdown` and
:func:`write_table` write them beside the figures (``<results_dir>/tables/<name>.csv`` and ``.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from flhelpers.defenses import PAPER_DEFENSES
from flhelpers.results import atomic_write_text


def paper_order(values: Iterable[str]) -> list[str]:
    order = {d: i for i, d in enumerate((*PAPER_DEFENSES, "lfighter-released", "krum", "tolpegin", "flame"))}
    return sorted(set(values), key=lambda d: (order.get(d, len(order)), d))


def metric_table(summaries: pd.DataFrame, metric: str, index: str = "defense",
                 columns: str = "attacker_ratio", scale: float = 1.0) -> pd.DataFrame:
    """``metric`` as a defenses x attacker ratios table, the mean over seeds, times ``scale``
    (100 for percentages). Defenses in the paper's order."""
    for col in (metric, index, columns):
        if col not in summaries.columns:
            raise ValueError(f"No column {col!r} in the summaries; columns: {list(summaries.columns)}.")
    values = pd.to_numeric(summaries[metric], errors="coerce") * scale
    table = summaries.assign(_v=values).pivot_table(index=index, columns=columns, values="_v",
                                                    aggfunc="mean", dropna=False)
    if index == "defense":
        table = table.reindex(paper_order(table.index))
    table.columns.name = columns
    return table


def pair_table(first: pd.DataFrame, second: pd.DataFrame, digits: int = 1, missing: str = "not run") -> pd.DataFrame:
    """Two same-shaped tables as one of ``"a / b"`` strings (e.g. Src-Acc % / ASR %); NaN -> ``missing``."""
    if first.shape != second.shape or not first.index.equals(second.index):
        raise ValueError("pair_table needs two tables with the same rows and columns.")
    out = first.copy().astype(object)
    for i in range(first.shape[0]):
        for j in range(first.shape[1]):
            a, b = first.iat[i, j], second.iat[i, j]
            out.iat[i, j] = missing if pd.isna(a) or pd.isna(b) else f"{a:.{digits}f} / {b:.{digits}f}"
    return out


def to_markdown(frame: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (index as the first column; NaN as 'n/a';
    attacker-ratio columns as percentages)."""
    def fmt(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "n/a" if not np.isfinite(v) else f"{v:.{digits}f}"
        return str(v)

    if frame.columns.name == "attacker_ratio":
        columns = [f"{c:.0%}" for c in frame.columns]
    else:
        columns = [fmt(c) if not isinstance(c, str) else c for c in frame.columns]
    head = [str(frame.index.name or "")] + columns
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for idx, row in frame.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [fmt(v) for v in row.tolist()]) + " |")
    return "\n".join(lines) + "\n"


def write_table(frame: pd.DataFrame, results_dir: str | Path, name: str, digits: int = 2) -> tuple[Path, Path]:
    """Write ``frame`` to ``<results_dir>/tables/<name>.csv`` and ``.md``; return both paths."""
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"Table name {name!r} must be a plain file name without folders.")
    folder = Path(results_dir) / "tables"
    csv_path, md_path = folder / f"{name}.csv", folder / f"{name}.md"
    atomic_write_text(csv_path, frame.to_csv())
    atomic_write_text(md_path, to_markdown(frame, digits))
    return csv_path, md_path


__all__ = ["metric_table", "paper_order", "pair_table", "to_markdown", "write_table"]
