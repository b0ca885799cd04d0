r"""Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML).

$$
\Delta_j = \operatorname{median}(u_{1j}, \dots, u_{Kj}) \quad \text{for every coordinate } j
$$

For an even ``K`` this is the true median, the mean of the two middle values
(``torch.median`` returns the lower one; numpy and Flower's ``aggregate_median`` use the
true median). Each coordinate may come from a different peer, so no peer is excluded:
``accepted`` is all True and ``weights`` is ``None``.
"""

from __future__ import annotations

import torch

from flhelpers.defenses._robust_utils import DEFAULT_BLOCK_ELEMENTS, median_of_sorted, sorted_column_blocks
from flhelpers.defenses.base import AggregationContext, AggregationResult, Defense


def coordinate_median(updates: torch.Tensor, block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> torch.Tensor:
    """The true coordinate-wise median of a ``K x D`` matrix, ``(D,)``, computed block by block.

    Raises a ValueError naming the rows when ``updates`` holds NaN or +-Inf: NaN has no place
    in an order, so a median taken anyway would be a finite number without meaning (the
    engine's guard, :func:`flhelpers.fl.guards.guarded_aggregate`, drops such rows first).
    """
    out = torch.empty(updates.shape[1], dtype=updates.dtype, device=updates.device)
    for cols, block in sorted_column_blocks(updates, block_elements):  # checks each block
        out[cols] = median_of_sorted(block, dim=0, allow_non_finite=True)
    return out


class Median(Defense):
    """Coordinate-wise (true) median of the updates; every peer is accepted. Non-finite
    updates raise a ValueError (:func:`coordinate_median`)."""

    name = "median"

    def aggregate(self, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
        accepted = torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
        return AggregationResult(update=coordinate_median(updates), accepted=accepted)
