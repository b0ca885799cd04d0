"""Median, Trimmed Mean, Krum / Multi-Krum, Repeated Median (residual reweighting), FoolsGold.

Hand-computed cases on tiny matrices, properties (permutation invariance, identical
updates, planted outliers), edge cases, and numerical cross-checks against independent
references: straightforward numpy implementations written here (always run) and Flower's
``flwr.server.strategy.aggregate`` functions (run only where ``flwr`` is installed; it is
not a dependency of flhelpers).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flhelpers.defenses.base import AggregationContext
from flhelpers.defenses.foolsgold import FoolsGold
from flhelpers.defenses.krum import Krum, MultiKrum
from flhelpers.defenses.median import Median
from flhelpers.defenses.repeated_median import RepeatedMedian
from flhelpers.defenses.trimmed_mean import TrimmedMean
from flhelpers.params import ParamLayout


def flat_layout(dim: int) -> ParamLayout:
    """A layout whose whole vector is the output layer: one neuron, ``dim - 1`` weights + bias."""
    return ParamLayout(
        names=("fc.weight", "fc.bias"),
        shapes=((1, dim - 1), (1,)),
        offsets=(0, dim - 1),
        output_weight=slice(0, dim - 1),
        output_bias=slice(dim - 1, dim),
        num_outputs=1,
    )


def ctx_for(updates: torch.Tensor, f: int = 0, peer_ids=None) -> AggregationContext:
    return AggregationContext(
        layout=flat_layout(updates.shape[1]),
        num_classes=2,
        expected_attackers=f,
        peer_ids=None if peer_ids is None else torch.as_tensor(peer_ids),
    )


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ----------------------------------------------------------------------------- hand-computed


def test_median_hand_odd():
    u = t([[1, 10], [3, -2], [2, 4]])
    # col 0 sorted 1, 2, 3 -> 2 ; col 1 sorted -2, 4, 10 -> 4
    res = Median()(u, ctx_for(u))
    assert torch.allclose(res.update, t([2, 4]))
    assert res.accepted.all() and res.weights is None


def test_median_hand_even_is_true_median():
    u = t([[1, 0], [4, 8], [2, 2], [10, -4]])
    # col 0 sorted 1, 2, 4, 10 -> (2 + 4) / 2 = 3 ; col 1 sorted -4, 0, 2, 8 -> (0 + 2) / 2 = 1
    # (torch.median would give the lower middles 2 and 0)
    res = Median()(u, ctx_for(u))
    assert torch.allclose(res.update, t([3, 1]))
    # the torch (sorting) path, used on GPUs and for dtypes numpy lacks, agrees
    half = u.to(torch.float16)
    expected = torch.tensor([3.0, 1.0], dtype=torch.float16)
    assert torch.equal(Median()(half, ctx_for(half)).update, expected)
    assert torch.equal(TrimmedMean()(half, ctx_for(half, f=1)).update, expected)


U5 = [[1, 5, 0], [2, -1, 0], [3, 2, 9], [4, 3, 1], [100, 4, 2]]


def test_trimmed_mean_hand():
    u = t(U5)
    # f = 1: col 0 sorted 1,2,3,4,100 -> mean(2,3,4) = 3 ; col 1 -1,2,3,4,5 -> mean(2,3,4) = 3
    #        col 2 sorted 0,0,1,2,9 -> mean(0,1,2) = 1
    res = TrimmedMean()(u, ctx_for(u, f=1))
    assert torch.allclose(res.update, t([3, 3, 1]))
    assert res.info["trim"] == 1 and res.accepted.all()
    # beta = 0.2 -> floor(0.2 * 5) = 1, the same
    assert torch.allclose(TrimmedMean(beta=0.2)(u, ctx_for(u, f=0)).update, t([3, 3, 1]))


def test_trimmed_mean_b0_is_mean_and_half_is_median():
    u = t(U5)
    # b = 0: the plain mean (110/5, 13/5, 12/5) -- no NaN from an empty slice
    res = TrimmedMean()(u, ctx_for(u, f=0))
    assert torch.allclose(res.update, t([22, 2.6, 2.4]))
    assert torch.allclose(res.update, u.mean(0))
    # b = 2 of K = 5 leaves the middle value: the median; b = 3 (2b >= K) falls back to it
    med = Median()(u, ctx_for(u)).update
    assert torch.allclose(TrimmedMean()(u, ctx_for(u, f=2)).update, med)
    assert torch.allclose(TrimmedMean()(u, ctx_for(u, f=3)).update, med)
    # 50 % attackers with an even K: 2b == K -> the true median (3, 1)
    u4 = t([[1, 0], [4, 8], [2, 2], [10, -4]])
    assert torch.allclose(TrimmedMean()(u4, ctx_for(u4, f=2)).update, t([3, 1]))
    assert torch.allclose(TrimmedMean(beta=0.5)(u4, ctx_for(u4)).update, t([3, 1]))


KRUM_PTS = [[0, 0], [1, 0], [0, 2], [2, 2], [10, 10]]
# Squared distances: ab 1, ac 4, ad 8, ae 200, bc 5, bd 5, be 181, cd 4, ce 164, de 128.
# n = 5, f = 1 -> n - f - 2 = 2 nearest others:
#   a: 1 + 4 = 5 ; b: 1 + 5 = 6 ; c: 4 + 4 = 8 ; d: 4 + 5 = 9 ; e: 128 + 164 = 292
KRUM_SCORES = [5, 6, 8, 9, 292]


def test_krum_hand():
    u = t(KRUM_PTS)
    res = Krum()(u, ctx_for(u, f=1))
    assert res.info["scores"] == pytest.approx(KRUM_SCORES)
    assert res.info["selected"] == [0]
    assert torch.allclose(res.update, t([0, 0]))
    assert res.accepted.tolist() == [True, False, False, False, False]


def test_multikrum_hand():
    u = t(KRUM_PTS)
    # m = n - f = 4 best: a, b, c, d -> mean ((0+1+0+2)/4, (0+0+2+2)/4) = (0.75, 1)
    res = MultiKrum()(u, ctx_for(u, f=1))
    assert sorted(res.info["selected"]) == [0, 1, 2, 3]
    assert torch.allclose(res.update, t([0.75, 1.0]))
    assert res.accepted.tolist() == [True, True, True, True, False]
    # m = 2: a, b -> (0.5, 0)
    assert torch.allclose(MultiKrum(m=2)(u, ctx_for(u, f=1)).update, t([0.5, 0]))


def test_krum_excludes_self_distance():
    u = t(KRUM_PTS)
    # Counting the zero self-distance (the authors' defect) would give a: 0 + 1 = 1, not 5.
    assert Krum()(u, ctx_for(u, f=1)).info["scores"][0] == pytest.approx(5)


def test_krum_needs_enough_peers():
    u = t(KRUM_PTS)  # n = 5
    msg = r"Krum needs n > 2f \+ 2 .*got n=5, f=2; lower the attacker ratio or add peers"
    with pytest.raises(ValueError, match=msg):
        Krum()(u, ctx_for(u, f=2))
    with pytest.raises(ValueError, match=msg):
        MultiKrum()(u, ctx_for(u, f=2))
    with pytest.raises(ValueError, match="got n=4, f=1"):
        Krum().validate(4, 1)
    Krum().validate(5, 1)
    MultiKrum().validate(100, 40)
    with pytest.raises(ValueError):
        MultiKrum(m=0)
    with pytest.raises(ValueError, match="m=9"):
        MultiKrum(m=9)(u, ctx_for(u, f=1))


def test_repeated_median_hand_and_not_the_median():
    u = t([[3, 7], [0, 7], [100, 7], [2, 7], [1, 7]])
    # Column 0 sorted 0, 1, 2, 3, 100 at ranks 0..4.
    #   Pairwise slopes from rank i to the others (median of 4 = mean of the middle two):
    #   i=0: 1, 1, 1, 25 -> 1 ; i=1: 1, 1, 1, 33 -> 1 ; i=2: 1, 1, 1, 49 -> 1
    #   i=3: 1, 1, 1, 97 -> 1 ; i=4: 25, 33, 49, 97 -> 41      => b1 = med(1,1,1,1,41) = 1
    #   b0 = med(y_(i) - i) = med(0, 0, 0, 0, 96) = 0; residuals 0, 0, 0, 0, 96
    #   MAD over the 4 largest |r| = med(0, 0, 0, 96) = 0 -> sigma = 0
    #   confidence: 1 for zero residuals, 0 for 96 (nonzero residual, zero scale)
    #   -> the value 100 (< delta) is replaced by the fitted 0 + 1 * 4 = 4
    #   std over peers of (1,1,1,1,0) = sqrt(0.8 / 4) = 0.447; contributions 0.447 * w
    # Column 1: all 7, residuals 0, confidences all 1, std 0 -> contributes nothing.
    # Peer scores (0.447,0.447,0,0.447,0.447) -> W = (s / max)^2 = (1, 1, 0, 1, 1)
    # Delta = ((3 + 0 + 2 + 1) / 4, 7) = (1.5, 7); the median would be (2, 7).
    res = RepeatedMedian()(u, ctx_for(u))
    assert torch.allclose(res.update, t([1.5, 7]))
    assert res.weights.tolist() == [1, 1, 0, 1, 1]
    assert res.accepted.tolist() == [True, True, False, True, True]
    assert res.info["corrected"] == 1
    assert not torch.allclose(res.update, Median()(u, ctx_for(u)).update)


def test_repeated_median_differs_from_median_on_random_data():
    g = torch.Generator().manual_seed(3)
    u = torch.randn(9, 40, generator=g, dtype=torch.float64)
    rm = RepeatedMedian()(u, ctx_for(u)).update
    med = Median()(u, ctx_for(u)).update
    assert (rm - med).abs().max() > 1e-3


def test_foolsgold_hand():
    s3 = math.sqrt(3)
    a, b, c = [1.0, 0.0], [0.5, s3 / 2], [-s3 / 2, 0.5]  # at 0, 60 and 150 degrees
    u = t([a, b, c])
    # cs: ab = cos 60 = 0.5, ac = cos 150 = -0.866, bc = cos 90 = 0 ; v = (0.5, 0.5, 0)
    # pardoning row c (v_c = 0 < v_a = v_b = 0.5): cs_ca, cs_cb scaled by 0 -> 0
    # alpha = 1 - max_j cs = (0.5, 0.5, 1) ; / max -> (0.5, 0.5, 1) ; 1 -> 0.99
    # logit + 0.5: a, b: ln(1) + 0.5 = 0.5 ; c: ln(99) + 0.5 = 5.09 -> clipped to 1
    res = FoolsGold()(u, ctx_for(u))
    assert torch.allclose(res.weights, t([0.5, 0.5, 1.0]), atol=1e-7)
    # Delta = (0.5 a + 0.5 b + c) / 2
    expected = (0.5 * t(a) + 0.5 * t(b) + t(c)) / 2
    assert torch.allclose(res.update, expected, atol=1e-7)
    assert res.accepted.all()


def test_foolsgold_identical_pair_gets_zero():
    u = t([[1, 0], [1, 0], [0, 1]])
    # cs_ab = 1 -> alpha_a = alpha_b = 0 -> weight 0 ; c: alpha 1 -> 0.99 -> weight 1
    res = FoolsGold()(u, ctx_for(u))
    assert res.weights.tolist() == [0, 0, 1]
    assert torch.allclose(res.update, t([0, 1]))
    assert res.accepted.tolist() == [False, False, True]


# ----------------------------------------------------------------------------- properties

ROBUST_RULES = {
    "median": (Median, {}),
    "trimmed-mean": (TrimmedMean, {}),
    "krum": (Krum, {}),
    "multi-krum": (MultiKrum, {}),
    "repeated-median": (RepeatedMedian, {}),
}


@pytest.mark.parametrize("name", [*ROBUST_RULES, "foolsgold"])
def test_permuting_peers_keeps_the_aggregate(name):
    g = torch.Generator().manual_seed(1)
    u = torch.randn(11, 30, generator=g, dtype=torch.float64)
    perm = torch.randperm(11, generator=g)
    make = (lambda: FoolsGold()) if name == "foolsgold" else (lambda: ROBUST_RULES[name][0]())
    ids = torch.arange(100, 111)
    a = make()(u, ctx_for(u, f=3, peer_ids=ids))
    b = make()(u[perm], ctx_for(u, f=3, peer_ids=ids[perm]))
    assert torch.allclose(a.update, b.update, atol=1e-12)
    assert torch.equal(a.accepted[perm], b.accepted)


@pytest.mark.parametrize("name", [*ROBUST_RULES, "foolsgold"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_input_updates_are_not_modified(name, dtype):
    g = torch.Generator().manual_seed(11)
    u = torch.randn(9, 20, generator=g).to(dtype)
    before = u.clone()
    rule = FoolsGold() if name == "foolsgold" else ROBUST_RULES[name][0]()
    rule(u, ctx_for(u, f=2))
    assert torch.equal(u, before)


@pytest.mark.parametrize("name", list(ROBUST_RULES))
def test_identical_updates_give_that_update(name):
    row = torch.tensor([0.5, -2.0, 3.25, 0.0], dtype=torch.float64)
    u = row.repeat(7, 1)
    res = ROBUST_RULES[name][0]()(u, ctx_for(u, f=2))
    assert torch.allclose(res.update, row)
    assert not torch.isnan(res.update).any()


@pytest.mark.parametrize("name", list(ROBUST_RULES))
def test_minority_of_huge_outliers_is_ignored(name):
    g = torch.Generator().manual_seed(2)
    honest = 0.01 * torch.randn(12, 50, generator=g, dtype=torch.float64) + 1.0
    outliers = 1e6 * torch.randn(3, 50, generator=g, dtype=torch.float64).abs()
    u = torch.cat([honest[:5], outliers, honest[5:]])  # the outliers are rows 5, 6, 7
    res = ROBUST_RULES[name][0]()(u, ctx_for(u, f=3))
    assert (res.update - 1.0).abs().max() < 0.1
    if name in ("krum", "multi-krum"):
        assert not res.accepted[5:8].any()
    if name == "repeated-median":
        assert (res.weights[5:8] < 1e-3 * res.weights.max()).all()


def test_repeated_median_block_size_does_not_change_result():
    g = torch.Generator().manual_seed(4)
    u = torch.randn(10, 257, generator=g, dtype=torch.float64)
    big = RepeatedMedian()(u, ctx_for(u))
    small = RepeatedMedian(block_elements=1000)(u, ctx_for(u))
    assert torch.allclose(big.update, small.update, atol=1e-12)
    assert torch.allclose(big.weights, small.weights, atol=1e-12)


@pytest.mark.parametrize("k", [6, 7])
def test_torch_paths_match_numpy_paths(k, monkeypatch):
    """The sort / torch.median code used on GPUs gives what the numpy code gives on the CPU."""
    from flhelpers.defenses import _robust_utils

    g = torch.Generator().manual_seed(k)
    u = torch.randn(k, 50, generator=g, dtype=torch.float64)
    rules = [Median(), TrimmedMean(), RepeatedMedian()]
    fast = [r(u, ctx_for(u, f=2)) for r in rules]
    monkeypatch.setattr(_robust_utils, "use_numpy", lambda tensor: False)
    slow = [r(u, ctx_for(u, f=2)) for r in rules]
    for a, b in zip(fast, slow):
        assert torch.allclose(a.update, b.update, atol=1e-12)


def test_repeated_median_small_k():
    one = t([[1, 2, 3]])
    res = RepeatedMedian()(one, ctx_for(one))
    assert torch.equal(res.update, one[0]) and res.accepted.all()
    two = t([[1, 2, 3], [3, 2, 1]])
    res = RepeatedMedian()(two, ctx_for(two))
    assert torch.allclose(res.update, two.mean(0))  # residuals 0 -> uniform weights


def test_constructor_validation():
    with pytest.raises(ValueError):
        TrimmedMean(beta=0.6)
    with pytest.raises(ValueError):
        TrimmedMean(beta=-0.1)
    with pytest.raises(ValueError):
        RepeatedMedian(lam=0)
    with pytest.raises(ValueError):
        RepeatedMedian(delta=1.5)
    with pytest.raises(ValueError):
        FoolsGold(kappa=0)
    u = t(U5)
    with pytest.raises(ValueError):
        TrimmedMean()(u, ctx_for(u, f=-1))
    assert TrimmedMean.needs_attacker_count and Krum.needs_attacker_count and MultiKrum.needs_attacker_count


# ----------------------------------------------------------------------------- FoolsGold


def _fg_round(rule: FoolsGold, updates: torch.Tensor, ids) -> torch.Tensor:
    return rule(updates, ctx_for(updates, peer_ids=ids)).weights


def test_foolsgold_sybils_get_zero_honest_keep_weight():
    g = torch.Generator().manual_seed(5)
    rule = FoolsGold()
    ids = list(range(8))
    for _ in range(3):
        honest = torch.randn(5, 40, generator=g, dtype=torch.float64)
        sybil = torch.randn(1, 40, generator=g, dtype=torch.float64).repeat(3, 1)
        w = _fg_round(rule, torch.cat([honest, sybil]), ids)
        assert (w[5:] == 0).all()
        assert (w[:5] > 0).all()


def test_foolsgold_history_is_keyed_by_peer_id():
    rule = FoolsGold()
    # Round 1: peers 10 and 11 send the same direction, peer 12 another.
    _fg_round(rule, t([[1, 0, 0], [1, 0, 0], [0, 1, 0]]), [10, 11, 12])
    # Round 2: only 11 and 12 take part, in swapped rows, with fresh directions; the
    # histories H_11 = (1,0,1), H_12 = (0,1,1) are what count.
    w = _fg_round(rule, t([[0, 0, 1], [0, 0, 1]]), [12, 11])
    assert torch.allclose(rule.history[11], t([1, 0, 1]))
    assert torch.allclose(rule.history[12], t([0, 1, 1]))
    # cos(H_11, H_12) = 1/2 for both -> equal alpha -> both 0.99 -> weight 1
    assert w.tolist() == [1, 1]
    assert torch.allclose(rule.history[10], t([1, 0, 0]))


def test_foolsgold_state_round_trip():
    g = torch.Generator().manual_seed(6)
    a = FoolsGold()
    ids = [3, 1, 4, 5, 9]
    for _ in range(2):
        _fg_round(a, torch.randn(5, 6, generator=g, dtype=torch.float64), ids)
    state = a.state_dict()
    b = FoolsGold()
    b.load_state_dict(state)
    again = b.state_dict()
    assert torch.equal(state["peer_ids"], again["peer_ids"])
    assert torch.equal(state["history"], again["history"])
    # lists survive too (e.g. a JSON checkpoint)
    c = FoolsGold()
    c.load_state_dict({"peer_ids": state["peer_ids"].tolist(), "history": state["history"].tolist()})
    assert torch.equal(c.state_dict()["history"], state["history"])
    nxt = torch.randn(5, 6, generator=g, dtype=torch.float64)
    ra = a(nxt, ctx_for(nxt, peer_ids=ids))
    rb = b(nxt, ctx_for(nxt, peer_ids=ids))
    assert torch.equal(ra.update, rb.update) and torch.equal(ra.weights, rb.weights)


def test_foolsgold_single_peer_and_identical_histories():
    one = t([[1.0, 2.0, 3.0]])
    res = FoolsGold()(one, ctx_for(one))
    assert res.weights.tolist() == [1.0] and torch.allclose(res.update, one[0])
    same = t([[1.0, 2.0, 3.0]] * 4)
    res = FoolsGold()(same, ctx_for(same))
    # all peers look like one sybil group: every weight 0, a zero update, no NaN
    assert not torch.isnan(res.update).any() and not torch.isnan(res.weights).any()
    assert (res.weights == 0).all() and (res.update == 0).all()
    zero = t([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    res = FoolsGold()(zero, ctx_for(zero))
    assert not torch.isnan(res.weights).any()


def test_foolsgold_uses_output_layer_only():
    layout = ParamLayout(
        names=("body", "fc.weight", "fc.bias"),
        shapes=((3,), (1, 2), (1,)),
        offsets=(0, 3, 5),
        output_weight=slice(3, 5),
        output_bias=slice(5, 6),
        num_outputs=1,
    )
    # identical output layers, different bodies -> sybils under the default
    u = t([[5, 0, 0, 1, 1, 1], [0, 5, 0, 1, 1, 1], [0, 0, 5, 1, -1, 0]])
    ctx = AggregationContext(layout=layout, num_classes=2)
    assert FoolsGold()(u, ctx).weights.tolist()[:2] == [0, 0]
    assert (FoolsGold(use_output_layer=False)(u, ctx).weights[:2] > 0).all()


# ----------------------------------------------------------------------------- references


def np_krum_scores(x: np.ndarray, f: int) -> np.ndarray:
    n = len(x)
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return np.array(scores)


def np_repeated_median(y: np.ndarray, lam: float = 2.0, delta: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Loop reference of the residual reweighting (hat matrix via lstsq algebra, np.median)."""
    k, d = y.shape
    x = np.arange(k, dtype=float)
    design = np.stack([np.ones(k), x], axis=1)
    hat = design @ np.linalg.inv(design.T @ design) @ design.T
    z = lam * np.sqrt(2.0 / k)
    score = np.zeros(k)
    fixed = y.copy()
    for j in range(d):
        order = np.argsort(y[:, j], kind="stable")
        ys = y[order, j]
        inner = [np.median([(ys[l] - ys[i]) / (l - i) for l in range(k) if l != i]) for i in range(k)]
        b1 = np.median(inner)
        b0 = np.median(ys - b1 * x)
        fit = b0 + b1 * x
        r = ys - fit
        sigma = 1.4826 * (1 + 5 / (k - 1)) * np.median(np.sort(np.abs(r))[1:])
        w = np.ones(k)
        for i in range(k):
            if r[i] == 0:
                continue
            e = r[i] / (sigma * np.sqrt(1 - hat[i, i])) if sigma > 0 else np.inf
            w[i] = min(1.0, z / abs(e))
        std = np.std(w, ddof=1)
        for i in range(k):
            score[order[i]] += w[i] * std
            if w[i] < delta:
                fixed[order[i], j] = fit[i]
    weights = (score / score.max()) ** 2 if score.max() > 0 else np.ones(k)
    return weights @ fixed / weights.sum(), weights


