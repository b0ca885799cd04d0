"""Figures, one shared style: the paper's, the related systems', the privacy study's, and heatmaps.

``from flhelpers import plots`` gives the benchmark notebooks' figures and the house style
(:mod:`~flhelpers.plots.style`: labels, colours, :func:`save_figure`, :func:`show`):

=====================================  ==========================  ==================
function                               input                       paper
=====================================  ==========================  ==================
:func:`plot_pca`                       ``GradientCapture.pca``     Figs 1, 2, 4, 5, 6
:func:`plot_magnitudes`                :func:`magnitude_trace`     Fig 3
:func:`plot_metric_bars`               :func:`run_grid` summaries  Figs 7-12
:func:`plot_source_accuracy_rounds`    :func:`grid_rounds`         Fig 13
:func:`plot_runtime`                   summaries                   Fig 14
:func:`plot_detection`                 summaries                   (beyond the paper)
:func:`plot_defense_heatmaps`          summaries                   (beyond the paper)
=====================================  ==========================  ==================

The Related and Privacy notebooks' figures are :mod:`~flhelpers.plots.related` and
:mod:`~flhelpers.plots.privacy`.
"""

from __future__ import annotations

from flhelpers.plots.heatmaps import plot_defense_heatmaps
from flhelpers.plots.paper import (plot_detection, plot_magnitudes, plot_metric_bars, plot_pca, plot_runtime,
                                   plot_source_accuracy_rounds)
from flhelpers.plots.style import (BENCHMARK_TITLES, DEFENSE_COLORS, DEFENSE_LABELS, DPI, METRIC_LABELS, STYLE, close,
                                   defense_color, defense_label, ordered_defenses, save_figure, scale_title, show)

__all__ = ["BENCHMARK_TITLES", "DEFENSE_COLORS", "DEFENSE_LABELS", "DPI", "METRIC_LABELS", "STYLE", "close", "defense_color",
           "defense_label", "ordered_defenses", "plot_defense_heatmaps", "plot_detection", "plot_magnitudes",
           "plot_metric_bars", "plot_pca", "plot_runtime", "plot_source_accuracy_rounds", "save_figure",
           "scale_title", "show"]
