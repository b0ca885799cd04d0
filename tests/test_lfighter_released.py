"""LFighter(variant="released"): the authors' released Procedure 1 beside the paper's, by hand.

The released code (``najeebjebreel/LFighter``, ``aggregation.py``, class ``LFD``) scores a cluster of
``n_c`` of ``m`` peers as ``ds_c = n_c / m * (1 - mean_i min_j (CS_c - I)_ij)`` and keeps the larger;
the paper scores it as ``n_c / m * mean_i max_j theta_ij`` and drops the lower. The cases below are
computed by hand from angles on the unit circle.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flhelpers.config import ConfigError
from flhelpers.defenses.base import AggregationContext
from flhelpers.defenses.lfighter import (
    LFighter,
    cluster_scores,
    filter_mild,
    filter_released,
    released_dissimilarity,
    released_magnitudes,
    released_scores,
)
from flhelpers.params import ParamLayout


def unit(degrees: list[float]) -> np.ndarray:
    """Points on the unit circle at the given angles (degrees)."""
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1)


def layout(num_outputs: int, in_features: int, bias: bool = True) -> ParamLayout:
    """Two body values, then the output layer's weight and (optionally) bias."""
    w1 = 2 + num_outputs * in_features
    names = ("body.weight", "out.weight") + (("out.bias",) if bias else ())
    shapes = ((2,), (num_outputs, in_features)) + (((num_outputs,),) if bias else ())
    return ParamLayout(names=names, shapes=shapes, offsets=(0, 2) + ((w1,) if bias else ()),
                       output_weight=slice(2, w1), output_bias=slice(w1, w1 + num_outputs) if bias else None,
                       num_outputs=num_outputs)


def ctx(lay: ParamLayout, k: int, num_samples: list[float] | None = None) -> AggregationContext:
    return AggregationContext(layout=lay, num_classes=max(lay.num_outputs, 2), lr=0.01, seed=3,
                              num_samples=None if num_samples is None else torch.tensor(num_samples),
                              peer_ids=torch.arange(k))


# ----------------------------------------------------------------------------- the two scores by hand


def test_larger_tighter_cluster_the_paper_rejects_it_the_released_code_keeps_it() -> None:
    """The lock of CIFAR10-Mild: 6 honest peers pushing the same repair (0-5 degrees) against
    4 looser ones (80-125 degrees, all within 90 degrees of each other)."""
    x = np.vstack([unit([0, 1, 2, 3, 4, 5]), unit([80, 95, 110, 125])])
    labels = np.array([0] * 6 + [1] * 4)
    # paper: mean largest angle 4 degrees (5,4,3,3,4,5) and 37.5 degrees (45,30,30,45)
    scores, dns, _ = cluster_scores(x, labels)
    assert dns == pytest.approx([math.radians(4.0), math.radians(37.5)], rel=1e-9)
    assert scores == pytest.approx([0.6 * math.radians(4.0), 0.4 * math.radians(37.5)], rel=1e-9)
    # released: both clusters within 90 degrees, so each scores its size share
    r_scores, r_dis, sizes = released_scores(x, labels)
    assert sizes == [6, 4] and r_dis == pytest.approx([1.0, 1.0]) and r_scores == pytest.approx([0.6, 0.4])
    # through k-means: the paper rejects the six, the released code the four
    paper_bad, _ = filter_mild(x, seed=0)
    released_bad, info = filter_released(x)
    assert paper_bad.tolist() == [True] * 6 + [False] * 4
    assert released_bad.tolist() == [False] * 6 + [True] * 4
    assert sorted(info["cluster_sizes"]) == [4, 6]


def test_smaller_tighter_cluster_both_scores_reject_it() -> None:
    """Six loose peers (0-50 degrees) against four tight ones (120-123 degrees)."""
    x = np.vstack([unit([0, 10, 20, 30, 40, 50]), unit([120, 121, 122, 123])])
    labels = np.array([0] * 6 + [1] * 4)
    scores, _, _ = cluster_scores(x, labels)
    assert scores == pytest.approx([0.6 * math.radians(40.0), 0.4 * math.radians(2.5)], rel=1e-9)
    assert released_scores(x, labels)[0] == pytest.approx([0.6, 0.4])
    assert filter_mild(x, seed=0)[0].tolist() == [False] * 6 + [True] * 4
    assert filter_released(x)[0].tolist() == [False] * 6 + [True] * 4


def test_an_obtuse_pair_lets_the_released_score_prefer_the_smaller_cluster() -> None:
    """Three peers at 0, 170 and 85 degrees: cos(0, 170) < 0 enters the row minimum, so the
    dissimilarity exceeds 1 and the 3 of 7 outscore the 4 coherent peers."""
    small = unit([0, 170, 85])
    big = unit([200, 205, 210, 215])
    x = np.vstack([small, big])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    c170, c85 = math.cos(math.radians(170)), math.cos(math.radians(85))
    # rows of CS - I: [0, c170, c85], [c170, 0, c85], [c85, c85, 0]; their minima c170, c170, 0
    dis_small = 1 - (c170 + c170 + 0.0) / 3
    scores, dis, sizes = released_scores(x, labels)
    assert dis[0] == pytest.approx(dis_small, rel=1e-12) and dis_small > 1.6
    assert scores == pytest.approx([3 / 7 * dis_small, 4 / 7], rel=1e-12)
    assert scores[0] > scores[1]  # the smaller cluster is the released code's good one


