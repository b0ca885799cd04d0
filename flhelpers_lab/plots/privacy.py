"""Figures of the privacy study: reconstruction grids (as the FFL README) and accuracy vs epsilon."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from flhelpers.privacy.victims import StudyResult


def _show(ax, img: torch.Tensor) -> None:
    img = img.detach().cpu().clamp(0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def plot_reconstruction_grid(study: StudyResult, peers: Sequence[int] | None = None,
                             victims: Sequence[str] | None = None, title: str | None = None,
                             scale: float = 1.3):
    """Rows: the true inputs, then one row per victim setting; columns: every image of ``peers``.

    With one image per peer this is the FFL README's first figure (inputs of k and j;
    reconstruction from the original gradients, FL; from the mixed gradients, FFL); with a
    batch, pass one peer to get its second figure. Each reconstruction is titled with its
    PSNR against its best-matching input.
    """
    import matplotlib.pyplot as plt

    from flhelpers.privacy.image_metrics import score_reconstructions

    k, n = study.truth.shape[:2]
    peers = list(range(k)) if peers is None else list(peers)
    victims = list(study.reconstructions) if victims is None else list(victims)
    unknown = [v for v in victims if v not in study.reconstructions]
    if unknown:
        raise ValueError(f"No reconstructions for {unknown}; the study has {list(study.reconstructions)}.")
    cols = [(p, i) for p in peers for i in range(n)]
    fig, axes = plt.subplots(1 + len(victims), len(cols), squeeze=False,
                             figsize=(scale * len(cols), scale * (1 + len(victims)) + 0.4))
    for c, (p, i) in enumerate(cols):
        _show(axes[0, c], study.truth[p, i])
        if i == 0 and len(peers) > 1:
            axes[0, c].set_title(f"peer {p}", fontsize=8)
    for r, v in enumerate(victims, start=1):
        scores = {p: score_reconstructions(study.reconstructions[v][p], study.truth[p]) for p in peers}
        for c, (p, i) in enumerate(cols):
            _show(axes[r, c], study.reconstructions[v][p, i])
            axes[r, c].set_title(f"{float(scores[p].psnr[i]):.1f} dB", fontsize=7)
    axes[0, 0].set_ylabel("input", fontsize=8)
    for r, v in enumerate(victims, start=1):
        axes[r, 0].set_ylabel(v, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_epsilon(frame: pd.DataFrame, accuracy: str = "final_accuracy", title: str | None = None):
    """Accuracy of DP-FedAvg runs against their epsilon (log scale), with the no-DP run as a line.

    ``frame`` has columns ``noise_multiplier``, ``epsilon`` (NaN for the run without DP) and
    ``accuracy`` (see :func:`flhelpers_lab.privacy.dp_accuracy_study`).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    dp = frame[frame["epsilon"].notna()].sort_values("epsilon")
    ax.plot(dp["epsilon"], dp[accuracy], "o-", label="DP-FedAvg")
    for _, row in dp.iterrows():
        ax.annotate(f"z={row['noise_multiplier']:g}", (row["epsilon"], row[accuracy]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    base = frame[frame["epsilon"].isna()]
    if len(base):
        ax.axhline(float(base[accuracy].iloc[0]), color="gray", ls="--", label="no DP")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("epsilon (delta = %g)" % float(frame["delta"].dropna().iloc[0]) if "delta" in frame and
                  frame["delta"].notna().any() else "epsilon")
    ax.set_ylabel(accuracy.replace("_", " "))
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
