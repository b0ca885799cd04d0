r"""Coordinate-wise trimmed mean (Yin et al. 2018, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML).

For every coordinate $j$ sort the $K$ values $u_{(1)j} \le \dots \le u_{(K)j}$ and drop $b$
from each end:

$$
\Delta_j = \frac{1}{K - 2b} \sum_{i = b+1}^{K-b} u_{(i)j}
$$

``b`` is the expected attacker count ``f`` (``ctx.expected_attackers``), or
``floor(beta * K)`` when ``beta`` is given. Edge cases, both defined rather than failing
(the authors' code returned an empty slice, i.e. NaN, when ``b == 0``):

* ``b == 0``: the plain (unweighted) mean;
* ``2b >= K``: nothing would be left, so the (true) coordinate-wise median is returned;
  at 50 % attackers the rule therefore equals :class:`~flhelpers.defenses.median.Median`.

Coordinate-wise, so every peer is accepted and ``weights`` is ``None``.
"""

from __future__ import annotations

import math

import torch

from flhelpers.defenses._robust_utils import check_finite_rows, sorted_column_blocks
from flhelpers.defenses.base import AggregationContext, AggregationResult, Defense
from flhelpers.defenses.median import coordinate_median


def coordinate_trimmed_mean(updates: torch.Tensor, trim: int) -> torch.Tensor:
    """Mean of each column after dropping its ``trim`` smallest and ``trim`` largest values.

    Raises a ValueError naming the rows when ``updates`` holds NaN or +-Inf (an order with NaN
    has no meaning; the engine's guard drops such rows first).
    """
    k = updates.shape[0]
    if trim < 0:
        raise ValueError(f"The number to trim must be >= 0, got {trim}.")
    if trim == 0:
        check_finite_rows(updates)
        return updates.mean(dim=0)
    if 2 * trim >= k:
        return coordinate_median(updates)
    out = torch.empty(updates.shape[1], dtype=updates.dtype, device=updates.device)
    for cols, block in sorted_column_blocks(updates):
        out[cols] = block[trim : k - trim].mean(dim=0)
    return out


class TrimmedMean(Defense):
    """Coordinate-wise trimmed mean dropping ``b`` values from each end.

    Args:
        beta: trim ``floor(beta * K)`` from each end, ``0 <= beta <= 0.5``. ``None`` (the
            default, as in the LFighter paper) trims the expected attacker count ``f``.
    """

    name = "trimmed-mean"
    needs_attacker_count = True

    def __init__(self, beta: float | None = None) -> None:
        if beta is not None:
            beta = float(beta)
            if not 0.0 <= beta <= 0.5 or math.isnan(beta):
                raise ValueError(f"TrimmedMean needs 0 <= beta <= 0.5, got beta={beta}.")
        self.beta = beta

    def trim_count(self, num_peers: int, expected_attackers: int) -> int:
        """``b``: the number of values dropped from each end of every coordinate."""
        if self.beta is not None:
            return int(math.floor(self.beta * num_peers))
        if expected_attackers < 0:
            raise ValueError(f"expected_attackers must be >= 0, got {expected_attackers}.")
        return int(expected_attackers)

    def validate(self, num_peers: int, expected_attackers: int) -> None:
        self.trim_count(num_peers, expected_attackers)

    def aggregate(self, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
        k = updates.shape[0]
        trim = self.trim_count(k, ctx.expected_attackers)
        accepted = torch.ones(k, dtype=torch.bool, device=updates.device)
        mode = "mean" if trim == 0 else ("median" if 2 * trim >= k else "trimmed")
        return AggregationResult(
            update=coordinate_trimmed_mean(updates, trim),
            accepted=accepted,
            info={"trim": trim, "mode": mode},
        )

    def __repr__(self) -> str:
        return f"TrimmedMean(beta={self.beta})"
