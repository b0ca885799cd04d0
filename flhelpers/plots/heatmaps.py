"""Defense x attacker-ratio heatmaps of a benchmark's grid: Src-Acc and ASR side by side, annotated.

The paper shows its grid as bars (Figs 7-12) and one table at 40 % (Table 3); a heatmap shows
every cell of the grid at once, with its value written in it, so a reader sees at a glance where
each rule holds the source class and where the attack wins. Cells the grid did not run stay
blank. Drawn with seaborn's :func:`seaborn.heatmap`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from flhelpers.plots.style import METRIC_LABELS, defense_label, mark_not_run, require_columns, styled
from flhelpers.results.tables import metric_table

#: (metric, short name, colour map): high Src-Acc is good (green), high ASR is bad (red)
HEATMAP_PANELS = (("source_accuracy", "Src-Acc (%)", "YlGn"), ("attack_success_rate", "ASR (%)", "OrRd"))


def defense_ratio_table(summaries: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``metric`` in percent as a defenses x attacker ratios table (mean over seeds), with the
    defenses as the paper writes them and the ratios as ``"30 %"``."""
    table = metric_table(summaries, metric, scale=100.0)
    table.index = [defense_label(d) for d in table.index]
    table.columns = [f"{r:.0%}".replace("%", " %") for r in table.columns]
    return table


@styled
def plot_defense_heatmaps(summaries: pd.DataFrame, title: str) -> Figure:
    """Two annotated heatmaps, defense (rows) x attacker ratio (columns): Src-Acc % and ASR %.

    ``summaries`` are :func:`flhelpers.fl.grid.run_grid`'s rows of one benchmark (columns
    ``defense``, ``attacker_ratio``, ``source_accuracy``, ``attack_success_rate``). Both colour
    scales span 0-100 % so that figures of different benchmarks compare. A cell of a
    combination the grid did not run reads "not run".
    """
    require_columns(summaries, ["defense", "attacker_ratio", *(m for m, _, _ in HEATMAP_PANELS)],
                    "plot_defense_heatmaps")
    tables = [defense_ratio_table(summaries, metric) for metric, _, _ in HEATMAP_PANELS]
    rows, cols = tables[0].shape
    fig, axes = plt.subplots(1, 2, figsize=(2.0 + 1.1 * cols * 2 + 2.5, 1.0 + 0.45 * rows), squeeze=False)
    for ax, table, (metric, short, cmap) in zip(axes[0], tables, HEATMAP_PANELS):
        sns.heatmap(table, ax=ax, annot=True, fmt=".1f", vmin=0.0, vmax=100.0, cmap=cmap, linewidths=0.5,
                    linecolor="white", cbar_kws={"label": METRIC_LABELS.get(metric, short)})
        mark_not_run(ax, table)
        ax.set_title(short)
        ax.set_xlabel("attacker ratio")
        ax.set_ylabel("defense")
        ax.tick_params(axis="y", rotation=0)
    fig.suptitle(f"{title}: Src-Acc and ASR per defense and attacker ratio")
    fig.tight_layout()
    return fig


__all__ = ["HEATMAP_PANELS", "defense_ratio_table", "plot_defense_heatmaps"]
