"""Figures, one shared style: the paper's gradient views and robustness figures, and heatmaps.

``from flhelpers import plots`` gives the benchmark notebooks' figures and the house style:

* :mod:`~flhelpers.plots.style` - labels, colours, font sizes; :func:`save_figure`, :func:`save_and_display`;
* :mod:`~flhelpers.plots.paper` - the paper's figures (PCA views, magnitudes, robustness bars,
  stability, runtime, detection; its docstring maps each function to its figure of the paper);
* :mod:`~flhelpers.plots.heatmaps` - defense x attacker-ratio heatmaps of Src-Acc and ASR
  (beyond the paper);
"""

from __future__ import annotations

from flhelpers.plots.heatmaps import plot_defense_heatmaps
from flhelpers.plots.paper import (plot_detection, plot_magnitudes, plot_metric_bars, plot_pca, plot_runtime,
                                   plot_source_accuracy_rounds)
from flhelpers.plots.style import (BENCHMARK_TITLES, DEFENSE_COLORS, DEFENSE_LABELS, DPI, METRIC_LABELS, STYLE, close,
                                   defense_color, defense_label, ordered_defenses, save_and_display, save_figure, scale_title, show)

__all__ = ["BENCHMARK_TITLES", "DEFENSE_COLORS", "DEFENSE_LABELS", "DPI", "METRIC_LABELS", "STYLE", "close", "defense_color",
           "defense_label", "ordered_defenses", "plot_defense_heatmaps", "plot_detection", "plot_magnitudes",
           "plot_metric_bars", "plot_pca", "plot_runtime", "plot_source_accuracy_rounds", "save_figure",
           "save_and_display", "scale_title", "show"]
