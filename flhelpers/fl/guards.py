"""Hostile and degenerate updates: what the engine does so that no update crashes a rule or poisons W.

:func:`guarded_aggregate` wraps every rule (NaN/Inf rows rejected before the rule, the rule's
expected attacker count fitted to the rows left, a non-finite aggregate discarded);
:func:`apply_update` refuses a step that would make the global model non-finite;
:func:`average_buffers` averages BatchNorm statistics over the accepted, finite peers only.
Each is a pure function of tensors, testable on a 3 x 2 matrix.
"""

from __future__ import annotations

import torch

from flhelpers.defenses.base import AggregationContext, AggregationResult, Defense
from flhelpers.defenses.median import coordinate_median


def feasible_attackers(defense: Defense, num_peers: int, expected: int) -> int | None:
    """The largest ``f' <= expected`` with which the rule can run on ``num_peers`` updates.

    ``None`` when not even ``f' = 0`` works (Krum-type rules need ``n > 2f' + 2``).
    """
    for f in range(max(int(expected), 0), -1, -1):
        try:
            defense.validate(num_peers, f)
            return f
        except ValueError:
            continue
    return None


def guarded_aggregate(defense: Defense, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
    """Run ``defense`` on ``updates`` so that no update, however hostile, crashes it or poisons ``W``.

    The defined behaviour, round by round:

    1. A row holding NaN or +-Inf is rejected before the rule sees it (``accepted = False``,
       so it counts as *detected*: a rejection is a positive); ``info["non_finite"]`` counts them.
    2. The rule runs on the finite rows, with ``expected_attackers`` lowered by the number of
       rejected rows (presumed to be attackers) and, if the rule cannot run with that many
       peers, to the largest ``f`` it accepts (:func:`feasible_attackers`).
    3. If the rule cannot run on the finite rows at all (Krum with ``n <= 2``, e.g. a single
       peer left), their coordinate-wise median is used instead (``info["fallback"]``): the
       update itself for one peer, the mean of two.
    4. No finite row: the zero update, nobody accepted (the global model does not move).
    5. Finite but huge values (``1e30``) are passed to the rule: robust rules discount them,
       FedAvg averages them in (its nature). Should the aggregate come out non-finite
       (overflow), it is discarded: the zero update, ``info["discarded"]`` says why, and the
       rule's ``accepted`` mask is kept for the detection metrics.

    The output update is therefore always finite. The engine also discards an update whose
    sum with the global model overflows (:func:`apply_update`).
    """
    k = updates.shape[0]
    finite = torch.isfinite(updates).all(dim=1).cpu()
    n_bad = int((~finite).sum())
    if n_bad == k:
        return AggregationResult(torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device),
                                 torch.zeros(k, dtype=torch.bool), None,
                                 {"non_finite": k, "reason": "every update is non-finite: no update"})
    keep = finite.nonzero().flatten()
    sub = updates if n_bad == 0 else updates[keep.to(updates.device)]
    expected = max(int(ctx.expected_attackers) - n_bad, 0)
    f = feasible_attackers(defense, len(keep), expected)
    sub_ctx = AggregationContext(**{
        **ctx.__dict__, "expected_attackers": expected if f is None else f,
        "peer_ids": None if ctx.peer_ids is None else ctx.peer_ids[keep],
        "num_samples": None if ctx.num_samples is None else ctx.num_samples[keep]})
    if f is None:
        inner = AggregationResult(coordinate_median(sub), torch.ones(len(keep), dtype=torch.bool),
                                  info={"fallback": f"coordinate-wise median: {defense!r} cannot run "
                                                    f"on {len(keep)} finite update(s)"})
    else:
        inner = defense(sub, sub_ctx)
    accepted = torch.zeros(k, dtype=torch.bool)
    accepted[keep] = inner.accepted.cpu().bool()
    weights = None
    if inner.weights is not None:
        weights = torch.zeros(k, dtype=inner.weights.dtype)
        weights[keep] = inner.weights.cpu()
    buffer_w = None
    if inner.buffer_weights is not None:
        buffer_w = torch.zeros(k, dtype=inner.buffer_weights.dtype)
        buffer_w[keep] = inner.buffer_weights.cpu()
    info = dict(inner.info)
    if n_bad:
        info["non_finite"] = n_bad
    if f is not None and f != expected:
        info["expected_attackers_used"] = f
    update = inner.update
    if not bool(torch.isfinite(update).all()):
        info["discarded"] = "the rule's aggregate is non-finite: no update this round"
        update = torch.zeros_like(update)
    return AggregationResult(update, accepted, weights, info, buffer_w)


