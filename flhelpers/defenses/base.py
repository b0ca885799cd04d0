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

The hooks. Every rule aggregates (:class:`AggregationHook`); a rule may also screen
the round's peers before they train (:class:`ScreeningHook`: user elimination, FFL's reputation)
and transform the sent updates before its aggregate (:class:`TransformHook`: FFL's mixing). The
two extra hooks see a :class:`ServerView`, what a server knows of the round, never the run's
``Experiment`` nor who the attackers are. What a hook computes for the same round's aggregate
travels in its answer (:attr:`Screening.note`, :attr:`Transformed.note`), which the engine hands
to the aggregate as :attr:`AggregationContext.screening` and :attr:`AggregationContext.transform`;
state kept across rounds (FoolsGold's history, FFL's reputations) is the rule's own
(:meth:`Defense.state_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import numpy as np
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
        screening: the note of the rule's ``select_peers`` this round (:attr:`Screening.note`);
            ``None`` without one (the rule used alone, or a hook that noted nothing).
        transform: the note of the rule's ``transform_updates`` this round (:attr:`Transformed.note`).
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
    screening: Any = None
    transform: Any = None

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


@dataclass(frozen=True)
class ServerView:
    """What the server knows of a round, as the screening and transforming hooks see it.

    Attributes:
        round: the training round, from 0.
        candidates: ``(m,)`` int64 peer ids: for ``select_peers`` the round's drawn peers, in
            increasing order; for ``transform_updates`` the peers whose rows ``updates`` holds, in
            row order.
        global_params: the flat global model ``W^t``, ``(D,)``.
        global_buffers: its flat float buffers (BatchNorm statistics), ``(B,)``, possibly empty.
        layout: where each tensor of the model lies in ``global_params`` and in a row of ``updates``.
        seed: the run's seed; a rule derives its own randomness from it and the round.
        sampling_rate: ``q = m / K``, the share of the peers drawn each round (1 when all are).
        updates: the ``(m, D)`` updates as the peers sent them (``transform_updates`` only).
        refuses_mixing: ``(m,)`` bool, the peers that decline to mix their update with a partner
            (a peer's behaviour in a mixing protocol such as FFL's, set by the attack:
            ``attack_kwargs={"mix": False}``); ``None``: every peer takes part.
        peer_losses: the server's question to the peers (``select_peers`` in the engine):
            ``peer_losses(ids)`` returns each peer's mean loss of the global model on its local
            data, ``(len(ids),)`` float64, as the peer computes it (its labels as it holds them).
            ``None`` where no peer can be asked.
    """

    round: int
    candidates: np.ndarray
    global_params: torch.Tensor
    global_buffers: torch.Tensor
    layout: ParamLayout
    seed: int = 0
    sampling_rate: float = 1.0
    updates: torch.Tensor | None = None
    refuses_mixing: torch.Tensor | None = None
    peer_losses: Callable[[np.ndarray], np.ndarray] | None = None


@dataclass(frozen=True)
class Screening:
    """A ``select_peers`` answer: the ``kept`` peer ids, and a ``note`` for the round's aggregate."""

    kept: np.ndarray
    note: Any = None


@dataclass(frozen=True)
class Transformed:
    """A ``transform_updates`` answer: the ``(m, D)`` rows to aggregate, and a ``note`` for the aggregate."""

    updates: torch.Tensor
    note: Any = None


@runtime_checkable
class ScreeningHook(Protocol):
    """A rule that drops peers before they train (user elimination, FFL's reputation).

    The kept ids must be a subset of ``view.candidates``; dropped peers count as rejected in the
    detection metrics. A bare array of ids is taken as ``Screening(kept)``.
    """

    def select_peers(self, view: ServerView) -> Screening: ...


@runtime_checkable
class TransformHook(Protocol):
    """A rule that changes the sent updates before its aggregate (FFL's mixing): one row per
    peer of ``view.candidates``, in the same order. A bare tensor is taken as ``Transformed(updates)``."""

    def transform_updates(self, view: ServerView) -> Transformed: ...


@runtime_checkable
class AggregationHook(Protocol):
    """What every rule does: the aggregate of the round's ``K x D`` updates."""

    def aggregate(self, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult: ...


#: the hooks the engine calls, by method name, with the Protocol each must follow
HOOKS: dict[str, type] = {"select_peers": ScreeningHook, "transform_updates": TransformHook,
                          "aggregate": AggregationHook}


def as_screening(answer: Screening | np.ndarray | Any) -> Screening:
    """A ``select_peers`` answer as a :class:`Screening` (a bare sequence of ids: no note)."""
    if isinstance(answer, Screening):
        return Screening(np.asarray(answer.kept, dtype=np.int64), answer.note)
    return Screening(np.asarray(answer, dtype=np.int64))


def as_transformed(answer: Transformed | torch.Tensor) -> Transformed:
    """A ``transform_updates`` answer as a :class:`Transformed` (a bare tensor: no note)."""
    return answer if isinstance(answer, Transformed) else Transformed(answer)


class Defense:
    """Base class of aggregation rules.

    Subclasses validate their parameters in ``__init__`` (errors at construction, never
    deep in a run) and implement :meth:`aggregate` (:class:`AggregationHook`); a rule that screens
    peers or transforms updates also defines ``select_peers`` (:class:`ScreeningHook`) or
    ``transform_updates`` (:class:`TransformHook`). The base class defines neither, so whether a
    rule has them says whether it acts inside the simulation (the Flower strategy refuses such
    rules). Stateful rules (FoolsGold) override
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
