"""The defense interface: stacked updates in, an aggregate and the accepted peers out.

Conventions (all rules follow them):

* ``updates`` is a ``K x D`` float tensor; row ``k`` is peer ``k``'s update
  ``W_k^{t+1} - W^t`` (local model minus global model), over the model's trainable
  parameters in the order of :class:`flhelpers.params.ParamLayout`.
* The rule returns the aggregated update ``Delta``; the server sets ``W^{t+1} = W^t + Delta``.
* The *gradient* of the paper (LFighter, Algorithm 1) is ``(W^t - W_k^{t+1}) / lr = -update / lr``;
  :meth:`AggregationContext.gradients` computes it.
* ``accepted`` is a boolean mask over the K peers: ``False`` means the rule excluded the peer
  (or gave it zero weight). The detection metrics compare it with the true attackers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from flhelpers.params import ParamLayout


@dataclass
class AggregationContext:
    """What a rule may know besides the updates.

    Attributes:
        layout: where each parameter, and the output layer, sits in a row of ``updates``.
        num_classes: number of classes of the task (2 for IMDB, whose model has one output neuron).
        round: the training round, from 0.
        peer_ids: the global ids of the K peers whose updates are stacked, in row order.
        num_samples: each peer's local sample count, ``(K,)``; FedAvg weights by it.
        expected_attackers: ``f``, the number of attackers a rule may assume (Krum, Trimmed Mean).
        lr: the peers' learning rate ``eta``; gradients are ``-update / lr``.
        global_params: the flat global model ``W^t`` the peers started from, ``(D,)``.
        seed: a seed for the rule's own randomness (k-means initialisation), fixed per round.
    """

    layout: ParamLayout
    num_classes: int
    round: int = 0
    peer_ids: torch.Tensor | None = None
    num_samples: torch.Tensor | None = None
    expected_attackers: int = 0
    lr: float = 1.0
    global_params: torch.Tensor | None = None
    seed: int = 0

    def gradients(self, updates: torch.Tensor) -> torch.Tensor:
        """The paper's gradients ``(W^t - W_k^{t+1}) / eta = -update / eta``."""
        return -updates / self.lr


@dataclass
class AggregationResult:
    """A rule's answer.

    Attributes:
        update: the aggregated update ``Delta``, ``(D,)``.
        accepted: ``(K,)`` bool, the peers the rule used (nonzero weight).
        weights: ``(K,)`` the weights the rule gave each peer, where it is a weighted mean;
            ``None`` for coordinate-wise rules (median, trimmed mean).
        info: anything a user may want to inspect (scores, clusters), JSON-friendly.
        buffer_weights: ``(K,)`` the weights of the mean of the peers' BatchNorm statistics, where
            the rule sets them (the released LFighter: unweighted); ``None``: the sample counts of
            the accepted peers.
    """

    update: torch.Tensor
    accepted: torch.Tensor
    weights: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    buffer_weights: torch.Tensor | None = None


class Defense:
    """Base class of aggregation rules.

    Subclasses validate their parameters in ``__init__`` (errors at construction, never
    deep in a run) and implement :meth:`aggregate`. Stateful rules (FoolsGold) override
    :meth:`state_dict` and :meth:`load_state_dict` so a run can checkpoint and resume them.
    """

    name: ClassVar[str] = "defense"
    #: True when the rule needs ``expected_attackers`` (Krum, Trimmed Mean).
    needs_attacker_count: ClassVar[bool] = False

    def __call__(self, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
        if updates.dim() != 2:
            raise ValueError(f"updates must be K x D, got shape {tuple(updates.shape)}.")
        if updates.shape[0] == 0:
            raise ValueError("No updates to aggregate (K = 0).")
        return self.aggregate(updates, ctx)

    def aggregate(self, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
        raise NotImplementedError

    def validate(self, num_peers: int, expected_attackers: int) -> None:
        """Check, before training, that the rule can run with these numbers; raise ValueError."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def weighted_mean(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_k w_k u_k / sum_k w_k``; a zero vector when all weights are zero."""
    w = weights.to(updates.dtype)
    total = w.sum()
    if total <= 0:
        return torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device)
    return (w / total) @ updates


def sample_weights(ctx: AggregationContext, k: int, device: torch.device | None = None) -> torch.Tensor:
    """Each peer's sample count as a float weight, or ones when the context has none."""
    if ctx.num_samples is None:
        return torch.ones(k, device=device)
    return ctx.num_samples.to(device=device, dtype=torch.float32)


def mean_of_accepted(
    updates: torch.Tensor, ctx: AggregationContext, accepted: torch.Tensor, weighted: bool = True
) -> AggregationResult:
    """FedAvg over the accepted peers (weighted by sample count when ``weighted``)."""
    base = sample_weights(ctx, updates.shape[0], updates.device) if weighted else torch.ones(
        updates.shape[0], device=updates.device
    )
    w = base * accepted.to(base.dtype)
    return AggregationResult(update=weighted_mean(updates, w), accepted=accepted.clone(), weights=w)
