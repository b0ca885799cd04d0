r"""Repeated median with residual-based reweighting (Fu, Xie, Li and Chen 2019,
"Attack-Resistant Federated Learning with Residual-based Reweighting", arXiv:1912.11464).

The rule the LFighter paper calls "Repeated Median". Per coordinate ``j`` it fits Siegel's
repeated-median regression line to the peers' sorted values against their ranks, turns
each value's residual into a confidence (an IRLS / Huber weight), replaces values the
line cannot explain by the line's fitted value, and finally averages whole updates with
per-peer weights built from those confidences. With $y_{(0)} \le \dots \le y_{(K-1)}$ the $K$
values of coordinate $j$ sorted, at $x_i = i$ (their rank):

1. Siegel's repeated median (Siegel 1982):
   $$
   b_1 = \operatorname{med}_i \operatorname{med}_{l \ne i} \frac{y_{(l)} - y_{(i)}}{l - i}, \qquad
   b_0 = \operatorname{med}_i \bigl(y_{(i)} - b_1 i\bigr)
   $$

2. Residuals $r_i = y_{(i)} - (b_0 + b_1 i)$ and a robust scale
   $$
   \sigma = 1.4826 \, \Bigl(1 + \frac{5}{K - 1}\Bigr) \operatorname{med} |r|
   $$
   where the median runs over the $K - 1$ largest $|r_i|$: the fitted line passes
   exactly through one point (the median in step 1's intercept), whose zero residual is
   left out, as in the authors' implementation.

3. Leverage of rank $i$ in the design $X = [1, x]$:
   $h_i = \frac{1}{K} + \frac{(i - (K-1)/2)^2}{S_{xx}}$ with $S_{xx} = K (K^2 - 1) / 12$; the
   standardized residual is $e_i = r_i / (\sigma \sqrt{1 - h_i})$.

4. Confidence, the Huber weight $\psi(e)/e$ with $\psi(e) = \max(-Z, \min(Z, e))$ and
   $Z = \lambda \sqrt{2 / K}$:
   $$
   w_{ij} = \min\bigl(1, Z / |e_i|\bigr)
   $$
   (1 where $r_i = 0$, 0 where $\sigma = 0 < |r_i|$).

5. Extreme-value correction: where $w_{ij} < \delta$ the value is replaced by the fitted
   value $b_0 + b_1 \cdot \mathrm{rank}$.

6. Per-peer weight: each coordinate's confidences are scaled by their standard deviation
   over the peers (coordinates where everyone is trusted alike carry no information),
   summed over coordinates, normalised by the largest and squared:
   $$
   W_k = \Bigl(\frac{s_k}{\max_l s_l}\Bigr)^2, \qquad s_k = \sum_j w_{kj} \operatorname{std}_l(w_{lj})
   $$

7. $\Delta = \sum_k W_k \tilde y_k / \sum_k W_k$ over the corrected updates $\tilde y$.

``accepted`` is ``W > 0``; ``weights`` is ``W``. Steps 1-7, including the details of
step 2 (the constants, the dropped zero residual) and step 6 (the standard-deviation
scaling and the squaring), and the defaults ``lambda = 2``, ``delta = 0.1`` were checked
against the authors' released implementation (github.com/fushuhao6/
Attack-Resistant-Federated-Learning, ``FedAvg/averaging.py``,
``IRLS_aggregation_split_restricted``), which produced the paper's numbers.
Our choices where that code and the textbook differ, or where it is undefined:

* the intercept is Siegel's ``med_i (y_(i) - b1 i)``; the authors' code uses
  ``med(y) - b1 * med(x)`` (both pass through one data point for odd ``K``);
* no absolute ``1e-7`` is added to ``sigma`` (it would dominate updates of order 1e-7);
  a zero residual gets confidence 1 and a nonzero residual with zero scale gets 0;
* when every ``s_k`` is 0 (e.g. all updates equal) the weights are uniform instead of
  the NaN the code produced; ``K = 1`` returns the single update;
* equal values in a coordinate are ranked in row order (a stable sort), so the result
  is deterministic; with ties it depends on the row order, as any rank-based rule does.

Not copied: the LFighter authors' "repeated median", which evaluates the line at the
middle rank and so reduces algebraically to the plain median. This rule does not.

Cost: ``O(K^2)`` per coordinate. Work is done on blocks of coordinates so that the
``block x K x K`` slope tensor holds about ``block_elements`` values; besides that,
the rule keeps one ``K x D`` copy of the corrected updates.
"""

