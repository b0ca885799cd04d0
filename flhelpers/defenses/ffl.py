r"""Fragmented Federated Learning (FFL): pairwise mixing of updates, and its reputation defense.

Seed: ``ffl-readme.md`` ("Enhanced Security and Privacy via Fragmented Federated Learning",
Jebreel, Domingo-Ferrer, Blanco-Justicia, Sanchez). the paper's related systems.

Mixing (:func:`mix_pairs`): the selected peers pair up at random; the two peers of a pair
swap a random half of their update coordinates. With a fresh mask $m \sim \mathrm{Bernoulli}(0.5)^d$
per pair (and per tensor when a layout is given), $\odot$ the coordinate-wise product:

$$
u_a' = m \odot u_b + (1 - m) \odot u_a, \qquad u_b' = m \odot u_a + (1 - m) \odot u_b
$$

Every coordinate keeps its place, so $u_a' + u_b' = u_a + u_b$ and the sum (hence FedAvg's
unweighted mean) of all updates is unchanged, while the server no longer sees any one
peer's update. With an odd number of mixing peers the peer left over swaps with one randomly
chosen, already mixed peer (the original drops nobody either; we make it explicit), so it is
hidden as well.

Who declines to mix is a peer's choice, not the server's: the engine asks the attack
(:meth:`flhelpers.attacks.base.Attack.refuses_mixing`; ``attack_kwargs={"mix": False}`` makes the
attackers send their own update unmixed, FFL's second attacker strategy) and the rules read the
answer from :attr:`ServerView.refuses_mixing <flhelpers.defenses.base.ServerView>`. The rules here
have no notion of who attacks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from flhelpers.defenses.base import (AggregationContext, AggregationResult, Defense, Screening, ServerView,
                                     Transformed, as_screening, weighted_mean)
from flhelpers.params import ParamLayout


def _bernoulli_half(numel: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A ``(numel,)`` bool mask, each entry True with probability 0.5, from ``generator``."""
    return (torch.rand(numel, generator=generator, device=generator.device) < 0.5).to(device)


def swap_mask(dim: int, generator: torch.Generator, layout: ParamLayout | None = None,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """The ``(dim,)`` bool mask of coordinates one pair swaps: Bernoulli(0.5) per coordinate.

    With a ``layout`` the mask is drawn tensor by tensor, in the layout's order (one fresh
    mask per tensor, as FFL mixes a model tensor by tensor); else in one draw.
    """
    device = torch.device(device)
    if layout is None:
        return _bernoulli_half(dim, generator, device)
    if layout.dim != dim:
        raise ValueError(
            f"The layout describes {layout.dim} parameters but the updates have {dim}; "
            f"pass the layout of the model that produced the updates."
        )
    parts = [_bernoulli_half(layout.slice_of(n).stop - layout.slice_of(n).start, generator, device)
             for n in layout.names]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool, device=device)


