"""FoolsGold against an independent implementation of Fung et al.'s Algorithm 1 (issue 12).

Fung, Yoon and Beschastnikh, "The Limitations of Federated Learning in Sybil Settings" (RAID
2020), Algorithm 1, as their released code computes it: the cosine matrix of the histories
*minus the identity* (so the diagonal is 0 and ``v_i = max_j cs_ij >= 0``), pardoning, the
weight ``1 - max_j cs_ij`` clipped to [0, 1], rescaling by the largest weight, 0.99 for the
ones, ``kappa * (logit + 0.5)`` clipped to [0, 1] (``inf`` -> 1).

:func:`fung_weights` below is written from that description with plain numpy loops, sharing
no code with :mod:`flhelpers.defenses.foolsgold` (which is vectorised torch). Deliberate
differences of flhelpers, kept out of the random comparison and tested on their own:

* cosines within 1e-9 of 1 count as exactly 1 in flhelpers (so that two identical histories
  are not told apart by rounding). The random histories have small integer entries, so two
  histories are either parallel (cosine 1 up to rounding) or have ``1 - cos > 1e-6``; the
  snapping changes a weight only when every pair of histories is parallel (or zero), the
  next case.
* all pairwise-parallel histories: every ``1 - max_j cs_ij`` is 0 (or rounding noise) and
  Fung's rescaling divides 0 by 0 (NaN weights) or rescales the noise to 1; flhelpers returns
  all zeros (nobody is trusted). The random comparison checks that on inputs whose largest
  reference weight before rescaling is below 1e-6, and
  :func:`test_all_identical_histories_get_zero_weights` pins it by hand.

Zero histories are no difference: both treat their cosine with anyone as 0 (scikit-learn's
``cosine_similarity``, which Fung et al.'s code calls, does the same).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flhelpers.defenses.foolsgold import foolsgold_weights

#: Issue 12's hand case: three similar histories and one pointing the other way.
HAND_HISTORIES = [[1.0, 0.1], [1.0, 0.2], [0.9, 0.1], [-1.0, -0.15]]


def _cosine_matrix(h: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarities; a zero row has cosine 0 with every row (as scikit-learn's
    ``cosine_similarity``, which Fung et al.'s code calls, treats zero rows)."""
    k = h.shape[0]
    cs = np.zeros((k, k))
    norms = [math.sqrt(float(np.dot(row, row))) for row in h]
    for i in range(k):
        for j in range(k):
            if norms[i] > 0 and norms[j] > 0:
                cs[i, j] = float(np.dot(h[i], h[j])) / (norms[i] * norms[j])
    return cs


def fung_raw_weights(histories: np.ndarray) -> np.ndarray:
    """Steps 1-3 of Algorithm 1: ``wv_i = clip(1 - max_j cs_ij, 0, 1)`` after pardoning."""
    h = np.asarray(histories, dtype=np.float64)
    k = h.shape[0]
    cs = _cosine_matrix(h)
    # minus the identity: cos(H_i, H_i) - 1 = 0 on the diagonal; written as an exact 0 because the
    # rounded 1 - 1 can be -1e-16 (and a zero row's "cosine" with itself is 0, not 1)
    np.fill_diagonal(cs, 0.0)
    v = cs.max(axis=1)
    for i in range(k):
        for j in range(k):
            if i != j and v[i] < v[j]:
                cs[i, j] = cs[i, j] * v[i] / v[j]
    wv = 1.0 - cs.max(axis=1)
    return np.minimum(np.maximum(wv, 0.0), 1.0)


def fung_weights(histories: np.ndarray, kappa: float = 1.0) -> np.ndarray:
    """Fung et al.'s Algorithm 1 (all steps). NaN weights when every raw weight is 0."""
    wv = fung_raw_weights(histories)
    with np.errstate(divide="ignore", invalid="ignore"):
        wv = wv / wv.max()
        wv[wv == 1.0] = 0.99
        out = kappa * (np.log(wv / (1.0 - wv)) + 0.5)
    out[np.isinf(out) & (out > 0)] = 1.0
    out[out > 1.0] = 1.0
    out[out < 0.0] = 0.0  # includes -inf (a raw weight of 0)
    return out


