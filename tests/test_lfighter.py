"""LFighter (Algorithm 1, Procedures 1 and 2) on hand-built label-flipping rounds.

The synthetic rounds follow the paper's Section 5.1 analysis: for an example of class ``c`` the
output-layer error is ``delta = p(c) - onehot(label)``, and the gradient row of output neuron ``i``
is ``delta_i * [a, 1]`` (activation of the layer below, then 1 for the bias). A peer's gradient is
the class-share-weighted sum over its data; an attacker labels its source-class examples with the
target class. Updates are ``-lr * gradient``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from flhelpers.defenses.base import AggregationContext
from flhelpers.defenses.lfighter import (
    LFighter,
    cluster_inverse_density,
    cluster_scores,
    concat_features,
    detect_distribution,
    extreme_features,
    filter_extreme,
    filter_mild,
    pairwise_angles,
    split_by_own_top,
    top_two,
)
from flhelpers.params import ParamLayout

HIDDEN = 6
LR = 0.01
SRC, TGT = 7, 1


# ----------------------------------------------------------------------------- builders


def make_layout(num_outputs: int, in_features: int, bias: bool = True) -> ParamLayout:
    """A body tensor of HIDDEN values, then the output layer's weight and (optionally) bias."""
    w0 = HIDDEN
    w1 = w0 + num_outputs * in_features
    names = ("body.weight", "out.weight") + (("out.bias",) if bias else ())
    shapes = ((HIDDEN,), (num_outputs, in_features)) + (((num_outputs,),) if bias else ())
    offsets = (0, w0) + ((w1,) if bias else ())
    return ParamLayout(
        names=names,
        shapes=shapes,
        offsets=offsets,
        output_weight=slice(w0, w1),
        output_bias=slice(w1, w1 + num_outputs) if bias else None,
        num_outputs=num_outputs,
    )


def pack_updates(rows: np.ndarray, rng: np.random.Generator, lr: float = LR) -> torch.Tensor:
    """Gradient rows (K, C, in+1) -> updates (K, D) = -lr * gradient; the body gets small noise."""
    k = rows.shape[0]
    body = rng.normal(0.0, 0.01, (k, HIDDEN))
    grads = np.concatenate([body, rows[:, :, :-1].reshape(k, -1), rows[:, :, -1]], axis=1)
    return torch.tensor(-lr * grads, dtype=torch.float32)


def context(layout: ParamLayout, seed: int = 0, num_samples: np.ndarray | None = None) -> AggregationContext:
    return AggregationContext(
        layout=layout,
        num_classes=max(layout.num_outputs, 2),
        lr=LR,
        seed=seed,
        num_samples=None if num_samples is None else torch.tensor(num_samples, dtype=torch.float32),
    )


def class_activations(rng: np.random.Generator, c: int, n_in: int) -> np.ndarray:
    """A nonnegative (ReLU-like) activation pattern per class."""
    return np.abs(rng.normal(0.0, 1.0, (c, n_in))) * (rng.random((c, n_in)) < 0.6)


def global_probs(c: int, correct: float = 0.7) -> np.ndarray:
    """p(class i | an example of class c) of a half-trained global model."""
    p = np.full((c, c), (1.0 - correct) / (c - 1))
    np.fill_diagonal(p, correct)
    return p


def peer_rows(
    shares: np.ndarray,
    probs: np.ndarray,
    acts: np.ndarray,
    rng: np.random.Generator,
    flip: tuple[int, int] | None = None,
    noise: float = 0.05,
) -> np.ndarray:
    """A peer's output-layer gradient rows: sum_c share_c * (p(c) - onehot(label(c))) [a_c, 1]."""
    c, n_in = acts.shape
    rows = np.zeros((c, n_in + 1))
    for cls in range(c):
        if shares[cls] == 0:
            continue
        label = flip[1] if flip is not None and cls == flip[0] else cls
        delta = probs[cls] - np.eye(c)[label]
        a = np.append(np.maximum(acts[cls] + rng.normal(0.0, noise, n_in), 0.0), 1.0)
        rows += shares[cls] * delta[:, None] * a[None, :]
    return rows


