"""Figures of the Related notebook, in the style of :mod:`flhelpers.plots`.

=====================================  ==========================================
function                               seed figure
=====================================  ==========================================
:func:`plot_ffl`                       FFL: accuracy under Gaussian noise, source
                                       accuracy under label flipping, vs attackers
:func:`plot_elimination_detection`     user elimination: detection accuracy, F1
:func:`plot_elimination_effect`        user elimination: accuracy, attacked-class
                                       recall, with and without the defense
:func:`plot_krum_ipm`                  Krum under IPM: accuracy (mean of the last
                                       rounds) and rounds Krum picked an
                                       attacker, vs attackers
=====================================  ==========================================

Inputs are the tidy tables of :mod:`flhelpers_lab.related`; every function returns a
matplotlib figure with a title, axis labels with units and a legend.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from flhelpers.plots.style import STYLE, defense_color, defense_label

_LABELS = {"ffl": "FFL", "user-elimination": "user elimination"}
_COLORS = {"ffl": "#000000"}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _label(name: str) -> str:
    if name.startswith("user elimination"):
        return name
    return _LABELS.get(name, defense_label(name))


def _color(name: str, i: int) -> str:
    if name in _COLORS:
        return _COLORS[name]
    if name.startswith("user elimination"):
        return ("#009E73", "#CC79A7", "#0072B2")[i % 3]
    return defense_color(name)


_ORIGINAL_STYLE = ("#009E73", "D")
_OURS_STYLES = (("#0072B2", "^"), ("#CC79A7", "s"), ("#56B4E9", "v"))


def _epsilon(label: str) -> float:
    """The budget in a user-elimination label ``"... (eps=10)"`` (inf when absent)."""
    match = re.search(r"eps=([0-9.eE+-]+)", label)
    return float(match.group(1)) if match else math.inf


def _styles(names: Sequence[str]) -> dict[str, dict[str, object]]:
    """Line styles that do not depend on which lines a figure holds: the original user-elimination
    rule green diamonds; our rule by budget, largest first (blue triangles, filled; smaller
    budgets hollow, drawn on top, so that identical points stay visible); other rules in
    their defense colour with markers in order."""
    ours = sorted((n for n in names if n.startswith("user elimination") and "original" not in n),
                  key=_epsilon, reverse=True)
    out: dict[str, dict[str, object]] = {}
    for i, name in enumerate(names):
        if name.startswith("user elimination") and "original" in name:
            color, marker = _ORIGINAL_STYLE
            out[name] = dict(color=color, marker=marker)
        elif name in ours:
            k = ours.index(name)
            color, marker = _OURS_STYLES[k % len(_OURS_STYLES)]
            out[name] = dict(color=color, marker=marker, zorder=3 + k,
                             **({} if k == 0 else dict(fillstyle="none", markersize=9, markeredgewidth=1.6)))
        else:
            out[name] = dict(color=_color(name, i), marker=_MARKERS[i % len(_MARKERS)])
    return out


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} needs the column(s) {missing}; pass the table from flhelpers_lab.related.")


def _lines(ax: plt.Axes, frame: pd.DataFrame, x: str, y: str, by: str, scale: float = 100.0) -> None:
    """One line per ``by`` value: the mean of ``y`` over seeds at each ``x``."""
    groups = list(frame.groupby(by, sort=False))
    styles = _styles([name for name, _ in groups])
    for name, g in groups:
        g = g.groupby(x, as_index=False)[y].mean().sort_values(x)
        ax.plot(g[x], g[y] * scale, label=_label(name), linewidth=1.6, **styles[name])
    ax.grid(alpha=0.3)


def plot_ffl(curves: pd.DataFrame, title: str) -> Figure:
    """FFL's figures: All-Acc under Gaussian noise, Src-Acc under label flipping, vs attackers."""
    _require(curves, ["attack", "defense", "attackers", "accuracy", "source_accuracy"], "plot_ffl")
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
        for ax, attack, metric, name in ((axes[0], "gaussian-noise", "accuracy", "overall accuracy (%)"),
                                         (axes[1], "label_flip", "source_accuracy", "source-class accuracy (%)")):
            _lines(ax, curves[curves["attack"] == attack], "attackers", metric, "defense")
            ax.set_xlabel("number of attackers")
            ax.set_ylabel(name)
            ax.set_ylim(0, 102)
            ax.set_title("Gaussian-noise attack" if attack == "gaussian-noise" else "label-flipping attack")
        axes[1].legend(loc="lower left")
        fig.suptitle(f"{title}: FL rules vs FFL")
        fig.tight_layout()
    return fig