def pair_up(participants: list[int], generator: torch.Generator) -> list[tuple[int, int]]:
    """Random pairs of ``participants`` (row indices); an odd one out pairs with a paired peer.

    The pairs come in the order the swaps are applied: first the disjoint pairs of a random
    permutation, then, for an odd count, ``(left_over, random already-paired peer)``.
    Fewer than two participants give no pairs.
    """
    n = len(participants)
    if n < 2:
        return []
    perm = torch.randperm(n, generator=generator, device=generator.device).tolist()
    order = [participants[i] for i in perm]
    pairs = [(order[2 * i], order[2 * i + 1]) for i in range(n // 2)]
    if n % 2 == 1:
        j = int(torch.randint(n - 1, (1,), generator=generator, device=generator.device).item())
        pairs.append((order[-1], order[j]))
    return pairs


def mix_pairs(updates: torch.Tensor, generator: torch.Generator, layout: ParamLayout | None = None,
              unmixed: torch.Tensor | None = None) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """FFL mixing: pair the rows at random and swap a random half of each pair's coordinates.

    Args:
        updates: ``K x D`` updates (row ``k`` = peer ``k``); not modified.
        generator: the source of every random choice (pairing and masks); seed it per round.
        layout: when given, one fresh Bernoulli(0.5) mask per pair **and tensor**; else one
            mask over the whole row.
        unmixed: ``(K,)`` bool, rows that do not take part (e.g. attackers that refuse to mix);
            they are returned unchanged and paired with nobody.

    Returns:
        ``(mixed, pairs)``: the ``K x D`` mixed updates, and the ``(row_a, row_b)`` pairs in
        the order their swaps were applied. For each pair, with mask ``m``:
        ``a' = where(m, b, a)``, ``b' = where(m, a, b)``, so ``a' + b' = a + b`` exactly and
        ``mixed.sum(0) == updates.sum(0)`` (up to float addition order).
    """
    if updates.dim() != 2:
        raise ValueError(f"updates must be K x D, got shape {tuple(updates.shape)}.")
    k, d = updates.shape
    if unmixed is None:
        unmixed = torch.zeros(k, dtype=torch.bool)
    unmixed = torch.as_tensor(unmixed, dtype=torch.bool).cpu()
    if unmixed.shape != (k,):
        raise ValueError(
            f"unmixed must be a ({k},) bool mask, one entry per update row; got shape "
            f"{tuple(unmixed.shape)}."
        )
    participants = [i for i in range(k) if not bool(unmixed[i])]
    pairs = pair_up(participants, generator)
    mixed = updates.clone()
    for a, b in pairs:
        m = swap_mask(d, generator, layout, device=updates.device)
        row_a, row_b = mixed[a].clone(), mixed[b].clone()
        mixed[a] = torch.where(m, row_b, row_a)
        mixed[b] = torch.where(m, row_a, row_b)
    return mixed, pairs


# ---------------------------------------------------------------------------------------------
# FFL's reputation defense
# ---------------------------------------------------------------------------------------------

def norm_closeness(norms: torch.Tensor) -> torch.Tensor:
    """How close each norm is to the median norm ``m``: ``min(n_k, m) / max(n_k, m)`` in [0, 1].

    1 when ``n_k = m``; falls to 0 as the norm goes to 0 or grows without bound (a scaled or
    noisy update). The seed does not print its closeness formula; this bounded ratio is our
    reading of "closeness of its norm to the median norm". ``m`` is the true median.
    """
    sorted_n = torch.sort(norms).values
    k = len(sorted_n)
    med = sorted_n[k // 2] if k % 2 else (sorted_n[k // 2 - 1] + sorted_n[k // 2]) / 2
    hi = torch.maximum(norms, med)
    lo = torch.minimum(norms, med)
    return torch.where(hi > 0, lo / torch.where(hi > 0, hi, torch.ones_like(hi)), torch.ones_like(hi))


def ffl_scores(updates: torch.Tensor, layout: ParamLayout, norm_weight: float = 0.2,
               cosine_weight: float = 0.8) -> torch.Tensor:
    """FFL's raw score of each (mixed) update, ``(K,)`` float64:

        score_k = 0.2 * closeness(||u_k||, median_j ||u_j||)
                + 0.8 * cos(out(u_k), out(median(u_1..u_K)))

    where ``out`` takes the output layer's weights and bias and ``median`` is coordinate-wise.
    A zero output layer has cosine 0.
    """
    from flhelpers.defenses.median import coordinate_median

    u = updates.detach().to(torch.float64)
    closeness = norm_closeness(u.norm(dim=1))
    out = layout.output_layer(u)
    ref = layout.output_layer(coordinate_median(u))
    denom = out.norm(dim=1) * ref.norm()
    cos = torch.where(denom > 0, (out @ ref) / torch.where(denom > 0, denom, torch.ones_like(denom)),
                      torch.zeros_like(denom))
    return (norm_weight * closeness + cosine_weight * cos).cpu()


def contributors(peer_ids: list[int], pairs: list[tuple[int, int]]) -> dict[int, frozenset[int]]:
    """For each peer, the peers whose coordinates its mixed update carries (itself included).

    ``pairs`` are row pairs in the order :func:`mix_pairs` applied them; each swap merges the
    two rows' sets (an odd peer out that swaps with a mixed peer carries three peers' parts).
    """
    sets = {row: frozenset([pid]) for row, pid in enumerate(peer_ids)}
    for a, b in pairs:
        merged = sets[a] | sets[b]
        sets[a] = sets[b] = merged
    return {peer_ids[row]: s for row, s in sets.items()}


def _quantile(values: np.ndarray, q: float) -> float:
    return float(np.quantile(np.asarray(values, dtype=np.float64), q))


@dataclasses.dataclass(frozen=True)
class Mixing:
    """A round's mixing, as :meth:`FFL.transform_updates` hands it to the aggregate: for each
    peer, the peers whose coordinates its mixed row carries (:func:`contributors`), and the pairs
    of peer ids in the order their swaps were applied."""

    carried: dict[int, frozenset[int]]
    pairs: list[tuple[int, int]]


def mix_round(view: ServerView, per_tensor: bool, seed: int | None) -> tuple[torch.Tensor, Mixing]:
    """FFL's mixing of the round's updates (``view.updates``, rows in ``view.candidates`` order):
    :func:`mix_pairs` with the generator ``(seed, "ffl-mix", round)`` (``seed`` ``None``: the
    run's), one mask per tensor when ``per_tensor``; the peers in ``view.refuses_mixing`` keep
    their own rows."""
    from flhelpers.seeding import torch_generator

    if view.updates is None:
        raise ValueError("FFL's mixing needs the round's updates: the view has none.")
    run_seed = int(view.seed) if seed is None else int(seed)
    mixed, pairs = mix_pairs(view.updates, torch_generator(run_seed, "ffl-mix", view.round),
                             view.layout if per_tensor else None, view.refuses_mixing)
    ids = [int(p) for p in view.candidates]
    return mixed, Mixing(contributors(ids, pairs), [(ids[a], ids[b]) for a, b in pairs])


class FFL(Defense):
    """Fragmented FL: pairwise mixing (:func:`mix_pairs`) and reputation-based selection.

    Per round ``t`` (engine hooks in order):

    1. ``select_peers``: from round ``warmup`` on, the candidates whose reputation lies in the
       bottom quartile (``R_k < Q1``, ``Q1`` the 25th percentile of the candidates'
       reputations, linear interpolation) are not selected.
    2. ``transform_updates``: the selected peers mix their updates pairwise
       (:func:`mix_pairs`, a fresh Bernoulli(0.5) mask per pair and tensor); the peers that
       decline (``view.refuses_mixing``: the attackers under ``attack_kwargs={"mix": False}``,
       the second attacker strategy) send their own update unmixed. By default all mix.
    3. ``aggregate``: each mixed update gets :func:`ffl_scores`, shifted by the 25th percentile
       of the round's scores, ``s_k = score_k - Q1(score)``. A mixed update carries parts of
       the peer's and its partner's updates, so both are credited: every peer ``j`` adds to
       its reputation the mean of ``s_k`` over the mixed updates ``k`` that carry part of its
       update (for a pair ``(a, b)``: ``R_a += (s_a + s_b) / 2`` and likewise ``R_b``; an
       unmixed update credits only its sender). Before round ``warmup`` the aggregate is the
       coordinate-wise median of the mixed updates and nobody is rejected. From then on it is
       ``sum_k w_k u_k / sum_k w_k`` with ``w_k = max(0, tanh(R_k - Q1))`` (``R_k`` after this
       round's credit, ``Q1`` the threshold of step 1); a peer with ``w_k = 0`` is rejected.
       If every weight is 0 the median is used.

    Reputations persist across rounds (:meth:`state_dict`). Step 1's ``Q1`` and step 2's pairs
    reach step 3 in the hooks' answers (``ctx.screening``, ``ctx.transform``). Used without the
    engine, only :meth:`aggregate` is needed: rows are then treated as unmixed and ``Q1`` is
    computed from the reputations of the round's peers.

    **Our reading.** The seed (``ffl-readme.md``) gives no formula; the score's two
    ingredients, the warm-up with the median, the bottom-quartile selection and the ``tanh``
    weights are as above by our choice of formulas. The public code of the repository whose
    README is the seed (``anonymized30/FFL``) differs in ways we do not reproduce: each peer
    also keeps its own reputation of its partners and, after the warm-up, refuses to mix with
    partners in its bottom quartile, and only exchanged updates are aggregated (so an attacker
    nobody mixes with drops out, and honest rows stop carrying its noise); its score is
    ``0.2 (1 - |n_k - m| / max_j |n_j - m|) + 0.8 (cos + 1) / 2``; each peer is credited with
    its own mixed row's score; ``Q1`` is taken over all peers. Consequence of our reading: with
    more attackers than a quarter of the peers some stay selected, and the honest partner of
    one carries half of its update with full weight (the Related notebook's trace shows it).

    Args:
        warmup: rounds before reputation selects and weights (default 20, as FFL).
        norm_weight, cosine_weight: the score's weights (0.2 and 0.8).
        per_tensor: one mask per pair and tensor (True) or one per pair over the whole update.
        seed: the mixing seed; ``None`` uses the run's seed (``view.seed``).

    Whether attackers mix was ``attackers_mix`` here before; it is the attack's choice
    now: ``attack_kwargs={"mix": False}`` (the same runs, under another run id).
    """

    name = "ffl"

    def __init__(self, warmup: int = 20, norm_weight: float = 0.2, cosine_weight: float = 0.8,
                 per_tensor: bool = True, seed: int | None = None) -> None:
        if isinstance(warmup, bool) or int(warmup) != warmup or warmup < 0:
            raise ValueError(f"FFL needs an integer warmup >= 0 (rounds before selection), got {warmup!r}.")
        for label, w in (("norm_weight", norm_weight), ("cosine_weight", cosine_weight)):
            if not 0.0 <= float(w) < float("inf"):
                raise ValueError(f"FFL needs a finite {label} >= 0, got {w}.")
        if float(norm_weight) + float(cosine_weight) <= 0:
            raise ValueError("FFL needs norm_weight + cosine_weight > 0, or every score is 0.")
        self.warmup = int(warmup)
        self.norm_weight, self.cosine_weight = float(norm_weight), float(cosine_weight)
        self.per_tensor = bool(per_tensor)
        self.seed = seed
        self.reputation: dict[int, float] = {}

    # -- step 1 -----------------------------------------------------------------------------
    def selection_threshold(self, candidates: np.ndarray) -> float:
        """``Q1``: the 25th percentile of the candidates' reputations (0 for a new peer)."""
        return _quantile([self.reputation.get(int(k), 0.0) for k in candidates], 0.25)

    def select_peers(self, view: ServerView) -> Screening:
        """Drop the bottom reputation quartile from round ``warmup`` on; the note is ``Q1``
        (``None`` during the warm-up)."""
        candidates = np.asarray(view.candidates, dtype=np.int64)
        if view.round < self.warmup:
            return Screening(candidates)
        q1 = self.selection_threshold(candidates)
        rep = np.array([self.reputation.get(int(k), 0.0) for k in candidates])
        return Screening(candidates[rep >= q1], q1)

    # -- step 2 -----------------------------------------------------------------------------
    def transform_updates(self, view: ServerView) -> Transformed:
        """Mix the selected peers' updates pairwise; the note (:class:`Mixing`) says who carries
        whose coordinates."""
        mixed, mixing = mix_round(view, self.per_tensor, self.seed)
        return Transformed(mixed, mixing)

    # -- step 3 -----------------------------------------------------------------------------
    def aggregate(self, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
        from flhelpers.defenses.median import coordinate_median

        k = updates.shape[0]
        ids = list(range(k)) if ctx.peer_ids is None else [int(i) for i in ctx.peer_ids.tolist()]
        q1 = ctx.screening if isinstance(ctx.screening, float) else self.selection_threshold(np.array(ids))
        raw = ffl_scores(updates, ctx.layout, self.norm_weight, self.cosine_weight)
        shifted = raw - _quantile(raw.numpy(), 0.25)
        mixing = ctx.transform if isinstance(ctx.transform, Mixing) else None
        carried = {pid: (mixing.carried.get(pid, frozenset([pid])) if mixing else frozenset([pid])) for pid in ids}
        credit: dict[int, list[float]] = {}
        for row, pid in enumerate(ids):
            for j in carried[pid]:
                credit.setdefault(j, []).append(float(shifted[row]))
        for j, s in credit.items():
            self.reputation[j] = self.reputation.get(j, 0.0) + float(np.mean(s))
        info = {"scores": raw.tolist(), "shifted_scores": shifted.tolist(),
                "pairs": mixing.pairs if mixing else [], "q1": q1,
                "reputation": [self.reputation[pid] for pid in ids]}
        if ctx.round < self.warmup:
            accepted = torch.ones(k, dtype=torch.bool, device=updates.device)
            return AggregationResult(coordinate_median(updates), accepted, None, {**info, "mode": "median"})
        rep = torch.tensor([self.reputation[pid] for pid in ids], dtype=torch.float64)
        w = torch.clamp(torch.tanh(rep - q1), min=0.0)
        if not bool((w > 0).any()):
            accepted = torch.ones(k, dtype=torch.bool, device=updates.device)
            return AggregationResult(coordinate_median(updates), accepted, None,
                                     {**info, "mode": "median (all weights 0)"})
        weights = w.to(device=updates.device, dtype=updates.dtype)
        return AggregationResult(weighted_mean(updates, weights), weights > 0, weights,
                                 {**info, "mode": "reputation"})

    def state_dict(self) -> dict[str, Any]:
        ids = sorted(self.reputation)
        return {"peer_ids": torch.tensor(ids, dtype=torch.long),
                "reputation": torch.tensor([self.reputation[i] for i in ids], dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ids = torch.as_tensor(state["peer_ids"]).tolist()
        rep = torch.as_tensor(state["reputation"], dtype=torch.float64).tolist()
        if len(ids) != len(rep):
            raise ValueError(f"FFL state has {len(ids)} peer ids but {len(rep)} reputations.")
        self.reputation = {int(i): float(r) for i, r in zip(ids, rep)}

    def __repr__(self) -> str:
        return f"FFL(warmup={self.warmup}, norm_weight={self.norm_weight}, cosine_weight={self.cosine_weight})"


class MixThenAggregate(Defense):
    """FFL's mixing in front of any other rule: ``inner(mix_pairs(updates))``.

    Mixing keeps the sum of the updates, so the unweighted mean is unchanged; robust rules
    see mixed rows instead of peers' own updates. Detection counts refer to mixed rows.

    Args:
        inner: the registered name of the rule that aggregates the mixed updates (default fedavg).
        inner_kwargs: its keyword arguments.
        per_tensor, seed: as for :class:`FFL` (whether attackers mix: :class:`FFL`'s note).
    """

    name = "ffl-mixing"

    def __init__(self, inner: str = "fedavg", inner_kwargs: dict[str, Any] | None = None,
                 per_tensor: bool = True, seed: int | None = None) -> None:
        from flhelpers.registry import DEFENSES

        if str(inner).strip().lower() in (self.name, FFL.name):
            raise ValueError(f"ffl-mixing cannot wrap {inner!r}; choose a plain rule such as fedavg or median.")
        self.inner_name = inner
        self.inner = DEFENSES.get(inner)(**(inner_kwargs or {}))
        self.needs_attacker_count = self.inner.needs_attacker_count
        self.per_tensor, self.seed = bool(per_tensor), seed

    def validate(self, num_peers: int, expected_attackers: int) -> None:
        self.inner.validate(num_peers, expected_attackers)

    def select_peers(self, view: ServerView) -> Screening:
        """The inner rule's screening, if it has one (its note is passed on to it)."""
        inner_select = getattr(self.inner, "select_peers", None)
        if inner_select is not None:
            return as_screening(inner_select(view))
        return Screening(np.asarray(view.candidates, dtype=np.int64))

    def transform_updates(self, view: ServerView) -> Transformed:
        """FFL's mixing (:func:`mix_round`); the inner rule aggregates the mixed rows as they are."""
        mixed, _ = mix_round(view, self.per_tensor, self.seed)
        return Transformed(mixed)

    def aggregate(self, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
        return self.inner(updates, ctx)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def __repr__(self) -> str:
        return f"MixThenAggregate(inner={self.inner!r})"