def iid_round(seed: int, k: int = 20, n_att: int = 6, c: int = 10, n_in: int = 16):
    rng = np.random.default_rng(seed)
    acts, probs = class_activations(rng, c, n_in), global_probs(c)
    attackers = np.zeros(k, dtype=bool)
    attackers[rng.choice(k, n_att, replace=False)] = True
    rows = np.stack(
        [
            peer_rows(rng.dirichlet(np.full(c, 200.0)), probs, acts, rng, (SRC, TGT) if attackers[i] else None)
            for i in range(k)
        ]
    )
    return rows, attackers, rng


def mild_round(seed: int, k: int = 20, n_att: int = 6, c: int = 10, n_in: int = 16):
    """Dirichlet(alpha = 1) class shares, per-peer gradient scales and sample counts.

    Attackers are peers holding source-class data (as in the paper); they hold at least 30 %
    source-class examples, otherwise their flip barely moves their update.
    """
    rng = np.random.default_rng(seed)
    acts, probs = class_activations(rng, c, n_in), global_probs(c)
    attackers = np.zeros(k, dtype=bool)
    attackers[rng.choice(k, n_att, replace=False)] = True
    rows = []
    for i in range(k):
        shares = rng.dirichlet(np.ones(c))
        if attackers[i] and shares[SRC] < 0.3:
            rest = np.delete(shares, SRC)
            shares = np.insert(rest / rest.sum() * 0.7, SRC, 0.3)
        scale = math.exp(rng.normal(0.0, 0.3))
        rows.append(scale * peer_rows(shares, probs, acts, rng, (SRC, TGT) if attackers[i] else None))
    num_samples = rng.integers(100, 1200, k).astype(np.float32)
    return np.stack(rows), attackers, num_samples, rng


def extreme_round(seed: int, n_att: int = 4, c: int = 10, per_class: int = 10, n_in: int = 16):
    """One class per peer, ``per_class`` peers per class; ``n_att`` of the class-7 peers flip 7 -> 1.

    An honest class-c peer: delta_c = p_c - 1 < 0, delta_j = p_j > 0 (its top neuron is c).
    An attacker (class-7 examples labelled 1): delta_1 = p_1(7) - 1 ~ -0.96, delta_7 = p_7(7) = 0.6,
    so its top neuron is the target 1 and its features are 7-examples' activations: a cluster of
    its own whose mean's top neuron coincides with the class-1 cluster's, and smaller than it.
    """
    rng = np.random.default_rng(seed)
    acts = class_activations(rng, c, n_in)
    # peers of one class run the same global model on images of that class: they share the
    # class's confusion profile over the other classes (up to the per-peer noise below)
    profiles = [rng.dirichlet(np.full(c - 1, 5.0)) * 0.4 for _ in range(c)]
    rows, attackers, holds = [], [], []
    for cls in range(c):
        for j in range(per_class):
            is_att = cls == SRC and j < n_att
            a = np.append(np.maximum(acts[cls] + rng.normal(0.0, 0.05, n_in), 0.0), 1.0)
            if is_att:
                p = np.zeros(c)
                others = [i for i in range(c) if i not in (SRC, TGT)]
                p[others] = rng.dirichlet(np.full(c - 2, 5.0)) * 0.36
                p[SRC], p[TGT] = 0.6, 0.04
                delta = p - np.eye(c)[TGT]
            else:
                p = np.insert(profiles[cls], cls, 0.6)
                p = p * (1.0 + rng.normal(0.0, 0.03, c))
                delta = p - np.eye(c)[cls]
            rows.append(delta[:, None] * a[None, :])
            attackers.append(is_att)
            holds.append(cls)
    return np.stack(rows), np.array(attackers), np.array(holds), rng