def apply_update(global_params: torch.Tensor, result: AggregationResult) -> tuple[torch.Tensor, bool]:
    """``(W^t + Delta, discarded)``: ``W^t`` unchanged (``discarded`` True) when the sum is non-finite."""
    if result.info.get("discarded"):
        return global_params, True
    new = global_params + result.update.to(device=global_params.device, dtype=global_params.dtype)
    if not bool(torch.isfinite(new).all()):
        result.info["discarded"] = "W + update overflows: no update this round"
        return global_params, True
    return new, False


def buffer_weights(result: AggregationResult, num_samples: torch.Tensor) -> torch.Tensor:
    """The weights of the BatchNorm statistics' mean: the rule's ``buffer_weights`` where it sets them
    (the released LFighter: unweighted), else the peers' sample counts."""
    return num_samples if result.buffer_weights is None else result.buffer_weights


def average_buffers(global_buffers: torch.Tensor, buffers: torch.Tensor, num_samples: torch.Tensor,
                    accepted: torch.Tensor) -> torch.Tensor:
    """Sample-weighted mean of the accepted peers' float buffers (BatchNorm statistics).

    Peers whose buffers are non-finite are left out; with no such peer the buffers stay.
    """
    if not buffers.shape[1]:
        return global_buffers
    ok = accepted.cpu().bool() & torch.isfinite(buffers).all(dim=1).cpu()
    w = num_samples.to(buffers.dtype) * ok.to(buffers.dtype)
    if not w.sum() > 0:
        return global_buffers
    return (w.to(buffers.device) / w.sum()) @ torch.where(ok.to(buffers.device).unsqueeze(1), buffers,
                                                          torch.zeros_like(buffers))


def attackers_mean(updates: torch.Tensor, is_attacker: torch.Tensor, num_samples: torch.Tensor | None,
                   defense_result: AggregationResult) -> AggregationResult:
    """The step of a poisoned-start round (``ExperimentConfig.poisoned_rounds``): FedAvg over
    the attackers' finite updates only (McMahan et al. 2017, sample-weighted),

        Delta = sum_{k in A} n_k u_k / sum_{k in A} n_k,   A = {k : attacker, u_k finite},

    whatever the defense answered (``defense_result``, whose ``info`` is kept, with
    ``info["poisoned_start"]`` added). ``accepted`` is ``A`` (the BatchNorm statistics are
    averaged over it too); with ``A`` empty the update is zero and nobody is accepted.
    ``num_samples`` ``None`` weighs every peer 1.
    """
    k = updates.shape[0]
    attackers = torch.as_tensor(is_attacker, dtype=torch.bool).cpu().reshape(-1)
    if attackers.numel() != k:
        raise ValueError(f"attackers_mean got {k} updates but {attackers.numel()} attacker flags.")
    used = attackers & torch.isfinite(updates).all(dim=1).cpu()
    n = torch.ones(k, dtype=torch.float64) if num_samples is None else num_samples.cpu().to(torch.float64)
    weights = n * used.to(torch.float64)
    update = torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device)
    if weights.sum() > 0:
        rows = used.nonzero().flatten()
        w = (weights[rows] / weights[rows].sum()).to(device=updates.device, dtype=updates.dtype)
        update = w @ updates[rows.to(updates.device)]
    info = {**defense_result.info, "poisoned_start": f"FedAvg over {int(used.sum())} attacker update(s); "
                                                     f"the defense's aggregate was discarded"}
    return AggregationResult(update, used, weights.to(torch.float32), info)