def test_a_singleton_scores_one_over_m() -> None:
    x = np.vstack([unit([0, 5, 10, 15]), unit([180])])
    labels = np.array([0, 0, 0, 0, 1])
    assert released_dissimilarity(x[4:]) == 1.0
    assert released_scores(x, labels)[0] == pytest.approx([0.8, 0.2])
    bad, info = filter_released(x)
    assert bad.tolist() == [False] * 4 + [True]


def test_equal_scores_keep_cluster_zero() -> None:
    """Two coherent clusters of three: ``ds`` ties at 1/2 and the released code keeps cluster 0."""
    x = np.vstack([unit([0, 2, 4]), unit([90, 92, 94])])
    bad, info = filter_released(x)
    assert info["scores"] == pytest.approx([0.5, 0.5]) and info["bad_cluster"] == 1
    assert bad.sum() == 3
    assert bad.tolist() == (np.asarray(info["labels"]) == 1).tolist()


def test_released_magnitudes_sum_weight_norms_and_bias_separately() -> None:
    """Neuron a: weights (3, 4), bias 0 -> 5 either way. Neuron b: weights (3, 0), bias 3 -> released
    3 + 3 = 6, the paper's row norm sqrt(18) = 4.24: the two readings rank the neurons differently."""
    rows = np.array([[[3.0, 4.0, 0.0], [3.0, 0.0, 3.0]]])  # (K=1, C=2, in+1=3)
    assert released_magnitudes(rows).tolist() == pytest.approx([5.0, 6.0])
    assert np.linalg.norm(rows, axis=-1).sum(axis=0).tolist() == pytest.approx([5.0, math.sqrt(18)])
    assert released_magnitudes(rows[..., :2], has_bias=False).tolist() == pytest.approx([5.0, 3.0])


# ----------------------------------------------------------------------------- the rule


def _round(k_a: int, k_b: int, c: int, in_f: int, rng: np.random.Generator) -> tuple[ParamLayout, torch.Tensor]:
    """``k_a`` peers whose output weights point one way, ``k_b`` another; biases alternate +-100
    across all peers (a feature with the bias would split by parity)."""
    lay = layout(c, in_f)
    d = 2 + c * in_f + c
    u = torch.zeros(k_a + k_b, d, dtype=torch.float64)
    base_a, base_b = rng.normal(size=c * in_f), rng.normal(size=c * in_f)
    for i in range(k_a + k_b):
        base = base_a if i < k_a else base_b
        u[i, 2:2 + c * in_f] = torch.as_tensor(base + 0.01 * rng.normal(size=c * in_f))
        u[i, 2 + c * in_f:] = 100.0 if i % 2 else -100.0
    return lay, u


@pytest.mark.parametrize("c", [1, 2])
def test_one_or_two_outputs_cluster_the_whole_output_weights_without_bias(c: int) -> None:
    """The IMDB path: the features are all of the output layer's weights, never the bias."""
    lay, u = _round(5, 3, c, 4, np.random.default_rng(c))
    res = LFighter(variant="released")(u, ctx(lay, 8))
    assert (~res.accepted).tolist() == [False] * 5 + [True] * 3
    assert res.info["source_target"] == list(range(c)) and res.info["variant"] == "released"


def test_no_attacker_still_drops_a_cluster() -> None:
    """Ten honest peers, all alike up to noise: the released code drops one cluster anyway."""
    rng = np.random.default_rng(0)
    lay = layout(3, 4)
    base = rng.normal(size=2 + 12 + 3)
    u = torch.as_tensor(base + 0.05 * rng.normal(size=(10, base.size)))
    res = LFighter(variant="released")(u, ctx(lay, 10))
    assert 0 < int((~res.accepted).sum()) < 10


def test_the_step_is_the_unweighted_mean_of_the_kept_peers() -> None:
    x = np.vstack([unit([0, 1, 2, 3, 4, 5]), unit([80, 95, 110, 125])])
    lay = layout(3, 2, bias=False)
    u = torch.zeros(10, 2 + 6, dtype=torch.float64)
    u[:, 2:4] = -torch.as_tensor(x)  # dW = -u at neurons 0 ...
    u[:, 4:6] = -0.5 * torch.as_tensor(x)  # ... and 1, the two largest
    u[:, 0] = torch.arange(10, dtype=torch.float64)
    res = LFighter(variant="released")(u, ctx(lay, 10, num_samples=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]))
    assert res.accepted.tolist() == [True] * 6 + [False] * 4
    assert torch.allclose(res.update, u[:6].mean(dim=0))
    assert res.buffer_weights.tolist() == [1.0] * 6 + [0.0] * 4
    paper = LFighter()(u, ctx(lay, 10, num_samples=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]))
    assert paper.buffer_weights is None