# ----------------------------------------------------------------------------- (a) iid


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iid_rejects_exactly_the_attackers(seed: int) -> None:
    rows, attackers, rng = iid_round(seed)
    layout = make_layout(10, 16)
    updates = pack_updates(rows, rng)
    res = LFighter()(updates, context(layout, seed))
    assert res.info["distribution"] == "iid"
    assert set(res.info["source_target"]) == {SRC, TGT}
    assert torch.equal(res.accepted, torch.from_numpy(~attackers))
    honest = torch.from_numpy(~attackers)
    torch.testing.assert_close(res.update, updates[honest].mean(dim=0))


def test_iid_stylised_opposite_directions() -> None:
    """The brief's picture: attackers' source/target rows point opposite to honest peers'."""
    rng = np.random.default_rng(3)
    c, n_in, k = 10, 8, 20
    v_src, v_tgt = rng.normal(size=n_in + 1), rng.normal(size=n_in + 1)
    attackers = np.zeros(k, dtype=bool)
    attackers[[1, 4, 7, 10, 15, 19]] = True
    rows = rng.normal(0.0, 0.05, (k, c, n_in + 1))
    sign = np.where(attackers, -1.0, 1.0)
    rows[:, SRC] += sign[:, None] * -v_src + rng.normal(0.0, 0.1, (k, n_in + 1))
    rows[:, TGT] += sign[:, None] * v_tgt + rng.normal(0.0, 0.1, (k, n_in + 1))
    res = LFighter(distribution="iid")(pack_updates(rows, rng), context(make_layout(c, n_in)))
    assert set(res.info["source_target"]) == {SRC, TGT}
    assert res.accepted.tolist() == (~attackers).tolist()


# ----------------------------------------------------------------------------- (b) mild


@pytest.mark.parametrize("seed", [0, 1])
def test_mild_rejects_exactly_the_attackers_and_weights_by_samples(seed: int) -> None:
    rows, attackers, num_samples, rng = mild_round(seed)
    updates = pack_updates(rows, rng)
    res = LFighter()(updates, context(make_layout(10, 16), seed, num_samples))
    assert res.info["distribution"] == "iid"  # mild shares the k-means branch
    assert res.accepted.tolist() == (~attackers).tolist()
    w = torch.tensor(num_samples) * torch.from_numpy(~attackers).float()
    torch.testing.assert_close(res.update, (w / w.sum()) @ updates)
    torch.testing.assert_close(res.weights, w)


# ----------------------------------------------------------------------------- (c) extreme


@pytest.mark.parametrize("seed", [0, 1])
def test_extreme_rejects_the_attackers_and_keeps_honest_source_holders(seed: int) -> None:
    rows, attackers, holds, rng = extreme_round(seed)
    assert attackers.sum() == 4 and (holds == SRC).sum() == 10
    layout = make_layout(10, 16)
    res = LFighter()(pack_updates(rows, rng), context(layout, seed))
    assert res.info["distribution"] == "extreme"
    assert res.info["share_holding_one_class"] == 1.0
    accepted = res.accepted.numpy()
    assert not accepted[attackers].any()  # every attacker rejected
    # a class whose peers disagree on their *second* neuron can split into two clusters with
    # the same top neuron, and Procedure 2 drops the smaller: a few honest peers at most
    assert (~accepted & ~attackers).sum() <= 10
    honest_src = (holds == SRC) & ~attackers
    assert res.accepted.numpy()[honest_src].all() and honest_src.sum() == 6
    # The attackers' own cluster shares its top neuron with the (larger) class-1 cluster.
    labels = np.array(res.info["labels"])
    att_cluster = {int(x) for x in labels[attackers]}
    assert len(att_cluster) == 1 and att_cluster.pop() >= 0
    tops = res.info["cluster_top_neuron"]
    assert tops[str(labels[attackers][0])] == TGT
    assert tops[str(labels[(holds == TGT)][0])] == TGT
    assert [tuple(p) for p in np.array(res.info["peer_top_neurons"])[attackers]] == [(TGT, SRC)] * 4


def test_extreme_forced_matches_auto() -> None:
    rows, attackers, _, rng = extreme_round(3)
    updates = pack_updates(rows, rng)
    layout = make_layout(10, 16)
    auto = LFighter()(updates, context(layout))
    forced = LFighter(distribution="extreme")(updates, context(layout))
    assert torch.equal(auto.accepted, forced.accepted)
    assert auto.accepted.tolist() == (~attackers).tolist()


