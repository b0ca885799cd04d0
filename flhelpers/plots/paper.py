"""The paper's figures, from any run's results (tidy frames in, matplotlib figures out).

Every function returns a :class:`matplotlib.figure.Figure` with a title, axis labels with units
and a legend; :func:`save_figure` writes it as PNG under ``<results_dir>/figures/<benchmark>/``.
Nothing here picks a backend: notebooks draw inline, scripts and tests get matplotlib's default
(Agg when there is no display).

=====================================  ==========================  ==================
function                               input                       paper
=====================================  ==========================  ==================
:func:`plot_pca`                       ``GradientCapture.pca``     Figs 1, 2, 4, 5, 6
:func:`plot_magnitudes`                :func:`magnitude_trace`     Fig 3
:func:`plot_metric_bars`               :func:`run_grid` summaries  Figs 7-12
:func:`plot_source_accuracy_rounds`    :func:`grid_rounds`         Fig 13
:func:`plot_runtime`                   summaries                   Fig 14
:func:`plot_detection`                 summaries                   (beyond the paper)
=====================================  ==========================  ==================
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, MultipleLocator, NullFormatter

from flhelpers.plots.style import (ATTACKER_STYLE, HONEST_STYLE, METRIC_LABELS, PERCENT_METRICS, require_columns, styled,
                                   defense_color, defense_label, ordered_defenses)


# --------------------------------------------------------------------------- Figs 1, 2, 4, 5, 6


@styled
def plot_pca(pca: pd.DataFrame, title: str, round_: int | None = None, color_by_class: bool = False,
             views: Sequence[str] = ("whole update", "output layer", "relevant neurons")) -> Figure:
    """First two principal components of the peers' gradients, one panel per view.

    Honest peers are blue circles, attackers orange crosses. With ``color_by_class`` honest peers
    are coloured by the class they hold (Fig 6, the extreme non-iid split). ``round_`` picks
    the captured round (default: the last).
    """
    require_columns(pca, ["round", "view", "is_attacker", "pc1", "pc2"], "plot_pca")
    round_ = int(pca["round"].max()) if round_ is None else round_
    sel = pca[pca["round"] == round_]
    if sel.empty:
        raise ValueError(f"No PCA captured at round {round_}; captured rounds: {sorted(pca['round'].unique())}.")
    fig, axes = plt.subplots(1, len(views), figsize=(4.6 * len(views), 4.4), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for letter, ax, view in zip("abcdefgh", axes[0], views):
        part = sel[sel["view"] == view]
        att = part["is_attacker"].astype(bool).to_numpy()
        honest = part[~att]
        if color_by_class and "held_class" in part:
            for c in sorted(honest["held_class"].unique()):
                h = honest[honest["held_class"] == c]
                ax.scatter(h["pc1"], h["pc2"], s=36, marker="o", color=cmap(int(c) % 10), alpha=0.85,
                           edgecolor="white", linewidth=0.5, label=f"honest, class {int(c)}")
        else:
            ax.scatter(honest["pc1"], honest["pc2"], s=36, alpha=0.8, edgecolor="white", linewidth=0.5,
                       **HONEST_STYLE)
        bad = part[att]
        ax.scatter(bad["pc1"], bad["pc2"], s=70, alpha=0.95, edgecolor="black", linewidth=0.5,
                   **{**ATTACKER_STYLE, "label": f"attacker ({len(bad)})"})
        e1, e2 = (100 * float(part[c].iloc[0]) if len(part) and c in part else float("nan")
                  for c in ("explained_pc1", "explained_pc2"))
        ax.set_xlabel(f"PC1 ({e1:.0f} % of variance)")
        ax.set_ylabel(f"PC2 ({e2:.0f} % of variance)")
        ax.set_title(f"({letter}) {view}")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(style="sci", scilimits=(-3, 4))
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False,
               bbox_to_anchor=(0.5, -0.02 if len(labels) <= 6 else -0.08))
    fig.suptitle(f"{title}: peers' gradients at round {round_ + 1}, first two principal components")
    fig.tight_layout(rect=(0, 0.07 if len(labels) <= 6 else 0.12, 1, 1))
    return fig


# --------------------------------------------------------------------------------------- Fig 3


@styled
def plot_magnitudes(traces: Mapping[str, pd.DataFrame], title: str, log_scale: bool = False) -> Figure:
    """Gradient magnitude of the source, target and non-relevant neurons over rounds (Fig 3).

    ``traces`` maps a panel title (e.g. ``"MNIST-iid, 30 % attackers"``) to a
    :func:`flhelpers.analysis.gradients.magnitude_trace` frame.
    """
    if not traces:
        raise ValueError("plot_magnitudes needs at least one trace.")
    fig, axes = plt.subplots(1, len(traces), figsize=(5.6 * len(traces), 4.2), squeeze=False)
    styles = {"source": ("#D55E00", "-", "o"), "target": ("#0072B2", "-", "s"),
              "non-relevant": ("#7f7f7f", "--", None), "output": ("#000000", "-", "o")}
    for ax, (name, trace) in zip(axes[0], traces.items()):
        require_columns(trace, ["round", "neuron", "magnitude"], "plot_magnitudes")
        for neuron in trace["neuron"].unique():
            part = trace[trace["neuron"] == neuron]
            color, ls, marker = styles.get(str(neuron).split(" ")[0], ("#999999", "-", None))
            ax.plot(part["round"] + 1, part["magnitude"], ls, color=color, marker=marker, markersize=4,
                    label=str(neuron))
        ax.set_xlabel("training round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("mean gradient norm ||g|| per neuron (L2)")
        if log_scale:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    kinds = {str(n).split(" ")[0] for trace in traces.values() for n in trace["neuron"].unique()}
    what = ("its single output neuron" if kinds <= {"output"}  # IMDB: one logit, no source/target rows
            else "relevant and non-relevant output neurons")
    fig.suptitle(f"{title}: gradient magnitudes of {what}")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------- Figs 7-12


def _grouped_bars(ax: plt.Axes, summaries: pd.DataFrame, metric: str, defenses: list[str],
                  ratios: list[float]) -> None:
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    width = 0.8 / max(len(defenses), 1)
    x = np.arange(len(ratios))
    for i, d in enumerate(defenses):
        vals = []
        for r in ratios:
            sel = summaries[(summaries["defense"] == d) & np.isclose(summaries["attacker_ratio"], r)]
            vals.append(scale * pd.to_numeric(sel[metric], errors="coerce").mean() if len(sel) else np.nan)
        ax.bar(x + (i - (len(defenses) - 1) / 2) * width, vals, width, color=defense_color(d),
               edgecolor="black", linewidth=0.4, label=defense_label(d))
    ax.set_xticks(x, [f"{r:.0%}" for r in ratios])
    ax.set_xlabel("attackers (% of peers)")
    ax.grid(axis="y", alpha=0.3)


@styled
def plot_metric_bars(summaries: pd.DataFrame, title: str,
                     metrics: Sequence[str] = ("test_loss", "accuracy", "source_accuracy",
                                               "attack_success_rate")) -> Figure:
    """Test loss, All-Acc, Src-Acc and ASR per attacker ratio, one bar per defense (Figs 7-12).

    Values are the mean over the last 10 rounds (the paper's convention) and over seeds.
    """
    require_columns(summaries, ["defense", "attacker_ratio", *metrics], "plot_metric_bars")
    defenses = ordered_defenses(summaries["defense"])
    ratios = sorted(summaries["attacker_ratio"].unique())
    cols = 2 if len(metrics) > 1 else 1
    rows = int(np.ceil(len(metrics) / cols))
    width = max(5.5, 1.0 + 0.32 * len(defenses) * len(ratios))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 3.6 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        _grouped_bars(ax, summaries, metric, defenses, ratios)
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_title(METRIC_LABELS.get(metric, metric).split(",")[0].split(" (")[0])
        if metric in PERCENT_METRICS:
            ax.set_ylim(0, 105)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), frameon=False)
    fig.suptitle(f"{title}: robustness to label flipping (mean of the last 10 rounds)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


# --------------------------------------------------------------------------------------- Fig 13


@styled
def plot_source_accuracy_rounds(rounds: pd.DataFrame, title: str, ratio: float) -> Figure:
    """Src-Acc per round of each defense at one attacker ratio (Fig 13)."""
    require_columns(rounds, ["defense", "attacker_ratio", "round", "source_accuracy"], "plot_source_accuracy_rounds")
    sel = rounds[np.isclose(rounds["attacker_ratio"], ratio)]
    if sel.empty:
        raise ValueError(f"No runs at attacker ratio {ratio}; the grid has "
                         f"{sorted(rounds['attacker_ratio'].unique())}.")
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for d in ordered_defenses(sel["defense"]):
        part = sel[sel["defense"] == d].groupby("round", as_index=False)["source_accuracy"].mean()
        ax.plot(part["round"] + 1, 100 * part["source_accuracy"], marker="o", markersize=3,
                color=defense_color(d), linewidth=2.2 if d == "lfighter" else 1.5, label=defense_label(d))
    ax.set_xlabel("training round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("source-class accuracy, Src-Acc (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(f"{title}: stability of Src-Acc over training, {ratio:.0%} attackers")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------- Fig 14


@styled
def plot_runtime(summaries: pd.DataFrame, title: str) -> Figure:
    """Aggregation time per round of each defense, milliseconds on a log scale (Fig 14).

    The mean over every run of the defense in ``summaries`` (all ratios and seeds).
    """
    require_columns(summaries, ["defense", "aggregation_time_per_round"], "plot_runtime")
    defenses = ordered_defenses(summaries["defense"])
    times = [1000 * pd.to_numeric(summaries.loc[summaries["defense"] == d, "aggregation_time_per_round"],
                                  errors="coerce").mean() for d in defenses]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(defenses) + 2), 4.2))
    bars = ax.bar([defense_label(d) for d in defenses], times, color=[defense_color(d) for d in defenses],
                  edgecolor="black", linewidth=0.4)
    for bar, t in zip(bars, times):
        if np.isfinite(t):
            ax.annotate(f"{t:.3g}", (bar.get_x() + bar.get_width() / 2, t), ha="center", va="bottom",
                        fontsize=9, xytext=(0, 2), textcoords="offset points")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 1-2-5 ticks, not only decades
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("aggregation time per round\n(ms, log scale)")
    ax.set_xlabel("defense")
    ax.tick_params(axis="x", rotation=20)
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.set_title(f"{title}:\ncost of aggregation on this machine", fontsize=11)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ detection quality


@styled
def plot_detection(summaries: pd.DataFrame, title: str) -> Figure:
    """Each defense's true and false positive rates (rejected = positive) per attacker ratio.

    TPR (attackers rejected) is undefined without attackers, so its panel skips ratio 0.
    FedAvg, the median and the trimmed mean reject nobody (0 % everywhere): they draw no bar, so
    the legend says "(rejects no one)" beside them, telling 0 from a rate that was not measured.
    """
    require_columns(summaries, ["defense", "attacker_ratio", "detection_tpr", "detection_fpr"], "plot_detection")
    defenses = ordered_defenses(summaries["defense"])
    ratios = sorted(summaries["attacker_ratio"].unique())
    attacked = [r for r in ratios if r > 0]
    width = max(5.5, 1.0 + 0.32 * len(defenses) * len(ratios))
    fig, axes = plt.subplots(1, 2, figsize=(2 * width, 3.9))
    if attacked:
        _grouped_bars(axes[0], summaries, "detection_tpr", defenses, attacked)
    axes[0].set_title("attackers rejected (true positive rate)")
    axes[0].set_ylabel("TPR (% of attackers' updates)")
    _grouped_bars(axes[1], summaries, "detection_fpr", defenses, ratios)
    axes[1].set_title("honest peers rejected (false positive rate)")
    axes[1].set_ylabel("FPR (% of honest updates)")
    for ax in axes:
        ax.set_ylim(0, 105)
        ax.yaxis.set_major_locator(MultipleLocator(20))  # both panels show 0, 20, ..., 100
    handles, labels = axes[1].get_legend_handles_labels()
    rates = summaries[["detection_tpr", "detection_fpr"]].apply(pd.to_numeric, errors="coerce")
    for k, d in enumerate(defenses):
        mine = rates[summaries["defense"] == d].to_numpy(dtype=float)
        if np.isfinite(mine).any() and np.nanmax(mine) == 0:
            labels[k] = f"{labels[k]} (rejects no one)"
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), frameon=False)
    fig.suptitle(f"{title}: detection quality over all rounds")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


__all__ = ["plot_detection", "plot_magnitudes", "plot_metric_bars", "plot_pca", "plot_runtime",
           "plot_source_accuracy_rounds"]
