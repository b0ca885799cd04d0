"""LFighter's optional extra Procedure 1 passes (issue 20, section 3), on hand-made gradient rows."""

from __future__ import annotations

import numpy as np
import pytest

from flhelpers.defenses.lfighter import LFighter, filter_mild, filter_mild_passes


def _rows(seed: int = 0) -> np.ndarray:
    """9 peers, 4 output neurons, rows of 2 numbers: 5 honest peers with small rows, peers 5-6 flip
    0 -> 1 (large rows of neurons 0 and 1), peers 7-8 flip 2 -> 3 (large rows on neurons 2 and 3,
    a little smaller than the first pair's)."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(0.0, 0.05, size=(9, 4, 2))
    rows[5:7, 0] += [3.0, 0.0]
    rows[5:7, 1] += [0.0, -3.0]
    rows[7:9, 2] += [2.0, 0.0]
    rows[7:9, 3] += [0.0, -2.0]
    return rows


def test_one_pass_is_procedure_1_and_misses_the_second_pair():
    rows = _rows()
    bad, info = filter_mild_passes(rows, 1)
    assert info["source_target"] == [1, 0]  # largest first, as Procedure 1 orders them
    paper_bad, _ = filter_mild(rows[:, [1, 0], :].reshape(9, -1))
    assert bad.tolist() == paper_bad.tolist()
    assert np.flatnonzero(bad).tolist() == [5, 6]  # the 2 -> 3 flippers get through


def test_a_second_pass_clusters_the_kept_peers_on_the_next_two_neurons():
    bad, info = filter_mild_passes(_rows(), 2)
    assert np.flatnonzero(bad).tolist() == [5, 6, 7, 8]
    assert [sorted(p) for p in info["pass_neurons"]] == [[0, 1], [2, 3]] and info["pass_rejected"] == [2, 2]


def test_peeling_stops_on_neurons_seen_before():
    rows = _rows()
    rows[7:9] = rows[0]  # no second pair
    rows[:5, 0] += [0.5, 0.0]  # honest peers' rows of the flipped pair stay the largest
    rows[:5, 1] += [0.0, -0.5]
    bad, info = filter_mild_passes(rows, 3)
    assert np.flatnonzero(bad).tolist() == [5, 6] and len(info["pass_neurons"]) == 1
    assert info["stopped"].startswith("pass 2: neurons")


def test_peeling_never_leaves_half_of_the_peers_or_fewer():
    rows = _rows()
    bad, info = filter_mild_passes(rows[[0, 1, 5, 6, 7, 8]], 2)  # 2 honest, 2 + 2 attackers
    assert int((~bad).sum()) > 3 or "stopped" in info


def test_passes_are_checked_and_one_is_the_default():
    assert LFighter().passes == 1 and "passes" not in repr(LFighter())
    assert "passes=2" in repr(LFighter(passes=2))
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="passes must be a positive integer"):
            LFighter(passes=bad)