# ----------------------------------------------------------------------------- (d) 2 and 1 neurons


def test_two_neuron_binary_layer_uses_whole_output_layer() -> None:
    rng = np.random.default_rng(0)
    c, n_in, k = 2, 8, 10
    acts = np.abs(rng.normal(0.0, 1.0, (c, n_in)))
    probs = np.array([[0.8, 0.2], [0.25, 0.75]])
    attackers = np.zeros(k, dtype=bool)
    attackers[[2, 5, 8]] = True
    rows = np.stack(
        [peer_rows(rng.dirichlet([50.0, 50.0]), probs, acts, rng, (1, 0) if attackers[i] else None) for i in range(k)]
    )
    res = LFighter()(pack_updates(rows, rng), context(make_layout(c, n_in)))
    assert res.info["distribution"] == "iid"
    assert res.info["distribution_rule"].startswith("two output neurons")
    assert sorted(res.info["source_target"]) == [0, 1]
    assert res.accepted.tolist() == (~attackers).tolist()


def test_single_neuron_hand_computed_inverse_density_and_score() -> None:
    """IMDB-like layer (one neuron, in=1): the features are the peers' (w, b) gradient rows.

    Cluster A = {(1, 0), (0, 1)}: the angle is 90 deg, dns_A = pi/2, score_A = 2/4 * pi/2.
    Cluster B = {(-1, -1), (-1, -2)}: cos = 3 / sqrt(10), dns_B = arccos(3/sqrt(10)) ~ 0.32175,
    score_B = 2/4 * 0.32175 < score_A, so B (peers 2 and 3) is bad.
    """
    layout = make_layout(1, 1)
    grads = np.array([[[1.0, 0.0]], [[0.0, 1.0]], [[-1.0, -1.0]], [[-1.0, -2.0]]])
    res = LFighter(distribution="extreme")(pack_updates(grads, np.random.default_rng(0)), context(layout))
    assert res.info["distribution"] == "iid"  # one output neuron: always the k-means branch
    assert res.accepted.tolist() == [True, True, False, False]
    labels = res.info["labels"]
    a, b = labels[0], labels[2]
    assert labels == [a, a, b, b]
    dns_b = math.acos(3.0 / math.sqrt(10.0))
    assert res.info["inverse_densities"][a] == pytest.approx(math.pi / 2, rel=1e-6)
    assert res.info["inverse_densities"][b] == pytest.approx(dns_b, rel=1e-6)
    assert res.info["scores"][a] == pytest.approx(0.5 * math.pi / 2, rel=1e-6)
    assert res.info["scores"][b] == pytest.approx(0.5 * dns_b, rel=1e-6)
    assert res.info["bad_cluster"] == b


def test_single_neuron_imdb_like_round() -> None:
    rng = np.random.default_rng(1)
    k, n_in = 20, 32
    a = np.abs(rng.normal(size=n_in + 1))
    attackers = np.zeros(k, dtype=bool)
    attackers[[0, 3, 9, 12]] = True
    # Honest: BCE error p - y < 0 on positives dominates; attackers relabel positives as negative.
    err = np.where(attackers, 0.5, -0.2) + rng.normal(0.0, 0.02, k)
    rows = (err[:, None] * (a[None, :] + rng.normal(0.0, 0.1, (k, n_in + 1))))[:, None, :]
    res = LFighter()(pack_updates(rows, rng), context(make_layout(1, n_in)))
    assert res.info["distribution"] == "iid" and res.info["source_target"] == [0]
    assert res.accepted.tolist() == (~attackers).tolist()


# ----------------------------------------------------------------------------- inverse density