def _ours(histories, kappa: float = 1.0) -> np.ndarray:
    return foolsgold_weights(torch.tensor(histories, dtype=torch.float64), kappa).numpy()


def test_hand_case_a_dissimilar_peer_is_trusted():
    """cos(H_3, H_j) is about -0.999 for j = 0, 1, 2; the others' pairwise cosines are 0.995 to
    0.99994. With a 0 diagonal v_3 = 0, pardoning sets cs_3j = cs_3j * 0 / v_j = 0, so
    1 - max_j cs_3j = 1 and peer 3 alone gets weight 1; the three similar peers get
    1 - max_j cs_ij <= 0.0075, which the logit maps to 0."""
    expected = [0.0, 0.0, 0.0, 1.0]
    assert fung_weights(np.array(HAND_HISTORIES)).tolist() == expected
    assert _ours(HAND_HISTORIES).tolist() == expected


def test_all_identical_histories_get_zero_weights():
    """Deliberate difference: Fung et al. divide 0 by 0 (NaN); flhelpers trusts nobody."""
    h = np.array([[1.0, 2.0, 3.0]] * 3)
    assert np.isnan(fung_weights(h)).all()
    assert _ours(h).tolist() == [0.0, 0.0, 0.0]


@st.composite
def histories(draw) -> np.ndarray:
    """``K x d`` integer histories (K in 1..8, d in 1..6, entries in -5..5), with optional
    exact sybil copies, positive multiples (same direction, other length) and zero rows."""
    k = draw(st.integers(1, 8))
    d = draw(st.integers(1, 6))
    rows = [draw(st.lists(st.integers(-5, 5), min_size=d, max_size=d)) for _ in range(k)]
    h = np.array(rows, dtype=np.float64)
    for i in range(1, k):
        kind = draw(st.sampled_from(["own", "own", "copy", "multiple", "zero"]))
        j = draw(st.integers(0, i - 1))
        if kind == "copy":
            h[i] = h[j]
        elif kind == "multiple":
            h[i] = draw(st.integers(2, 4)) * h[j]
        elif kind == "zero":
            h[i] = 0.0
    return h


@settings(max_examples=400, deadline=None)
@given(h=histories(), kappa=st.sampled_from([1.0, 0.5, 2.0]))
def test_foolsgold_matches_fung_et_al(h, kappa):
    ours = _ours(h, kappa)
    assert ours.shape == (h.shape[0],) and ((ours >= 0) & (ours <= 1)).all()
    raw = fung_raw_weights(h)
    if raw.max() < 1e-6:
        # every pair parallel or zero: Fung's 0 / 0 (or rounding noise rescaled to 1);
        # flhelpers gives all zeros (see the module docstring), except a single peer
        assert ours.tolist() == ([1.0] if h.shape[0] == 1 else [0.0] * h.shape[0])
        return
    ref = fung_weights(h, kappa)
    np.testing.assert_allclose(ours, ref, atol=1e-7, rtol=0)


def test_property_inputs_exercise_pardoning_and_both_weight_extremes():
    """The random comparison is not vacuous: on a fixed sample of its inputs the pardoning
    changes some cosine, and weights of 0, 1 and strictly between occur."""
    rng = np.random.default_rng(0)
    pardoned = 0
    values = []
    for _ in range(300):
        k, d = int(rng.integers(3, 8)), int(rng.integers(2, 6))
        h = rng.integers(-5, 6, size=(k, d)).astype(np.float64)
        cs = _cosine_matrix(h)
        np.fill_diagonal(cs, 0.0)
        v = cs.max(axis=1)
        pardoned += int(any(v[i] < v[j] and cs[i, j] != 0 for i in range(k) for j in range(k) if i != j))
        if fung_raw_weights(h).max() >= 1e-6:
            values += _ours(h).tolist()
    values_arr = np.array(values)
    assert pardoned > 100
    assert (values_arr == 0).any() and (values_arr == 1).any() and ((values_arr > 0) & (values_arr < 1)).any()
