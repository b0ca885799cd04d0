"""Figures of FoolsGold's self-locking study (:mod:`flhelpers_lab.investigations.foolsgold_trap`).

:func:`plot_weight_shares`: one column per FoolsGold run (poisoned start k = 0, 2, 4, 8 and the
arXiv-era lr 0.001 / 3 epochs setting); top row the share of FoolsGold's weight held by the
attackers, the honest source holders and the other honest peers per round, bottom row Src-Acc
and ASR. Poisoned-start rounds are shaded.

:func:`plot_sweep_source_accuracy`: Src-Acc per round of every defense at each k, one panel a k.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from flhelpers.plots.style import ATTACKER_STYLE, defense_color, defense_label, require_columns, styled

SHARE_STYLES = {"share_attackers": ("attackers", ATTACKER_STYLE["color"]),
                "share_honest_source_holders": ("honest source holders", "#0072B2"),
                "share_honest_others": ("other honest peers", "#999999")}


def _shade(ax: plt.Axes, k: int) -> None:
    if k > 0:
        ax.axvspan(-0.5, k - 0.5, color="#D55E00", alpha=0.12, lw=0)


@styled
def plot_weight_shares(rounds: pd.DataFrame, defense: str = "foolsgold") -> Figure:
    """Weight shares and Src-Acc / ASR per round for each run of ``defense`` in ``rounds``
    (:func:`flhelpers_lab.investigations.foolsgold_trap.trap_rounds`)."""
    require_columns(rounds, ["label", "defense", "poisoned_rounds", "round", "source_accuracy",
                             "attack_success_rate"], "trap_rounds")
    runs = rounds[rounds["defense"] == defense]
    labels = list(dict.fromkeys(runs.sort_values(["lr", "poisoned_rounds"], ascending=[False, True])["label"]))
    if not labels:
        raise ValueError(f"no finished {defense} run in the table; run `python -m flhelpers_lab study foolsgold-trap` first.")
    fig, axes = plt.subplots(2, len(labels), figsize=(3.6 * len(labels), 6.2), sharex="col", squeeze=False)
    for col, label in enumerate(labels):
        g = runs[runs["label"] == label].sort_values("round")
        k = int(g["poisoned_rounds"].iloc[0])
        top, bottom = axes[0, col], axes[1, col]
        for column, (name, color) in SHARE_STYLES.items():
            if column in g and g[column].notna().any():
                top.plot(g["round"], g[column], color=color, label=name, lw=1.6)
        if "share_attackers" not in g or g["share_attackers"].isna().all():
            top.text(0.5, 0.5, "no weight record", ha="center", va="center", transform=top.transAxes)
        bottom.plot(g["round"], 100 * g["source_accuracy"], color="#009E73", label="Src-Acc", lw=1.6)
        bottom.plot(g["round"], 100 * g["attack_success_rate"], color=ATTACKER_STYLE["color"], ls="--",
                    label="ASR", lw=1.6)
        for ax in (top, bottom):
            _shade(ax, k)
            ax.grid(alpha=0.3)
        top.set_ylim(-0.02, 1.02)
        bottom.set_ylim(-2, 102)
        top.set_title(label.replace(f"{defense} ", ""), fontsize=11)
        bottom.set_xlabel("round")
    axes[0, 0].set_ylabel(f"share of {defense_label(defense)}'s weight")
    axes[1, 0].set_ylabel("%")
    axes[0, 0].legend(loc="upper right", fontsize=9)
    axes[1, 0].legend(loc="center right", fontsize=9)
    fig.suptitle(f"{defense_label(defense)}, MNIST, 40 % attackers (shaded: poisoned-start rounds)")
    fig.tight_layout()
    return fig


@styled
def plot_sweep_source_accuracy(rounds: pd.DataFrame) -> Figure:
    """Src-Acc per round, one panel per poisoned-start length k, one line per defense (lr 0.01 runs)."""
    require_columns(rounds, ["defense", "poisoned_rounds", "round", "source_accuracy", "lr", "local_epochs"],
                    "trap_rounds")
    sweep = rounds[(rounds["local_epochs"] == 1)]
    ks = sorted(sweep["poisoned_rounds"].unique())
    if not ks:
        raise ValueError("no finished sweep run in the table; run `python -m flhelpers_lab study foolsgold-trap` first.")
    fig, axes = plt.subplots(1, len(ks), figsize=(3.6 * len(ks), 3.4), sharey=True, squeeze=False)
    for ax, k in zip(axes[0], ks):
        for defense, g in sweep[sweep["poisoned_rounds"] == k].groupby("defense", sort=False):
            g = g.sort_values("round")
            ax.plot(g["round"], 100 * g["source_accuracy"], color=defense_color(defense),
                    label=defense_label(defense), lw=1.6)
        _shade(ax, int(k))
        ax.set_title(f"k = {k}")
        ax.set_xlabel("round")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("Src-Acc (%)")
    axes[0, -1].legend(loc="lower right", fontsize=9)
    fig.suptitle("MNIST-Mild, 40 % attackers: Src-Acc after k poisoned-start rounds")
    fig.tight_layout()
    return fig


__all__ = ["plot_sweep_source_accuracy", "plot_weight_shares"]