def plot_elimination_detection(table: pd.DataFrame, title: str) -> Figure:
    """Detection accuracy and F1 of the eliminated peers (all rounds) vs the attacker ratio."""
    _require(table, ["label", "attacker_ratio", "detection_accuracy", "detection_f1"], "plot_elimination_detection")
    rows = table[(table["defense"] == "user-elimination") & (table["attacker_ratio"] > 0)].copy()
    rows["percent"] = rows["attacker_ratio"] * 100
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
        for ax, metric, name in ((axes[0], "detection_accuracy", "detection accuracy (%)"),
                                 (axes[1], "detection_f1", "detection F1 (%)")):
            _lines(ax, rows, "percent", metric, "label")
            ax.set_xlabel("attackers (% of peers)")
            ax.set_ylabel(name)
            ax.set_ylim(-2, 102)
        axes[0].set_title("share of peers classified correctly")
        axes[1].set_title("F1 of eliminated = attacker (NaN: nobody eliminated)")
        axes[0].legend(loc="lower left")
        fig.suptitle(f"{title}: loss-based user elimination")
        fig.tight_layout()
    return fig


def plot_elimination_effect(table: pd.DataFrame, title: str) -> Figure:
    """Overall accuracy and recall of the attacked class, with and without elimination."""
    _require(table, ["label", "attacker_ratio", "accuracy", "source_recall"], "plot_elimination_effect")
    rows = table[table["attacker_ratio"] > 0].copy()
    rows["percent"] = rows["attacker_ratio"] * 100
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
        for ax, metric, name in ((axes[0], "accuracy", "overall accuracy (%)"),
                                 (axes[1], "source_recall", "recall of the attacked class (%)")):
            _lines(ax, rows, "percent", metric, "label")
            ax.set_xlabel("attackers (% of peers)")
            ax.set_ylabel(name)
            ax.set_ylim(0, 102)
        axes[1].legend(loc="lower left")
        fig.suptitle(f"{title}: with and without user elimination (mean of the final rounds)")
        fig.tight_layout()
    return fig


def plot_krum_ipm(table: pd.DataFrame, title: str) -> Figure:
    """Krum under IPM vs the number of attackers per round (means over seeds): the accuracy
    averaged over the last rounds (``accuracy``, the table's ``averaged_rounds``; one bad round
    does not decide it), and the share of attacked rounds in which Krum selected an attacker's
    (poisoned) update."""
    _require(table, ["attackers", "accuracy", "selected_while_attacking", "attacking_rounds"], "plot_krum_ipm")
    rows = table.groupby("attackers", as_index=False)[
        ["accuracy", "selected_while_attacking", "attacking_rounds"]].mean().sort_values("attackers")
    last = sorted({int(v) for v in table["averaged_rounds"]}) if "averaged_rounds" in table else []
    span = f"mean of the last {last[0]} rounds" if len(last) == 1 else "mean of the last rounds"
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
        axes[0].plot(rows["attackers"], rows["accuracy"] * 100, marker="o", color=defense_color("krum"),
                     label="Krum")
        axes[0].set_ylabel("accuracy (%)")
        axes[0].set_ylim(0, 102)
        axes[0].set_title(f"test accuracy, {span}")
        share = rows["selected_while_attacking"] / rows["attacking_rounds"].where(rows["attacking_rounds"] > 0) * 100
        axes[1].bar(rows["attackers"], share.fillna(0), color=defense_color("krum"), edgecolor="black", linewidth=0.4,
                    label="Krum")
        axes[1].set_ylabel("rounds Krum picked an attacker (%)")
        axes[1].set_ylim(0, 105)
        axes[1].set_title("attacked rounds whose selected update was an attacker's")
        for ax in axes:
            ax.set_xlabel("attackers among 25 peers per round")
            ax.grid(alpha=0.3)
            ax.legend(loc="best")
        fig.suptitle(f"{title}: Krum under the inner-product-manipulation attack")
        fig.tight_layout()
    return fig


__all__ = ["plot_elimination_detection", "plot_elimination_effect", "plot_ffl", "plot_krum_ipm"]
