"""Figures say what a reader cannot otherwise tell: 0 from not applicable, not run from blank."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from flhelpers.plots.heatmaps import plot_defense_heatmaps  # noqa: E402
from flhelpers.plots.paper import plot_detection, plot_magnitudes, plot_runtime  # noqa: E402


def _grid() -> pd.DataFrame:
    rows = [("fedavg", 0.0, 0.9, 0.01, 0.0, 0.0), ("fedavg", 0.3, 0.7, 0.2, 0.0, 0.0),
            ("lfighter", 0.0, 0.9, 0.01, float("nan"), 0.1), ("lfighter", 0.3, 0.88, 0.02, 0.9, 0.05),
            ("median", 0.3, 0.75, 0.15, 0.0, 0.0)]
    return pd.DataFrame([{"defense": d, "attacker_ratio": r, "source_accuracy": s, "attack_success_rate": a,
                          "detection_tpr": t, "detection_fpr": f, "aggregation_time_per_round": 0.002}
                         for d, r, s, a, t, f in rows])


def test_detection_legend_marks_rules_that_reject_no_one_and_both_panels_show_zero() -> None:
    fig = plot_detection(_grid(), "MNIST-iid")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(lab.startswith("FedAvg") and lab.endswith("(rejects no one)") for lab in labels)
    assert not any(lab.startswith("LFighter") and "rejects no one" in lab for lab in labels)
    for ax in fig.axes[:2]:
        assert 0.0 in list(ax.get_yticks())
    plt.close(fig)


def test_heatmap_marks_cells_not_run() -> None:
    fig = plot_defense_heatmaps(_grid(), "MNIST-iid")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("not run") == 2  # the median at 0 %, in both panels
    plt.close(fig)


def test_single_output_magnitudes_are_not_called_relevant_and_non_relevant() -> None:
    trace = pd.DataFrame({"round": [0, 1], "neuron": ["output", "output"], "magnitude": [1.0, 0.5]})
    fig = plot_magnitudes({"IMDB, 40 % attackers": trace}, "IMDB")
    assert fig._suptitle.get_text() == "IMDB: gradient magnitudes of its single output neuron"
    plt.close(fig)


def test_runtime_log_axis_has_more_than_two_labelled_ticks() -> None:
    grid = _grid().assign(aggregation_time_per_round=[0.001, 0.002, 0.012, 0.02, 0.004])
    fig = plot_runtime(grid, "MNIST-iid")
    ax = fig.axes[0]
    fig.canvas.draw()
    lo, hi = ax.get_ylim()
    shown = [t for t in ax.get_yticks() if lo <= t <= hi]
    assert len(shown) > 2
    assert "\n" in ax.get_title() and "\n" in ax.get_ylabel()
    plt.close(fig)
