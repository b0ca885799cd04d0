r"""FoolsGold (Fung, Yoon and Beschastnikh 2020, "The Limitations of Federated Learning in
Sybil Settings", RAID; Algorithm 1).

Sybils that pursue the same poisoning goal send similar updates round after round, so
FoolsGold down-weights peers whose *update histories* are too similar. Per peer $i$
(keyed by its global id, ``ctx.peer_ids``) the rule keeps the history, the sum of peer $i$'s
output-layer updates over the rounds so far:

$$
H_i = \sum_{t' \le t} u_i^{(t')}
$$

(the output layer's weights and bias, as in the LFighter paper's comparison;
``use_output_layer=False`` uses the whole update; ``output_bias=False`` keeps the output layer's
weights only, the feature of the authors' code, which scores ``fc2.weight`` without its bias; it is an
option, never the default: an earlier study found the feature definition moves the attackers' weight
share by 0.03-0.06 only. Their code also sums the raw minibatch gradients of the local steps rather
than the update; with momentum and weight decay the two differ in more than a scale, which FoolsGold's
cosines would ignore). Each round, for the peers present:

1. $cs_{ij} = \cos(H_i, H_j)$ for $i \ne j$ and $cs_{ii} = 0$; $v_i = \max_j cs_{ij}$, so
   $v_i \ge 0$. (Fung et al.'s code subtracts the identity from the cosine matrix, putting 0 on
   the diagonal. Excluding the diagonal instead lets $v_i$ go negative, and a peer whose most
   similar peer is dissimilar would then get $cs_{ij} v_i / v_j > 0$ from the pardoning and be
   penalised as a sybil.)
2. Pardoning: if $v_j > v_i$ then $cs_{ij} \leftarrow cs_{ij} \, v_i / v_j$.
3. $\alpha_i = 1 - \max_j cs_{ij}$, clipped to $[0, 1]$.
4. $\alpha \leftarrow \alpha / \max(\alpha)$; $\alpha_i = 0.99$ where $\alpha_i = 1$.
5. $\alpha_i \leftarrow \kappa \bigl(\ln(\alpha_i / (1 - \alpha_i)) + 0.5\bigr)$; values that are infinite
   or above 1 become 1, negative values become 0.

The aggregate is the $\alpha$-weighted mean of the *current* updates,
$\Delta = \sum_i \alpha_i u_i / \sum_i \alpha_i$. (FoolsGold's reference code scales each
update by ``alpha_i`` and divides by the number of peers, which also shrinks the step
size; we normalise by the weights, the convention of every weighted rule here. Sample
counts are not used.) ``accepted`` is ``alpha > 0``.

Defined edge cases (the reference code gives NaN): a single peer has no one to resemble
and gets weight 1; when every ``alpha`` in step 3 is 0 (all histories pairwise
identical, i.e. all peers look like one sybil group) every weight is 0 and the
aggregate is the zero update. Cosine similarities within ``1e-9`` of 1 count as 1, so
that identical histories are not told apart by rounding; a zero history has cosine 0
with everyone. Histories are kept in float64 and restored exactly by
:meth:`load_state_dict`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from flhelpers.defenses.base import AggregationContext, AggregationResult, Defense, weighted_mean

#: Cosine similarities within this distance of 1 are treated as exactly 1.
COSINE_TOLERANCE = 1e-9


def foolsgold_weights(histories: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    """FoolsGold's per-peer weights ``alpha`` in ``[0, 1]`` from a ``K x d`` history matrix."""
    k = histories.shape[0]
    h = histories.to(torch.float64)
    if k == 1:
        return torch.ones(1, dtype=torch.float64, device=h.device)
    norms = h.norm(dim=1, keepdim=True)
    unit = torch.where(norms > 0, h / norms.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(h))
    cs = (unit @ unit.t()).clamp(-1.0, 1.0)
    cs = torch.where(cs > 1 - COSINE_TOLERANCE, torch.ones_like(cs), cs)
    cs.fill_diagonal_(0.0)  # Fung et al.: cos(H_i, H_i) - 1 = 0, so v_i >= 0
    v = cs.max(dim=1).values  # (K,)
    # pardoning: cs_ij *= v_i / v_j where v_j > v_i >= 0, so v_j > 0
    pardon = v.unsqueeze(0) > v.unsqueeze(1)  # [i, j]: v_j > v_i
    ratio = v.unsqueeze(1) / torch.where(v == 0, torch.ones_like(v), v).unsqueeze(0)
    cs = torch.where(pardon, cs * ratio, cs)
    alpha = (1 - cs.max(dim=1).values).clamp(0.0, 1.0)
    top = alpha.max()
    if top <= 0:
        return torch.zeros_like(alpha)
    alpha = alpha / top
    alpha = torch.where(alpha == 1, torch.full_like(alpha, 0.99), alpha)
    logit = kappa * (torch.log(alpha) - torch.log1p(-alpha) + 0.5)  # alpha = 0 gives -inf
    return torch.nan_to_num(logit, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


class FoolsGold(Defense):
    """FoolsGold over each peer's accumulated (output-layer) update history.

    Args:
        kappa: the confidence parameter of the logit in step 5; Fung et al. use 1.
        use_output_layer: keep the history of the output layer only (default, as in the
            LFighter paper) or of the whole update.
        output_bias: with ``use_output_layer``, include the output layer's bias (default) or
            keep its weights only (the authors' code's ``fc2.weight``).
    """

    name = "foolsgold"

    def __init__(self, kappa: float = 1.0, use_output_layer: bool = True, output_bias: bool = True) -> None:
        kappa = float(kappa)
        if not kappa > 0 or math.isinf(kappa):
            raise ValueError(f"FoolsGold needs a finite kappa > 0, got kappa={kappa}.")
        if not output_bias and not use_output_layer:
            raise ValueError("FoolsGold: output_bias=False selects the output layer's weights, but "
                             "use_output_layer=False asks for the whole update; drop one of the two.")
        self.kappa = kappa
        self.use_output_layer = bool(use_output_layer)
        self.output_bias = bool(output_bias)
        self.history: dict[int, torch.Tensor] = {}

    def _features(self, updates: torch.Tensor, ctx: AggregationContext) -> torch.Tensor:
        if not self.use_output_layer:
            return updates
        if self.output_bias:
            return ctx.layout.output_layer(updates)
        return updates[..., ctx.layout.output_weight]

    def aggregate(self, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
        k = updates.shape[0]
        ids = list(range(k)) if ctx.peer_ids is None else [int(i) for i in ctx.peer_ids.tolist()]
        if len(ids) != k or len(set(ids)) != k:
            raise ValueError(f"FoolsGold needs {k} distinct peer ids, got {ids}.")
        feats = self._features(updates, ctx).detach().to("cpu", torch.float64)
        for row, pid in enumerate(ids):
            prev = self.history.get(pid)
            if prev is not None and prev.shape != feats[row].shape:
                raise ValueError(
                    f"Peer {pid}'s FoolsGold history has {prev.numel()} values, its update "
                    f"{feats[row].numel()}; the model changed between rounds."
                )
            self.history[pid] = feats[row].clone() if prev is None else prev + feats[row]
        histories = torch.stack([self.history[pid] for pid in ids])
        alpha = foolsgold_weights(histories, self.kappa)
        weights = alpha.to(device=updates.device, dtype=updates.dtype)
        return AggregationResult(
            update=weighted_mean(updates, weights),
            accepted=weights > 0,
            weights=weights,
            info={"alpha": alpha.tolist()},
        )

    def state_dict(self) -> dict[str, Any]:
        ids = sorted(self.history)
        hist = torch.stack([self.history[i] for i in ids]) if ids else torch.zeros(0, 0, dtype=torch.float64)
        return {"peer_ids": torch.tensor(ids, dtype=torch.long), "history": hist.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ids = torch.as_tensor(state["peer_ids"]).tolist()
        hist = torch.as_tensor(state["history"], dtype=torch.float64)
        if len(ids) != (hist.shape[0] if hist.dim() else 0):
            raise ValueError(f"FoolsGold state has {len(ids)} peer ids but {hist.shape[0]} histories.")
        self.history = {int(pid): hist[row].clone() for row, pid in enumerate(ids)}

    def __repr__(self) -> str:
        return (f"FoolsGold(kappa={self.kappa}, use_output_layer={self.use_output_layer}, "
                f"output_bias={self.output_bias})")