def test_the_released_variant_refuses_the_papers_options() -> None:
    with pytest.raises(ValueError, match="variant must be one of"):
        LFighter(variant="authors")
    with pytest.raises(ValueError, match="no extreme branch"):
        LFighter(variant="released", distribution="extreme")
    with pytest.raises(ValueError, match="passes and split_by_own_top"):
        LFighter(variant="released", passes=2)
    assert repr(LFighter(variant="released")) == "LFighter(variant='released', n_init=10)"


def test_the_papers_variant_keeps_every_committed_run_id() -> None:
    """The default is the paper's text, so ``defense_kwargs={}`` (every committed run) hashes as
    before; the released variant is a different run."""
    from flhelpers.config import benchmark_config

    paper = benchmark_config("cifar10-mild", "medium", defense="lfighter", attacker_ratio=0.4)
    assert paper.run_id() == "e1a4592813ffbd8a"  # the committed CIFAR10-Mild LFighter run
    released = benchmark_config("cifar10-mild", "medium", defense="lfighter", attacker_ratio=0.4,
                                defense_kwargs={"variant": "released"})
    assert released.run_id() != paper.run_id()


def test_a_bad_variant_is_refused_before_training() -> None:
    from flhelpers.config import make_defense
    from flhelpers.config import benchmark_config

    cfg = benchmark_config("mnist-iid", "quick", defense="lfighter", defense_kwargs={"variant": "relased"})
    with pytest.raises(ConfigError, match="variant must be one of"):
        make_defense(cfg)


def test_a_released_run_finishes_on_real_data(tmp_path) -> None:
    """End to end on real MNIST at a tiny size: the engine takes the variant and records it."""
    import json
    import os

    from flhelpers.fl.engine import run_experiment
    from flhelpers.config import benchmark_config

    cfg = benchmark_config("mnist-mild", "quick", defense="lfighter", attacker_ratio=0.4, rounds=2,
                           num_peers=6, train_subset=1200, test_subset=500,
                           defense_kwargs={"variant": "released"})
    res = run_experiment(cfg, data_root=os.environ.get("FLHELPERS_DATA"), results_dir=tmp_path, progress=False)
    conf = json.loads((tmp_path / "runs" / cfg.run_id() / "config.json").read_text())
    assert conf["config"]["defense_kwargs"] == {"variant": "released"}
    m = res.metrics
    assert len(m) == 2 and ((m["tp"] + m["fp"]) >= 1).all()  # one cluster is dropped in every round


def test_list_names_both_variants_and_the_cli_selects_the_released_one(capsys) -> None:
    from flhelpers.cli import main, run_config, build_parser

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "variant=released" in out and "variant=paper" in out
    args = build_parser().parse_args(["run", "--benchmark", "mnist-iid", "--defense", "lfighter",
                                      "--defense-arg", "variant=released"])
    assert run_config(args).defense_kwargs == {"variant": "released"}


def test_lfighter_released_is_a_registered_rule_of_its_own() -> None:
    from flhelpers.config import benchmark_config, make_defense

    cfg = benchmark_config("cifar10-mild", "medium", defense="lfighter-released", attacker_ratio=0.4)
    rule = make_defense(cfg)
    assert rule.variant == "released" and rule.name == "lfighter-released"
    assert cfg.run_id() not in {benchmark_config("cifar10-mild", "medium", defense="lfighter",
                                                 attacker_ratio=0.4).run_id()}


def test_the_variants_table_puts_both_lfighters_and_their_cost_at_zero_side_by_side() -> None:
    import pandas as pd

    from flhelpers_lab.table3 import lfighter_variants

    def row(d: str, r: float, src: float, fpr: float) -> dict:
        return {"benchmark": "imdb", "defense": d, "attacker_ratio": r, "seed": 0, "source_accuracy": src,
                "attack_success_rate": 1 - src, "accuracy": 0.8, "detection_tpr": 1.0, "detection_fpr": fpr,
                "profile": "medium"}

    frame = pd.DataFrame([row("fedavg", 0.0, 0.82, 0.0), row("lfighter", 0.0, 0.81, 0.10),
                          row("lfighter-released", 0.0, 0.76, 0.45), row("lfighter", 0.4, 0.80, 0.0),
                          row("lfighter-released", 0.4, 0.79, 0.2)])
    v = lfighter_variants(frame).set_index(["benchmark", "variant"]).loc["imdb"]
    paper, released = v.loc["lfighter (paper's text)"], v.loc["lfighter (released code)"]
    assert released["cost at 0 %"] == pytest.approx(-6.0) and released["FPR at 0 %"] == pytest.approx(45.0)
    assert paper["cost at 0 %"] == pytest.approx(-1.0) and paper["Src-Acc"] == pytest.approx(80.0)
    assert released["paper Src-Acc"] == paper["paper Src-Acc"] == pytest.approx(85.44)