from __future__ import annotations

import math

import torch

from flhelpers.defenses._robust_utils import argsort_along, column_chunks, median_of_sorted, sort_along
from flhelpers.defenses.base import AggregationContext, AggregationResult, Defense, weighted_mean

#: Consistency factor of the MAD for a normal distribution, 1 / Phi^{-1}(3/4).
MAD_TO_SIGMA = 1.4826


def inner_slope_medians(sorted_values: torch.Tensor) -> torch.Tensor:
    """``med_{l != i} (y_(l) - y_(i)) / (l - i)`` for every rank ``i``: ``(C, K)`` from ``(C, K)``.

    The full ``C x K x K`` slope tensor is built with its diagonal set to ``+inf``, which
    sorts last, so the first ``K - 1`` sorted entries of row ``i`` are the slopes to the others.
    """
    k = sorted_values.shape[1]
    x = torch.arange(k, device=sorted_values.device, dtype=sorted_values.dtype)
    dx = x.unsqueeze(1) - x.unsqueeze(0)
    dx.fill_diagonal_(1)
    slopes = sorted_values.unsqueeze(2) - sorted_values.unsqueeze(1)  # [c, i, l]: y_(i) - y_(l)
    slopes.mul_(dx.reciprocal_())  # / (i - l)
    torch.diagonal(slopes, dim1=1, dim2=2).fill_(math.inf)
    # the diagonal's +inf is there on purpose (and huge finite inputs may overflow): no finiteness check
    return median_of_sorted(sort_along(slopes, dim=2, allow_non_finite=True)[:, :, : k - 1], dim=2,
                            allow_non_finite=True)