@pytest.mark.parametrize("k", [7, 8])
def test_repeated_median_matches_loop_reference(k):
    rng = np.random.default_rng(k)
    y = rng.normal(size=(k, 6))
    y[0] += 8.0  # one outlying peer
    y[3, :2] = y[2, :2]  # ties
    res = RepeatedMedian()(torch.from_numpy(y), ctx_for(torch.from_numpy(y)))
    ref, w = np_repeated_median(y)
    np.testing.assert_allclose(res.weights.numpy(), w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.update.numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [9, 10])
def test_numpy_reference_crosscheck(k):
    rng = np.random.default_rng(10 + k)
    x = rng.normal(size=(k, 37)).astype(np.float32)
    u = torch.from_numpy(x)
    ours = Median()(u, ctx_for(u)).update.numpy()
    np.testing.assert_allclose(ours, np.median(x, axis=0), rtol=1e-6)
    for f in (1, 2, 3):
        ref = np.sort(x.astype(np.float64), axis=0)[f : k - f].mean(axis=0)
        ours = TrimmedMean()(u, ctx_for(u, f=f)).update.numpy()
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
        ref_scores = np_krum_scores(x.astype(np.float64), f)
        res = Krum()(u, ctx_for(u, f=f))
        np.testing.assert_allclose(res.info["scores"], ref_scores, rtol=1e-6)
        assert res.info["selected"] == [int(np.argmin(ref_scores))]
        best = np.argsort(ref_scores, kind="stable")[: k - f]
        mk = MultiKrum()(u, ctx_for(u, f=f))
        np.testing.assert_allclose(mk.update.numpy(), x[best].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_krum_float32_large_dim_matches_float64():
    g = torch.Generator().manual_seed(8)
    base = torch.randn(1, 200_000, generator=g)
    u = base + 1e-3 * torch.randn(12, 200_000, generator=g)  # close updates: cancellation-prone
    res = Krum()(u, ctx_for(u, f=2))
    ref = np_krum_scores(u.double().numpy(), 2)
    np.testing.assert_allclose(res.info["scores"], ref, rtol=1e-6)


def test_krum_distances_stay_exact_next_to_huge_outliers():
    g = torch.Generator().manual_seed(9)
    honest = 0.01 * torch.randn(8, 5000, generator=g) + 1.0
    huge = 1e6 * torch.randn(3, 5000, generator=g).abs()
    u = torch.cat([honest, huge])
    res = Krum()(u, ctx_for(u, f=3))
    ref = np_krum_scores(u.double().numpy(), 3)
    np.testing.assert_allclose(res.info["scores"], ref, rtol=1e-9)


@pytest.mark.parametrize("k", [9, 12])
def test_flower_crosscheck(k):
    """Flower's ``aggregate_*`` on the same inputs, where the conventions agree.

    * ``aggregate_median``: np.median, the true median -> equal to ``Median``.
    * ``aggregate_trimmed_avg(p)`` trims ``int(p * K)`` from each end, p < 0.5 ->
      ``TrimmedMean(beta=p)``.
    * ``aggregate_krum(num_malicious=f, to_keep=0)``: squared distances, the ``n - f - 2``
      closest after dropping the first of the argsort (the self distance) -> ``Krum`` for
      distinct updates. With ``to_keep = m`` it averages the m best weighted by example
      counts; with equal counts that is ``MultiKrum(m)``.
    """
    agg = pytest.importorskip("flwr.server.strategy.aggregate")
    rng = np.random.default_rng(100 + k)
    x = rng.normal(size=(k, 23)).astype(np.float32)
    results = [([row[:20], row[20:]], 10) for row in x]  # two "layers" per client
    u = torch.from_numpy(x)

    def flat(arrs):
        return np.concatenate([np.ravel(a) for a in arrs])

    ours = Median()(u, ctx_for(u)).update.numpy()
    np.testing.assert_allclose(ours, flat(agg.aggregate_median(results)), rtol=1e-6)
    for p in (0.1, 0.2, 0.3):
        ours = TrimmedMean(beta=p)(u, ctx_for(u)).update.numpy()
        np.testing.assert_allclose(ours, flat(agg.aggregate_trimmed_avg(results, p)), rtol=1e-5, atol=1e-6)
    for f in (1, 2, 3):
        ours = Krum()(u, ctx_for(u, f=f)).update.numpy()
        np.testing.assert_allclose(ours, flat(agg.aggregate_krum(results, f, 0)), rtol=1e-6)
        m = k - f
        ours = MultiKrum()(u, ctx_for(u, f=f)).update.numpy()
        np.testing.assert_allclose(ours, flat(agg.aggregate_krum(results, f, m)), rtol=1e-5, atol=1e-6)


def test_foolsgold_output_bias_option_drops_the_bias_from_the_history():
    # weights (first two values) of peers 0 and 1 point the same way; their biases (last) differ.
    u = t([[1, 0, 5], [2, 0, -5], [0, 1, 0]])
    with_bias = FoolsGold()(u, ctx_for(u))
    # with the bias: cos(u0, u1) = (2 - 25) / (sqrt(26) sqrt(29)) < 0 and both are orthogonal to
    # peer 2 -> v = (0, 0, 0) -> alpha 1 -> 0.99 -> every weight 1
    assert with_bias.weights.tolist() == [1, 1, 1]
    weights_only = FoolsGold(output_bias=False)(u, ctx_for(u))
    # weights only: cos(w0, w1) = 1 -> alpha 0 for both; peer 2 keeps weight 1 (the authors' feature)
    assert weights_only.weights.tolist() == [0, 0, 1]
    assert torch.allclose(weights_only.update, t([0, 1, 0]))
    with pytest.raises(ValueError, match="drop one of the two"):
        FoolsGold(use_output_layer=False, output_bias=False)
