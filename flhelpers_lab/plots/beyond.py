"""The Beyond notebook's figures: defense x attack heatmaps beside the no-attack value,
LFighter's detection per attack, and the camouflage trade-off.

Each takes a table of :mod:`flhelpers_lab.beyond` (values in %) and draws it with the house
style; cells not run read "not run".
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from flhelpers.plots.style import defense_label, mark_not_run, styled

#: (table kind, title, colour map, high is good)
PANELS = {"src": ("Src-Acc (%)", "YlGn"), "asr": ("ASR (%)", "OrRd"), "backdoor": ("backdoor ASR (%)", "OrRd")}


@styled
def plot_attack_heatmap(table: pd.DataFrame, kind: str, title: str) -> Figure:
    """One annotated heatmap, defenses (rows) x attacks (columns, the first "no attack"), 0-100 %.

    ``table`` is :func:`flhelpers_lab.beyond.attack_table` of ``kind`` (``src``, ``asr`` or
    ``backdoor``); a white line sets the no-attack column apart.
    """
    if kind not in PANELS:
        raise ValueError(f"kind must be one of {', '.join(PANELS)}, got {kind!r}.")
    label, cmap = PANELS[kind]
    shown = table.copy()
    shown.index = [defense_label(d) for d in shown.index]
    rows, cols = shown.shape
    fig, ax = plt.subplots(figsize=(2.5 + 1.25 * cols, 2.8 + 0.45 * rows))
    sns.heatmap(shown, ax=ax, annot=True, fmt=".1f", vmin=0.0, vmax=100.0, cmap=cmap, linewidths=0.5,
                linecolor="white", cbar_kws={"label": label})
    mark_not_run(ax, shown)
    ax.axvline(1, color="white", linewidth=4)
    ax.set_title(f"{title}: {label}")
    ax.set_xlabel("attack")
    ax.set_ylabel("defense")
    ax.tick_params(axis="x", rotation=30)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
    ax.tick_params(axis="y", rotation=0)
    fig.tight_layout()
    return fig


@styled
def plot_lfighter_detection(table: pd.DataFrame, title: str) -> Figure:
    """LFighter's TPR and FPR (%) per attack: :func:`flhelpers_lab.beyond.lfighter_detection`."""
    frame = table.reset_index()
    frame["run"] = frame["attack"] + " (" + frame["attacker ratio"] + ")"
    long = frame.melt(id_vars="run", value_vars=["TPR (%)", "FPR (%)"], var_name="rate", value_name="%")
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.45 * len(frame)))
    sns.barplot(long, y="run", x="%", hue="rate", ax=ax, orient="h", palette=["#2b8cbe", "#e34a33"])
    ax.set_xlim(0, 100)
    ax.set_ylabel("")
    ax.set_title(f"{title}: LFighter's detection per attack")
    fig.tight_layout()
    return fig


@styled
def plot_camouflage_curve(curve: pd.DataFrame, title: str) -> Figure:
    """The camouflage trade-off: (a) ASR and Src-Acc against ``lam``, (b) ASR against LFighter's TPR,
    each point labelled with its ``lam`` (:func:`flhelpers_lab.beyond.camouflage_curve`)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    lam = curve.index.to_numpy()
    for name, colour in (("ASR (%)", "#e34a33"), ("Src-Acc (%)", "#31a354"), ("TPR (%)", "#2b8cbe")):
        left.plot(lam, curve[name], marker="o", color=colour, label=name.replace(" (%)", "") +
                  (" (LFighter detection)" if name.startswith("TPR") else ""))
    left.set_xlabel("lam (weight of the clean update on the output layer)")
    left.set_ylabel("%")
    left.set_ylim(-2, 102)
    left.legend(fontsize=8)
    left.set_title("(a) against lam")
    right.plot(curve["TPR (%)"], curve["ASR (%)"], marker="o", color="#555555")
    for x, y, l in zip(curve["TPR (%)"], curve["ASR (%)"], lam):
        right.annotate(f"lam {l:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    right.set_xlabel("LFighter detection TPR (%)")
    right.set_ylabel("ASR (%)")
    right.set_xlim(-2, 102)
    right.set_title("(b) ASR against detection")
    fig.suptitle(f"{title}: camouflaged flippers against LFighter")
    fig.tight_layout()
    return fig


__all__ = ["PANELS", "plot_attack_heatmap", "plot_camouflage_curve", "plot_lfighter_detection"]