def test_cluster_inverse_density_by_hand() -> None:
    # (1,0), (0,1), (1,1): max angles 90, 90, 45 degrees -> mean 75 degrees.
    three = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert cluster_inverse_density(three) == pytest.approx(math.radians(75.0))
    assert cluster_inverse_density(np.array([[3.0, 4.0]])) == 0.0  # singleton
    assert cluster_inverse_density(np.array([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(math.pi)
    # Scale does not matter, only directions.
    assert cluster_inverse_density(three * np.array([[5.0], [0.1], [2.0]])) == pytest.approx(math.radians(75.0))
    # A zero vector is orthogonal to the others and at angle 0 to itself.
    ang = pairwise_angles(np.array([[0.0, 0.0], [1.0, 0.0]]))
    assert ang[0, 0] == 0.0 and ang[0, 1] == pytest.approx(math.pi / 2)


def test_cluster_scores_by_hand_and_singleton_is_flagged() -> None:
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    labels = np.array([0, 0, 0, 1])
    scores, dns, sizes = cluster_scores(x, labels)
    assert sizes == [3, 1]
    assert scores[0] == pytest.approx(3 / 4 * math.radians(75.0))
    assert scores[1] == 0.0 and dns[1] == 0.0
    # Through Procedure 1 the lone outlier is the bad cluster.
    bad, info = filter_mild(x, seed=0)
    assert bad.tolist() == [False, False, False, True]
    assert info["reason"] == "the cluster with the lower score is bad"


def test_score_ties() -> None:
    # Both clusters internally collinear (dns = 0): equal scores. Different sizes: smaller is bad.
    x = np.array([[1.0, 1.0]] * 3 + [[-1.0, -1.0]] * 2)
    bad, info = filter_mild(x)
    assert bad.tolist() == [False, False, False, True, True]
    assert info["reason"].startswith("equal scores: the smaller")
    # Equal sizes too: nothing tells them apart, everyone is accepted.
    x = np.array([[1.0, 1.0]] * 2 + [[-1.0, -1.0]] * 2)
    bad, info = filter_mild(x)
    assert not bad.any() and info["bad_cluster"] is None


# ----------------------------------------------------------------------------- extreme rule details


def _toy_output_grads(tops: list[int], c: int = 3) -> np.ndarray:
    g = np.full((len(tops), c, 2), 0.1)
    for i, t in enumerate(tops):
        g[i, t] = 1.0
    return g


def test_filter_extreme_several_clusters_sharing_a_neuron() -> None:
    # Four tight groups of sizes 5, 3, 2 (top neuron 0) and 4 (top neuron 1), far apart.
    centres = [0.0, 100.0, 200.0, 300.0]
    sizes = [5, 3, 2, 4]
    feats = np.concatenate([np.column_stack([np.full(n, m) + 0.01 * np.arange(n), np.zeros(n)]) for m, n in zip(centres, sizes)])
    grads = _toy_output_grads([0] * 10 + [1] * 4)
    bad, info = filter_extreme(feats, grads)
    assert bad.tolist() == [False] * 5 + [True] * 5 + [False] * 4
    assert info["noise"] == 0


def test_filter_extreme_equal_largest_clusters_are_kept_and_noise_is_bad() -> None:
    feats = np.array([[0.0, 0], [0.01, 0], [0.02, 0], [100.0, 0], [100.01, 0], [100.02, 0], [50.0, 400.0]])
    grads = _toy_output_grads([0] * 6 + [2])
    bad, info = filter_extreme(feats, grads)
    assert info["labels"][6] == -1
    assert bad.tolist() == [False] * 6 + [True]


def test_filter_extreme_all_noise_accepts_everyone() -> None:
    feats = np.array([[0.0], [1.0], [3.0]])
    bad, info = filter_extreme(feats, _toy_output_grads([0, 1, 2]))
    assert not bad.any() and "noise" in info["reason"]


def test_split_by_own_top_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 1, -1])
    tops = np.array([7, 7, 1, 1, 1, 3])
    # (cluster, own top) pairs in order: (0, 1) -> 0, (0, 7) -> 1, (1, 1) -> 2; noise stays noise
    assert split_by_own_top(labels, tops).tolist() == [1, 1, 0, 2, 2, -1]
    # clusters whose members already share their own top neuron only get renumbered
    assert split_by_own_top(np.array([1, 1, 0]), np.array([4, 4, 2])).tolist() == [1, 1, 0]


def _merged_round() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """6 honest source peers (top neuron 0) and 3 attackers (top neuron 1) in one tight group at 0;
    8 honest target peers (top neuron 1) at 100: HDBSCAN finds the two groups."""
    feats = np.concatenate([np.column_stack([0.01 * np.arange(9), np.zeros(9)]),
                            np.column_stack([100.0 + 0.01 * np.arange(8), np.zeros(8)])])
    tops = [0] * 6 + [1] * 3 + [1] * 8
    return feats, _toy_output_grads(tops), np.array(tops)


def test_filter_extreme_misses_attackers_merged_with_the_source_peers() -> None:
    """The paper's rule: the merged cluster's mean has top neuron 0 (6 x 1.0 + 3 x 0.1 against
    6 x 0.1 + 3 x 1.0), the target cluster's is 1; no two clusters share a top neuron, nobody is bad."""
    feats, grads, _ = _merged_round()
    bad, info = filter_extreme(feats, grads)
    assert not bad.any() and info["cluster_top_neuron"] == {"0": 0, "1": 1}


def test_filter_extreme_split_by_own_top_compares_the_attackers_with_the_target_peers() -> None:
    feats, grads, tops = _merged_round()
    bad, info = filter_extreme(feats, grads, own_tops=tops)
    # groups (0, top 0) 6 peers, (0, top 1) the 3 attackers, (1, top 1) the 8 target peers:
    # the attackers share top neuron 1 with the larger target group and are bad
    assert bad.tolist() == [False] * 6 + [True] * 3 + [False] * 8
    assert info["hdbscan_labels"] == [0] * 9 + [1] * 8 and info["labels"] == [0] * 6 + [1] * 3 + [2] * 8
    assert info["cluster_sizes"] == {"0": 6, "1": 3, "2": 8}


def test_split_by_own_top_option_on_a_whole_round() -> None:
    """On a round where the attackers already form their own cluster the option changes nothing;
    the default stays the paper's rule; bad values are refused."""
    rows, attackers, _, rng = extreme_round(0)
    layout = make_layout(10, 16)
    updates = pack_updates(rows, rng)
    paper = LFighter()(updates, context(layout))
    split = LFighter(split_by_own_top=True)(updates, context(layout))
    assert torch.equal(paper.accepted, split.accepted) and not split.accepted.numpy()[attackers].any()
    assert "hdbscan_labels" in split.info and "hdbscan_labels" not in paper.info
    assert LFighter().split_by_own_top is False
    assert repr(LFighter(split_by_own_top=True)).endswith("min_samples=3, split_by_own_top=True)")
    with pytest.raises(ValueError, match="split_by_own_top"):
        LFighter(split_by_own_top=1)


# ----------------------------------------------------------------------------- auto detection


def test_detect_distribution_from_bias_signs() -> None:
    layout = make_layout(4, 2)
    k = 6

    def grads_with_bias(bias: np.ndarray) -> torch.Tensor:
        g = torch.zeros(k, layout.dim)
        g[:, layout.output_bias] = torch.tensor(bias, dtype=torch.float32)
        return g

    one_each = np.full((k, 4), 0.1)
    one_each[np.arange(k), np.arange(k) % 4] = -0.3
    assert detect_distribution(layout, grads_with_bias(one_each))[0] == "extreme"
    several = np.tile([-0.2, -0.1, 0.1, 0.2], (k, 1))
    assert detect_distribution(layout, grads_with_bias(several))[0] == "iid"
    half = np.concatenate([one_each[:3], several[3:]])  # exactly half: not a majority
    kind, info = detect_distribution(layout, grads_with_bias(half))
    assert kind == "iid" and info["share_holding_one_class"] == 0.5
    most = np.concatenate([one_each[:4], several[4:]])
    assert detect_distribution(layout, grads_with_bias(most))[0] == "extreme"
    assert detect_distribution(make_layout(2, 2), torch.zeros(k, make_layout(2, 2).dim))[0] == "iid"
    assert detect_distribution(make_layout(1, 2), torch.zeros(k, make_layout(1, 2).dim))[0] == "iid"
    no_bias = make_layout(4, 2, bias=False)
    kind, info = detect_distribution(no_bias, torch.zeros(k, no_bias.dim))
    assert kind == "iid" and "no bias" in info["distribution_rule"]


def test_auto_detects_iid_and_mild_rounds() -> None:
    rows, _, rng = iid_round(0)
    res = LFighter()(pack_updates(rows, rng), context(make_layout(10, 16)))
    assert res.info["distribution"] == "iid" and res.info["share_holding_one_class"] < 0.5


def test_no_bias_layer_runs() -> None:
    rng = np.random.default_rng(0)
    layout = make_layout(5, 3, bias=False)
    updates = torch.tensor(rng.normal(size=(8, layout.dim)), dtype=torch.float32)
    res = LFighter()(updates, context(layout))
    assert res.info["distribution"] == "iid" and res.accepted.shape == (8,)


# ----------------------------------------------------------------------------- invariance


def test_accepted_set_is_permutation_invariant() -> None:
    iid_rows, iid_attackers, iid_rng = iid_round(4)
    ext_rows, ext_attackers, _, ext_rng = extreme_round(3)
    layout = make_layout(10, 16)
    for rows, attackers, rng in [(iid_rows, iid_attackers, iid_rng), (ext_rows, ext_attackers, ext_rng)]:
        updates = pack_updates(rows, rng)
        base = LFighter()(updates, context(layout)).accepted
        perm = torch.from_numpy(np.random.default_rng(9).permutation(len(updates)))
        permuted = LFighter()(updates[perm], context(layout)).accepted
        assert torch.equal(permuted, base[perm])
        assert base.tolist() == (~attackers).tolist()


# ----------------------------------------------------------------------------- degenerate inputs


@pytest.mark.parametrize("distribution", ["auto", "iid", "extreme"])
def test_identical_updates_accept_everyone(distribution: str) -> None:
    layout = make_layout(10, 4)
    updates = torch.randn(1, layout.dim).repeat(6, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConvergenceWarning: k-means is not even called
        res = LFighter(distribution=distribution)(updates, context(layout))
    assert res.accepted.all()
    assert "identical" in res.info["reason"]
    torch.testing.assert_close(res.update, updates[0])


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("distribution", ["auto", "iid", "extreme"])
def test_fewer_than_three_peers_accept_everyone(k: int, distribution: str) -> None:
    layout = make_layout(10, 4)
    updates = torch.randn(k, layout.dim)
    res = LFighter(distribution=distribution)(updates, context(layout))
    assert res.accepted.all() and "fewer than 3" in res.info["reason"]
    torch.testing.assert_close(res.update, updates.mean(dim=0))


def test_all_zero_updates() -> None:
    layout = make_layout(10, 4)
    res = LFighter()(torch.zeros(5, layout.dim), context(layout))
    assert res.accepted.all() and torch.count_nonzero(res.update) == 0


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="distribution"):
        LFighter(distribution="noniid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_init"):
        LFighter(n_init=0)
    with pytest.raises(ValueError, match="extreme_features"):
        LFighter(extreme_features="stacked")
    with pytest.raises(ValueError, match="min_samples"):
        LFighter(min_samples=0)
    assert repr(LFighter("mild", 3)) == ("LFighter(distribution='mild', n_init=3, extreme_features='concat', "
                                         "min_samples=3)")


def _extreme_rows(rng: np.random.Generator, second_neurons: list[int], top: int, hidden: np.ndarray,
                  second_scale: float = 0.3) -> np.ndarray:
    """Output-layer gradient rows ``(C, in+1)`` of a one-class peer: a large row at ``top`` built on
    the class's hidden features, a smaller one at a second neuron that varies between peers."""
    rows = np.zeros((4, hidden.size + 1))
    rows[top, :-1] = -hidden * (1 + 0.02 * rng.standard_normal(hidden.size))
    rows[top, -1] = -1.0
    rows[second_neurons[0], :-1] = second_scale * hidden * (1 + 0.02 * rng.standard_normal(hidden.size))
    rows[second_neurons[0], -1] = second_scale
    return rows


def test_extreme_default_keeps_each_class_together_where_the_old_reading_split_it() -> None:
    """Issue 11: honest peers of one class whose *second* neuron differs (the class the model
    confuses them with varies between peers). The default (rows concatenated, the hdbscan
    package's neighbourhood = scikit-learn ``min_samples=3``) finds one cluster per class and
    rejects nobody; the earlier reading (rows in place, scikit-learn's ``min_samples=2``) splits
    each class by its second neuron and rejects the smaller part, 2 honest peers per class; the
    smaller neighbourhood alone already splits a class. Four classes x 5 peers, no attackers."""
    rng = np.random.default_rng(0)
    hidden = {c: rng.standard_normal(6) + 3 * np.eye(6)[c] for c in range(4)}
    peers = []
    for c in range(4):
        others = [o for o in range(4) if o != c]
        for second in (others[0], others[0], others[0], others[1], others[1]):  # two peers' second neuron differs
            peers.append(_extreme_rows(rng, [second], c, hidden[c]))
    rows = np.stack(peers)
    pairs = top_two(np.linalg.norm(rows, axis=-1))
    bad, info = filter_extreme(concat_features(rows, pairs), rows, min_samples=3)
    assert not bad.any(), info
    assert sorted(np.bincount(info["labels"])) == [5, 5, 5, 5]  # one cluster per class
    bad_old, info_old = filter_extreme(extreme_features(rows, pairs), rows, min_samples=None)
    assert bad_old.sum() == 8 and len(set(info_old["labels"])) == 8
    assert filter_extreme(concat_features(rows, pairs), rows, min_samples=None)[0].any()


def _issue11_rows() -> np.ndarray:
    """The fixture of the test above: 4 classes x 5 honest peers whose second neuron varies."""
    rng = np.random.default_rng(0)
    hidden = {c: rng.standard_normal(6) + 3 * np.eye(6)[c] for c in range(4)}
    peers = []
    for c in range(4):
        others = [o for o in range(4) if o != c]
        for second in (others[0], others[0], others[0], others[1], others[1]):
            peers.append(_extreme_rows(rng, [second], c, hidden[c]))
    return np.stack(peers)


def test_lfighter_passes_its_extreme_settings_to_procedure_2() -> None:
    """On the issue-11 fixture the three settings give three different verdicts (nobody, some,
    8 rejected; the test above), so the rule must pass both ``extreme_features`` and
    ``min_samples`` through to Procedure 2 to get each one."""
    layout = make_layout(4, 6)
    rows = _issue11_rows()
    updates = torch.zeros(len(rows), layout.dim, dtype=torch.float64)
    updates[:, layout.output_weight] = torch.as_tensor(-LR * rows[:, :, :-1].reshape(len(rows), -1))
    updates[:, layout.output_bias] = torch.as_tensor(-LR * rows[:, :, -1])
    ctx = context(layout)
    rejected = {}
    for kind, ms in (("concat", 3), ("in-place", None), ("concat", None)):
        res = LFighter("extreme", extreme_features=kind, min_samples=ms)(updates, ctx)
        grads = ctx.gradients(layout.output_rows(updates)).numpy()
        feats = (concat_features if kind == "concat" else extreme_features)(grads, top_two(np.linalg.norm(grads, axis=-1)))
        bad, info = filter_extreme(feats, grads, ms)
        assert res.info["labels"] == info["labels"]
        assert res.accepted.numpy().tolist() == (~bad).tolist()
        rejected[(kind, ms)] = int((~res.accepted).sum())
    assert rejected[("concat", 3)] == 0  # one cluster per class: nobody rejected
    assert rejected[("in-place", None)] == 8  # each class split by its second neuron
    assert 0 < rejected[("concat", None)] < 20  # the smaller neighbourhood alone splits a class
