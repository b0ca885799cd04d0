r"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS).

With $n$ updates of which at most $f$ are Byzantine, and $i \to j$ ranging over the
$n - f - 2$ updates nearest to $u_i$ *other than* $u_i$ itself (squared Euclidean distances):

$$
\operatorname{score}(i) = \sum_{i \to j} \lVert u_i - u_j \rVert^2
$$

* Krum returns the single update with the lowest score.
* Multi-Krum keeps the ``m`` updates with the lowest scores (``m = n - f`` by default, as
  in the paper) and returns their plain, unweighted mean, as Blanchard et al. define it
  (sample counts are not used).

Both need ``n > 2f + 2`` so that every score sums at least one distance and an honest
update always has more honest than Byzantine neighbours. Two defects of the LFighter
authors' code are not copied: it counted each update's zero distance to itself among
the neighbours, and its Multi-Krum kept ``n - f - 2`` updates instead of ``n - f``.
Ties in the score are broken by the lower row index.
"""

from __future__ import annotations

import torch

from flhelpers.defenses._robust_utils import pairwise_sq_distances
from flhelpers.defenses.base import AggregationContext, AggregationResult, Defense


def check_krum_sizes(num_peers: int, expected_attackers: int) -> None:
    """Raise ValueError unless ``n > 2f + 2`` (and ``f >= 0``)."""
    n, f = int(num_peers), int(expected_attackers)
    if f < 0:
        raise ValueError(f"Krum needs f >= 0 expected attackers, got f={f}.")
    if n <= 2 * f + 2:
        raise ValueError(
            f"Krum needs n > 2f + 2 (n peers, f expected attackers): got n={n}, f={f}; "
            "lower the attacker ratio or add peers."
        )


def krum_scores(updates: torch.Tensor, expected_attackers: int) -> torch.Tensor:
    """Each update's Krum score, ``(K,)`` float64: the sum of squared distances to its
    ``K - f - 2`` nearest other updates. A row holding NaN or +-Inf has no score (raw ranking
    would put a NaN score last and an infinite row's neighbours first): a ValueError names it,
    and the engine's guard drops such rows before the rule."""
    n = updates.shape[0]
    check_krum_sizes(n, expected_attackers)
    dist = pairwise_sq_distances(updates)
    dist.fill_diagonal_(float("inf"))  # exclude each update's zero distance to itself
    nearest = n - int(expected_attackers) - 2
    return torch.topk(dist, nearest, dim=1, largest=False).values.sum(dim=1)


def _select(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the ``m`` lowest scores, ties broken by the lower index, ascending by score."""
    order = torch.sort(scores, stable=True).indices
    return order[:m]


class Krum(Defense):
    """Krum: the single update with the lowest Krum score (needs ``n > 2f + 2``)."""

    name = "krum"
    needs_attacker_count = True

    def validate(self, num_peers: int, expected_attackers: int) -> None:
        check_krum_sizes(num_peers, expected_attackers)

    def _num_selected(self, num_peers: int, expected_attackers: int) -> int:
        return 1

    def aggregate(self, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
        n = updates.shape[0]
        scores = krum_scores(updates, ctx.expected_attackers)
        selected = _select(scores.to(updates.device), self._num_selected(n, ctx.expected_attackers))
        accepted = torch.zeros(n, dtype=torch.bool, device=updates.device)
        accepted[selected] = True
        weights = accepted.to(updates.dtype)
        # the plain mean of the selected rows, summed row by row: no m x D copy, and rows
        # left out never enter the arithmetic (a non-finite outlier cannot leak in as 0 * inf)
        update = updates[int(selected[0])].clone()
        for i in selected[1:].tolist():
            update += updates[i]
        update /= len(selected)
        return AggregationResult(
            update=update,
            accepted=accepted,
            weights=weights,
            info={"scores": scores.tolist(), "selected": selected.tolist()},
        )


class MultiKrum(Krum):
    """Multi-Krum: the plain mean of the ``m`` updates with the lowest Krum scores.

    Args:
        m: how many updates to keep; ``None`` (default) keeps ``n - f``. Must be >= 1, and
            at most ``n`` when the rule runs.
    """

    name = "multi-krum"

    def __init__(self, m: int | None = None) -> None:
        if m is not None:
            if isinstance(m, bool) or int(m) != m or m < 1:
                raise ValueError(f"MultiKrum needs an integer m >= 1 (or None for n - f), got m={m!r}.")
            m = int(m)
        self.m = m

    def validate(self, num_peers: int, expected_attackers: int) -> None:
        super().validate(num_peers, expected_attackers)
        self._num_selected(num_peers, expected_attackers)

    def _num_selected(self, num_peers: int, expected_attackers: int) -> int:
        if self.m is None:
            return num_peers - int(expected_attackers)
        if self.m > num_peers:
            raise ValueError(f"MultiKrum cannot keep m={self.m} updates out of n={num_peers}.")
        return self.m

    def __repr__(self) -> str:
        return f"MultiKrum(m={self.m})"
