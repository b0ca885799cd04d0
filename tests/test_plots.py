"""The gradient analyses (flhelpers.analysis.gradients) and the figures (flhelpers.plots)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from torch import nn  # noqa: E402

from flhelpers import plots  # noqa: E402
from flhelpers.analysis.gradients import (  # noqa: E402
    angle_degrees,
    compare_updates,
    gradient_views,
    magnitude_trace,
    peer_neuron_magnitudes,
    pca_2d,
    relevant_neurons,
)
from flhelpers.params import layout_of  # noqa: E402


class Tiny(nn.Module):
    """A 3 -> 3 -> outputs network: 9 + 3 hidden parameters, then the output layer (3 weights + 1 bias per neuron)."""

    def __init__(self, outputs: int = 3) -> None:
        super().__init__()
        self.hidden = nn.Linear(3, 3)
        self.out = nn.Linear(3, outputs)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------- analysis


def test_angle_degrees_hand_computed():
    assert angle_degrees(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])) == pytest.approx(90.0)
    assert angle_degrees(torch.tensor([1.0, 1.0]), torch.tensor([-3.0, -3.0])) == pytest.approx(180.0)
    assert angle_degrees(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(45.0)
    assert angle_degrees(torch.tensor([2.0, 3.0]), torch.tensor([4.0, 6.0])) == pytest.approx(0.0, abs=1e-6)
    assert angle_degrees(torch.zeros(2), torch.tensor([1.0, 0.0])) == 90.0


def test_neuron_magnitudes_are_gradient_row_norms():
    layout = layout_of(Tiny())
    assert layout.dim == 24 and layout.num_outputs == 3
    u = torch.zeros(1, 24)
    # output weight rows start at offset 12 (3 x 3), the bias at 21
    u[0, 12:15] = torch.tensor([3.0, 0.0, 0.0])   # neuron 0 weights
    u[0, 21] = -4.0                                # neuron 0 bias
    u[0, 18:21] = torch.tensor([0.0, 1.0, 0.0])   # neuron 2 weights
    mags = peer_neuron_magnitudes(u, layout, lr=0.5)    # gradient = -u / 0.5
    np.testing.assert_allclose(mags, [[10.0, 0.0, 2.0]])


def test_gradient_views_shapes_and_relevant_rows():
    layout = layout_of(Tiny())
    u = torch.arange(2 * 24, dtype=torch.float32).reshape(2, 24)
    views = gradient_views(u, layout, lr=1.0, source_class=2, target_class=0)
    assert views["whole update"].shape == (2, 24)
    assert views["output layer"].shape == (2, 12)
    rel = views["relevant neurons"]
    assert rel.shape == (2, 8)
    # neuron 2 (source): weights 18..20 and bias 23, negated
    assert rel[0, :4].tolist() == [-18.0, -19.0, -20.0, -23.0]
    assert rel[0, 4:].tolist() == [-12.0, -13.0, -14.0, -21.0]


def test_relevant_neurons_single_output_and_range():
    assert relevant_neurons(layout_of(Tiny(outputs=1)), 1, 0) == [0]
    with pytest.raises(ValueError, match="not an output neuron"):
        relevant_neurons(layout_of(Tiny()), 5, 0)


@settings(max_examples=25, deadline=None)
@given(st.integers(3, 8), st.integers(3, 12), st.integers(0, 2**16))
def test_pca_2d_matches_sklearn_up_to_sign(k, d, seed):
    x = np.random.default_rng(seed).normal(size=(k, d))
    ours, ratios = pca_2d(x)
    ref = PCA(n_components=2).fit(x)
    theirs = ref.transform(x)
    for j in range(2):
        sign = np.sign(ours[:, j] @ theirs[:, j]) or 1.0
        np.testing.assert_allclose(ours[:, j], sign * theirs[:, j], atol=1e-8)
    np.testing.assert_allclose(ratios, ref.explained_variance_ratio_, atol=1e-10)


def test_pca_2d_separates_two_groups_and_handles_rank_one():
    x = np.vstack([np.ones((4, 50)), -np.ones((3, 50))])
    scores, ratios = pca_2d(x)
    assert ratios[0] == pytest.approx(1.0) and ratios[1] == 0.0
    assert np.all(scores[:4, 1] == 0) and len(set(np.sign(scores[:, 0]))) == 2
    with pytest.raises(ValueError, match="K >= 2"):
        pca_2d(np.ones((1, 3)))
    # two points: scores +-a of equal size; the first of the tied largest is made positive
    for scale in (1.0, -2.0, 0.37):
        tied, _ = pca_2d(np.array([[1.0, 2.0], [-1.0, -2.0]]) * scale)
        assert tied[0, 0] > 0 and tied[1, 0] == pytest.approx(-tied[0, 0])


def test_compare_updates_table1_layout():
    layout = layout_of(Tiny())
    good = torch.zeros(24)
    bad = torch.zeros(24)
    good[0] = bad[0] = 100.0          # a shared hidden-layer coordinate dominates the whole update
    good[12], bad[12] = 1.0, -1.0     # neuron 0 (the source) flips direction
    good[15] = bad[15] = 1.0          # neuron 1 (non-relevant) is the same
    table = compare_updates(good, bad, layout, lr=1.0, source_class=0, target_class=2)
    assert list(table.columns) == ["whole update", "output layer", "relevant neurons", "non-relevant neurons"]
    assert table.loc["angle (degrees)", "relevant neurons"] == pytest.approx(180.0)
    assert table.loc["angle (degrees)", "non-relevant neurons"] == pytest.approx(0.0, abs=1e-6)
    assert table.loc["angle (degrees)", "output layer"] == pytest.approx(90.0)
    assert table.loc["angle (degrees)", "whole update"] < 2.0
    assert table.loc["magnitude (good)", "whole update"] == pytest.approx(math.sqrt(100**2 + 2))


def test_magnitude_trace_hand_computed():
    rows = []
    for r in (0, 1):
        for peer in (0, 1):
            for neuron, m in enumerate([1.0, 2.0, 3.0, 4.0]):
                rows.append({"round": r, "peer_id": peer, "is_attacker": peer == 1, "neuron": neuron,
                             "magnitude": m * (r + 1) + peer})
    trace = magnitude_trace(pd.DataFrame(rows), source_class=3, target_class=0)
    r0 = trace[trace["round"] == 0].set_index("neuron")["magnitude"]
    assert r0["source neuron (3)"] == pytest.approx(4.5)            # (4 + 5) / 2
    assert r0["target neuron (0)"] == pytest.approx(1.5)
    assert r0["non-relevant neurons (mean)"] == pytest.approx(3.0)  # neurons 1, 2: (2.5 + 3.5) / 2
    assert list(trace["neuron"].iloc[:3]) == ["source neuron (3)", "target neuron (0)",
                                              "non-relevant neurons (mean)"]
    r1 = trace[trace["round"] == 1].set_index("neuron")["magnitude"]
    assert r1["source neuron (3)"] == pytest.approx(8.5)            # (8 + 9) / 2


# ----------------------------------------------------------------------------- figures


def _summaries() -> pd.DataFrame:
    rows = []
    for d in ("lfighter", "fedavg", "median"):
        for r in (0.0, 0.3):
            rows.append({"benchmark": "mnist-iid", "defense": d, "attacker_ratio": r, "seed": 0,
                         "test_loss": 0.3 + r, "accuracy": 0.9 - r / 3, "source_accuracy": 0.9 - r,
                         "attack_success_rate": r / 2, "source_accuracy_cv": 0.1,
                         "detection_tpr": (0.9 if d == "lfighter" else 0.0) if r else None,
                         "detection_fpr": 0.05 if d == "lfighter" else 0.0,
                         "aggregation_time_per_round": {"fedavg": 1e-4, "median": 1e-3, "lfighter": 5e-3}[d]})
    return pd.DataFrame(rows)


def _labelled(ax) -> bool:
    return bool(ax.get_xlabel()) and bool(ax.get_ylabel()) and bool(ax.get_title())


def test_metric_bars_axes_legend_and_file(tmp_path):
    fig = plots.plot_metric_bars(_summaries(), "MNIST-iid (quick)")
    axes = [a for a in fig.axes if a.get_visible()]
    assert len(axes) == 4 and all(_labelled(a) for a in axes)
    assert "%" in axes[1].get_ylabel()
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_texts == ["FedAvg", "Median", "LFighter"]  # the paper's order
    # 3 defenses x 2 ratios bars per panel, heights are the data (Src-Acc in %)
    heights = sorted(p.get_height() for p in axes[2].patches)
    assert heights == pytest.approx(sorted([90.0, 60.0] * 3))
    path = plots.save_figure(fig, tmp_path, "mnist-iid", "robustness")
    assert path == tmp_path / "figures" / "mnist-iid" / "robustness.png"
    img = plt.imread(path)
    w, h = fig.get_size_inches() * plots.DPI
    assert img.shape[1] >= 0.8 * w and img.shape[0] >= 0.8 * h  # bbox_inches='tight' trims a little
    assert fig._suptitle is not None and "MNIST-iid" in fig._suptitle.get_text()


def test_save_figure_rejects_paths(tmp_path):
    fig = plots.plot_runtime(_summaries(), "x")
    for bad in ("../x", "a/b", ""):
        with pytest.raises(ValueError, match="plain file"):
            plots.save_figure(fig, tmp_path, bad, "name")


def test_runtime_is_log_scale_in_ms():
    fig = plots.plot_runtime(_summaries(), "MNIST-iid")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "ms" in ax.get_ylabel()
    assert [p.get_height() for p in ax.patches] == pytest.approx([0.1, 1.0, 5.0])


def test_detection_skips_tpr_without_attackers():
    fig = plots.plot_detection(_summaries(), "MNIST-iid")
    tpr, fpr = fig.axes[:2]
    assert [t.get_text() for t in tpr.get_xticklabels()] == ["30%"]
    assert [t.get_text() for t in fpr.get_xticklabels()] == ["0%", "30%"]
    assert max(p.get_height() for p in tpr.patches) == pytest.approx(90.0)
    assert _labelled(tpr) and _labelled(fpr)


def test_source_accuracy_rounds_one_line_per_defense():
    rows = [{"defense": d, "attacker_ratio": r, "round": t, "source_accuracy": 0.5 + 0.01 * t}
            for d in ("fedavg", "lfighter") for r in (0.0, 0.3) for t in range(5)]
    fig = plots.plot_source_accuracy_rounds(pd.DataFrame(rows), "MNIST-iid", 0.3)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 2 and _labelled(ax)
    assert list(ax.get_lines()[0].get_xdata()) == [1, 2, 3, 4, 5]  # rounds counted from 1
    with pytest.raises(ValueError, match="No runs at attacker ratio"):
        plots.plot_source_accuracy_rounds(pd.DataFrame(rows), "MNIST-iid", 0.5)


def test_pca_plot_marks_attackers_and_variance():
    rows = []
    for view in ("whole update", "output layer", "relevant neurons"):
        for peer in range(6):
            rows.append({"round": 4, "view": view, "peer_id": peer, "is_attacker": peer < 2,
                         "held_class": peer % 3, "pc1": float(peer), "pc2": 0.0,
                         "explained_pc1": 0.75, "explained_pc2": 0.2})
    fig = plots.plot_pca(pd.DataFrame(rows), "MNIST-iid")
    assert len(fig.axes) == 3
    for ax in fig.axes:
        assert ax.get_xlabel() == "PC1 (75 % of variance)" and _labelled(ax)
        sizes = sorted(len(c.get_offsets()) for c in ax.collections)
        assert sizes == [2, 4]  # attackers, honest
    assert "round 5" in fig._suptitle.get_text()
    fig = plots.plot_pca(pd.DataFrame(rows), "MNIST-Extreme", color_by_class=True)
    assert len(fig.axes[0].collections) == 4  # three held classes + attackers


def test_magnitudes_plot_log_axis():
    trace = pd.DataFrame({"round": [0, 0, 1, 1], "neuron": ["source neuron (7)", "non-relevant neurons (mean)"] * 2,
                          "magnitude": [2.0, 1.0, 1.5, 0.2]})
    fig = plots.plot_magnitudes({"MNIST-iid, 30 % attackers": trace}, "MNIST", log_scale=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and _labelled(ax)
    assert plots.plot_magnitudes({"x": trace}, "MNIST").axes[0].get_yscale() == "linear"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["source neuron (7)",
                                                                     "non-relevant neurons (mean)"]


def test_plots_refuse_empty_or_incomplete_frames():
    with pytest.raises(ValueError, match="needs columns"):
        plots.plot_metric_bars(pd.DataFrame({"defense": []}), "x")
    with pytest.raises(ValueError, match="empty frame"):
        plots.plot_runtime(_summaries().iloc[:0], "x")


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 6), st.integers(1, 9), st.integers(1, 4), st.floats(-3, 3).filter(lambda v: abs(v) > 0.1),
       st.integers(0, 2**16))
def test_pca_2d_chunked_and_scaled_equals_plain(k, d, chunk, scale, seed):
    """The Gram matrix summed over column blocks, with the -1/lr scale folded in, is the plain PCA."""
    x = torch.as_tensor(np.random.default_rng(seed).normal(size=(k, d)))
    ours, r1 = pca_2d(x, scale=scale, chunk=chunk)
    ref, r2 = pca_2d(scale * x)
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    np.testing.assert_allclose(r1, r2, atol=1e-12)


def test_show_saves_the_figure_and_frees_it_outside_a_notebook(tmp_path):
    import matplotlib.pyplot as plt

    from flhelpers import plots

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = plots.save_and_display(fig, tmp_path, "mnist-iid", "line")
    assert path == tmp_path / "figures" / "mnist-iid" / "line.png" and path.stat().st_size > 1000
    assert not plt.fignum_exists(fig.number)


def test_defense_heatmaps_annotate_src_acc_and_asr(tmp_path):
    from flhelpers.plots.heatmaps import defense_ratio_table

    rows = [dict(defense=d, attacker_ratio=r, source_accuracy=s, attack_success_rate=a, seed=seed)
            for d, r, s, a in (("lfighter", 0.3, 0.90, 0.02), ("fedavg", 0.0, 0.95, 0.01), ("fedavg", 0.3, 0.60, 0.30))
            for seed in (0, 1)]
    frame = pd.DataFrame(rows)
    table = defense_ratio_table(frame, "source_accuracy")
    assert list(table.index) == ["FedAvg", "LFighter"] and list(table.columns) == ["0 %", "30 %"]
    assert table.loc["FedAvg", "30 %"] == pytest.approx(60.0) and np.isnan(table.loc["LFighter", "0 %"])
    fig = plots.plot_defense_heatmaps(frame, "MNIST-iid")
    src, asr = [ax for ax in fig.axes if ax.get_title()]
    assert (src.get_title(), asr.get_title()) == ("Src-Acc (%)", "ASR (%)")
    for ax in (src, asr):
        assert ax.get_xlabel() == "attacker ratio" and ax.get_ylabel() == "defense"
        assert [t.get_text() for t in ax.get_yticklabels()] == ["FedAvg", "LFighter"]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0 %", "30 %"]
    assert sorted(t.get_text() for t in src.texts) == ["60.0", "90.0", "95.0", "not run"]  # the run-less cell
    assert sorted(t.get_text() for t in asr.texts) == ["1.0", "2.0", "30.0", "not run"]
    assert "Src-Acc and ASR" in fig._suptitle.get_text()
    path = plots.save_and_display(fig, tmp_path, "mnist-iid", "src_acc_asr_heatmap")
    assert path.is_file()
    with pytest.raises(ValueError, match="attack_success_rate"):
        plots.plot_defense_heatmaps(frame.drop(columns="attack_success_rate"), "x")


def test_the_old_show_name_warns_and_still_saves(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    with pytest.warns(DeprecationWarning, match="save_and_display"):
        path = plots.show(fig, tmp_path, "mnist-iid", "old_name")
    assert path.is_file()
