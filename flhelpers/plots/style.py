"""The house style of every figure: labels, colours and font sizes, and how a figure is saved and shown.

Figures of every study (:mod:`flhelpers.plots.paper`, :mod:`~flhelpers_lab.plots.related`,
:mod:`~flhelpers_lab.plots.privacy`, :mod:`~flhelpers.plots.heatmaps`) draw under :data:`STYLE`
with the paper's names and colours of the defenses; :func:`save_figure` writes a PNG under
``<results_dir>/figures/<benchmark>/``, :func:`show` also displays it in a notebook and frees it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from flhelpers.config import ExperimentConfig

DPI = 120
#: font sizes that stay readable when a 1200-pixel-wide PNG is shown at README width
STYLE = {"font.size": 11, "axes.titlesize": 12, "figure.titlesize": 13, "legend.fontsize": 10}
_F = TypeVar("_F", bound=Callable[..., Figure])


def styled(func: _F) -> _F:
    """Draw under :data:`STYLE` without changing the caller's matplotlib settings."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return func(*args, **kwargs)
    return wrapper  # type: ignore[return-value]

DEFENSE_LABELS: dict[str, str] = {
    "fedavg": "FedAvg", "median": "Median", "repeated-median": "Repeated median",
    "trimmed-mean": "Trimmed mean", "krum": "Krum", "multi-krum": "Multi-Krum", "foolsgold": "FoolsGold",
    "lfighter": "LFighter", "tolpegin": "Tolpegin et al.", "flame": "FLAME",
}
_ORDER = tuple(DEFENSE_LABELS)
# colour-blind-safe (Okabe-Ito and tab10 extras); LFighter black so it stands out
DEFENSE_COLORS: dict[str, str] = {
    "fedavg": "#E69F00", "median": "#56B4E9", "repeated-median": "#009E73", "trimmed-mean": "#F0E442",
    "krum": "#8c564b", "multi-krum": "#0072B2", "foolsgold": "#D55E00", "lfighter": "#000000",
    "tolpegin": "#CC79A7", "flame": "#7f7f7f",
}
METRIC_LABELS: dict[str, str] = {
    "test_loss": "test loss (TE, mean cross-entropy)",
    "accuracy": "overall accuracy, All-Acc (%)",
    "source_accuracy": "source-class accuracy, Src-Acc (%)",
    "attack_success_rate": "attack success rate, ASR (%)",
}
BENCHMARK_TITLES: dict[str, str] = {
    "mnist-iid": "MNIST-iid", "mnist-mild": "MNIST-Mild", "mnist-extreme": "MNIST-Extreme",
    "cifar10-iid": "CIFAR10-iid", "cifar10-mild": "CIFAR10-Mild", "imdb": "IMDB",
}
PERCENT_METRICS = {"accuracy", "source_accuracy", "attack_success_rate", "detection_tpr", "detection_fpr"}
HONEST_STYLE = dict(color="#0072B2", marker="o", label="honest peer")
ATTACKER_STYLE = dict(color="#D55E00", marker="X", label="attacker")


def defense_label(name: str) -> str:
    """The defense's name as the paper writes it (``multi-krum`` -> ``Multi-Krum``)."""
    return DEFENSE_LABELS.get(name, name)


def defense_color(name: str) -> str:
    return DEFENSE_COLORS.get(name, "#999999")


def ordered_defenses(names: Sequence[str]) -> list[str]:
    """Unique defense names in the paper's order, unknown ones last (alphabetical)."""
    rank = {d: i for i, d in enumerate(_ORDER)}
    return sorted(set(names), key=lambda d: (rank.get(d, len(rank)), d))


def scale_title(cfg: "ExperimentConfig") -> str:
    """A figure title that names the benchmark and its scale, e.g. ``MNIST-iid (quick: 20 peers, 20 rounds)``."""
    name = BENCHMARK_TITLES.get(cfg.benchmark, cfg.benchmark)
    return f"{name} ({cfg.profile}: {cfg.num_peers} peers, {cfg.rounds} rounds)"


def save_figure(fig: Figure, results_dir: str | Path, benchmark: str, name: str, dpi: int = DPI) -> Path:
    """Write ``fig`` to ``<results_dir>/figures/<benchmark>/<name>.png`` and return the path."""
    for label, value in (("benchmark", benchmark), ("name", name)):
        if not value or "/" in value or "\\" in value or value.startswith("."):
            raise ValueError(f"{label} {value!r} must be a plain file or folder name (no '/', not hidden).")
    folder = Path(results_dir) / "figures" / benchmark
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    return path


def require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} needs columns {missing}; got {list(frame.columns)}.")
    if frame.empty:
        raise ValueError(f"{what} got an empty frame: run the grid (or the capture) first.")


def close(fig: Figure) -> None:
    """Release a figure's memory (scripts drawing many figures)."""
    plt.close(fig)


def save_and_display(fig: Figure, results_dir: str | Path, benchmark: str, name: str) -> Path:
    """:func:`save_figure` (a PNG under ``<results_dir>/figures/<benchmark>/``), then display the figure
    in the running notebook (so the executed notebook carries it) and release it; outside IPython
    only save and release. Returns the PNG's path."""
    path = save_figure(fig, results_dir, benchmark, name)
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(fig)
    finally:
        close(fig)
    return path


def show(fig: Figure, results_dir: str | Path, benchmark: str, name: str) -> Path:
    """Deprecated name of :func:`save_and_display` (it also writes a PNG, which "show" did not say)."""
    import warnings

    warnings.warn("plots.show is now plots.save_and_display (it writes a PNG too)", DeprecationWarning, stacklevel=2)
    return save_and_display(fig, results_dir, benchmark, name)


def mark_not_run(ax: "plt.Axes", table: pd.DataFrame) -> None:
    """Write "not run" in every NaN cell of an annotated heatmap of ``table`` on ``ax`` (a blank
    cell would read as missing data, or as 0)."""
    missing = table.isna().to_numpy()
    for i in range(missing.shape[0]):
        for j in range(missing.shape[1]):
            if missing[i, j]:
                ax.text(j + 0.5, i + 0.5, "not run", ha="center", va="center", fontsize=8, color="#777777")


__all__ = ["ATTACKER_STYLE", "BENCHMARK_TITLES", "DEFENSE_COLORS", "DEFENSE_LABELS", "DPI", "HONEST_STYLE", "PERCENT_METRICS",
           "METRIC_LABELS", "STYLE", "close", "defense_color", "defense_label", "mark_not_run", "ordered_defenses",
           "require_columns", "save_figure", "scale_title", "show", "styled"]
