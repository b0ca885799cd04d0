r"""FedAvg (McMahan et al. 2017): the sample-weighted mean of the updates.

$$
\Delta = \frac{\sum_k n_k u_k}{\sum_k n_k}
$$

with $u_k$ peer $k$'s update and $n_k$ its sample count.

The authors' released code averages without weights; that is available as
``FedAvg(weighted=False)``. Every peer is accepted.
"""

from __future__ import annotations

import torch

from flhelpers.defenses.base import AggregationContext, AggregationResult, Defense, mean_of_accepted


class FedAvg(Defense):
    """Mean of the updates, weighted by each peer's sample count unless ``weighted=False``."""

    name = "fedavg"

    def __init__(self, weighted: bool = True) -> None:
        self.weighted = bool(weighted)

    def aggregate(self, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
        accepted = torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
        return mean_of_accepted(updates, ctx, accepted, weighted=self.weighted)

    def __repr__(self) -> str:
        return f"FedAvg(weighted={self.weighted})"