def siegel_line(sorted_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Siegel's repeated-median line through ``(i, y_(i))`` for each row of ``(C, K)`` sorted values.

    Returns ``(intercept, slope)``, each ``(C,)``. Needs ``K >= 2``.
    """
    k = sorted_values.shape[1]
    slope = median_of_sorted(sort_along(inner_slope_medians(sorted_values), dim=1, allow_non_finite=True), dim=1,
                             allow_non_finite=True)
    x = torch.arange(k, device=sorted_values.device, dtype=sorted_values.dtype)
    intercept = median_of_sorted(sort_along(sorted_values - slope.unsqueeze(1) * x, dim=1, allow_non_finite=True),
                                 dim=1, allow_non_finite=True)
    return intercept, slope


def residual_confidence(
    sorted_values: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-4 for a ``(C, K)`` block of sorted values: ``(confidence, fitted)``, both ``(C, K)``."""
    k = sorted_values.shape[1]
    dtype = sorted_values.dtype
    intercept, slope = siegel_line(sorted_values)
    x = torch.arange(k, device=sorted_values.device, dtype=dtype)
    fitted = intercept.unsqueeze(1) + slope.unsqueeze(1) * x
    abs_res = (sorted_values - fitted).abs()
    mad = median_of_sorted(sort_along(abs_res, dim=1, allow_non_finite=True)[:, 1:], dim=1, allow_non_finite=True)
    sigma = MAD_TO_SIGMA * (1 + 5 / (k - 1)) * mad
    s_xx = k * (k * k - 1) / 12.0
    leverage = 1.0 / k + (x - (k - 1) / 2.0) ** 2 / s_xx
    root = (1 - leverage).clamp_min(0).sqrt()
    z = lam * math.sqrt(2.0 / k)
    # |e| <= Z  <=>  |r| <= Z sigma sqrt(1 - h); the weight is Z / |e| beyond it.
    limit = z * sigma.unsqueeze(1) * root
    confidence = torch.where(abs_res <= limit, torch.ones_like(abs_res), limit / abs_res)
    return confidence, fitted


def add_column_sums(total: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``total + rows.sum(dim=0)`` for ``(K,)`` and ``(C, K)``, deterministic on every device.

    On the CPU the rows are added to ``total`` one by one in row order (a cumulative sum): the
    exact order of the ``index_add_`` this replaced, so the CPU's numbers are unchanged. On CUDA
    (where ``cumsum`` and ``index_add_`` may use atomics) the column sums are one fixed-order
    reduction, added to ``total``.
    """
    if rows.device.type == "cpu":
        return torch.cat([total.unsqueeze(0), rows]).cumsum(dim=0)[-1]
    return total + rows.sum(dim=0)


class RepeatedMedian(Defense):
    """Residual-based reweighting around Siegel's repeated median (Fu et al. 2019).

    Args:
        lam: ``lambda``, the confidence-interval factor of the Huber threshold
            ``Z = lambda * sqrt(2 / K)``; the authors' default is 2.
        delta: values whose confidence is below ``delta`` are replaced by the fitted
            value; the authors' default is 0.1. ``0`` disables the correction.
        block_elements: about how many slope values one block of coordinates may hold
            (memory knob; it does not change the result).
    """

    name = "repeated-median"

    def __init__(self, lam: float = 2.0, delta: float = 0.1, block_elements: int = 1 << 22) -> None:
        lam, delta = float(lam), float(delta)
        if not lam > 0 or math.isinf(lam):
            raise ValueError(f"RepeatedMedian needs a finite lam > 0, got lam={lam}.")
        if not 0.0 <= delta <= 1.0:
            raise ValueError(f"RepeatedMedian needs 0 <= delta <= 1, got delta={delta}.")
        if int(block_elements) < 1:
            raise ValueError(f"block_elements must be >= 1, got {block_elements}.")
        self.lam = lam
        self.delta = delta
        self.block_elements = int(block_elements)

    def aggregate(self, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
        k, d = updates.shape
        device = updates.device
        if k == 1:
            ones = torch.ones(1, dtype=updates.dtype, device=device)
            return AggregationResult(
                update=updates[0].clone(), accepted=ones.bool(), weights=ones, info={"corrected": 0}
            )
        score = torch.zeros(k, dtype=torch.float64, device=device)
        corrected = torch.empty_like(updates)
        num_corrected = torch.zeros((), dtype=torch.int64, device=device)  # read once, after the loop
        for cols in column_chunks(k * k, d, self.block_elements):
            block = updates[:, cols].t()
            sorted_values, order = argsort_along(block, dim=1)  # refuses NaN/Inf input rows
            confidence, fitted = residual_confidence(sorted_values, self.lam)
            low = confidence < self.delta
            num_corrected += low.sum()
            fixed = torch.where(low, fitted, sorted_values)
            spread = confidence.std(dim=1, keepdim=True)
            # each value back in its peer's column (as for ``corrected``), then summed per column:
            # no index_add_ (atomic adds in varying order on CUDA)
            values = (confidence * spread).to(torch.float64)
            score = add_column_sums(score, torch.empty_like(values).scatter_(1, order, values))
            corrected[:, cols] = torch.empty_like(fixed).scatter_(1, order, fixed).t()
        top = score.max()
        if top > 0:
            weights = (score / top) ** 2
        else:
            weights = torch.ones_like(score)
        weights = weights.to(updates.dtype)
        return AggregationResult(
            update=weighted_mean(corrected, weights),
            accepted=weights > 0,
            weights=weights,
            info={"corrected": int(num_corrected), "uniform_fallback": bool(top <= 0)},
        )

    def __repr__(self) -> str:
        return f"RepeatedMedian(lam={self.lam}, delta={self.delta})"
