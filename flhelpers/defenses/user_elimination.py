"""Loss-based user elimination with local differential privacy (``user-elimination-readme.md``).

Per round, before training (the engine's ``select_peers`` hook):

1. Each candidate peer ``k`` computes the loss ``l_k`` of the global model on its own data
   (its labels as it holds them, flipped for a label-flipping attacker) and reports

       r_k = clip(l_k, 0, L) + Laplace(0, L / epsilon).

   The clipped loss lies in ``[0, L]``, so one report has sensitivity ``L`` and the Laplace
   mechanism makes it ``epsilon``-LDP (over ``T`` rounds a peer spends ``T * epsilon`` by
   sequential composition). **The original added noise of scale 1e-4, whatever the loss
   range: that protects nothing; here the scale is ``L / epsilon``.**
2. The server splits the reports into two clusters with 1-D k-means (:func:`two_means_1d`,
   the exact optimum, which in one dimension is a split of the sorted reports).
3. **Separation test** (ours; the original always dropped the high cluster, so it
   eliminated honest peers when there was no attack). The high-loss cluster is dropped only
   when the reports are clearly not one population, at a false-alarm rate ``alpha`` per
   all-honest round. Two null models (``null``):

   **``null="unimodal"`` (default; issue 19).** The honest losses are skewed (lognormal- or
   gamma-like, not Gaussian), so the only assumption is that an all-honest round's reports
   are i.i.d. from *one unimodal* law, of any shape. The statistic is Hartigan and Hartigan's
   dip (J. A. Hartigan and P. M. Hartigan, "The dip test of unimodality", Annals of
   Statistics 13(1), 1985):

       dip(F_n) = inf over unimodal G of sup_x |F_n(x) - G(x)|,

   the distance from the reports' empirical CDF to the nearest unimodal CDF (a unimodal CDF is
   convex left of its mode and concave right of it). Two clusters of shares ``w`` and
   ``1 - w`` far apart give a dip near ``min(w, 1 - w) / 2``. The threshold is the ``1 - alpha``
   quantile of the dip of ``n`` i.i.d. uniform draws (:func:`unimodal_threshold`, seeded Monte
   Carlo): the dip is invariant under ``x -> a x + c`` and Hartigan and Hartigan show the
   uniform to be the least favourable unimodal law (its dip is the stochastically largest,
   asymptotically), which is why their tables, and ours, are computed at the uniform; so
   ``P(alarm) <= alpha`` for any unimodal law of the reports, the finite-``n`` case being
   checked by the tests on lognormal and gamma losses. The reports stay unimodal under the
   noise: Laplace is log-concave, hence strongly unimodal, and its convolution with any
   unimodal law is unimodal (I. A. Ibragimov, "On the composition of unimodal distributions",
   Theory Probab. Appl. 1, 1956). The price of assuming so little is power: a heavy right tail
   and a small high cluster look alike, so only a cluster of a sizeable share is caught
   (at ``alpha = 1e-3`` the dip must exceed about 0.14 at 20 reports and 0.07 at 100, so the
   high cluster needs a share above about 28 % resp. 14 % even when perfectly apart).

   **``null="gaussian"``** (issue 12; more powerful, but its level holds only for Gaussian
   honest losses: on lognormal losses with sigma 0.8 it fired in 4.3 % of all-honest rounds
   at 20 peers and 23.9 % at 100 at ``alpha = 1e-3``). The standardised gap of the two means

       D = (mean_high - mean_low) / s_pooled,
       s_pooled^2 = (SSE_low + SSE_high) / (n - 2),

   is compared with its law when nobody attacks. Null model: every report is a common loss,
   plus a Gaussian spread of the honest losses (unknown ``sigma_h``), plus the Laplace noise
   (known scale ``b``). ``D`` does not depend on the common loss or the overall scale, only
   on the noise's share ``rho = 2 b^2 / (sigma_h^2 + 2 b^2)`` of the variance, a nuisance
   parameter. Plugging in an estimate of ``rho`` does not give the promised rate: the draws
   with a large ``D`` are those with a large sample variance, hence a low estimated share and
   a low threshold (with 20 pure-noise reports the plug-in test raised alarms in 0.3 % of
   rounds at ``alpha = 0.001``; issue 12). We use **Berger and Boos's** construction instead
   (R. L. Berger and D. D. Boos, "P values maximized over a confidence set for the nuisance
   parameter", JASA 89(427), 1994): with ``beta = alpha / 10``,

   a. a ``1 - beta`` upper confidence bound ``rho+`` for ``rho`` (:func:`share_upper_bound`):
      at the true share the ratio ``rho * s^2 / (2 b^2)`` is the sample variance of ``n``
      unit-variance null reports, so a share is excluded when that ratio exceeds its
      ``1 - beta`` quantile (the observed variance is too large for so much of it to be noise);
   b. the threshold is the ``1 - (alpha - beta)`` quantile of ``D`` at ``rho+``
      (:func:`separation_threshold`), the largest over the confidence set since the quantile
      grows with the share (heavier-tailed noise);

   so ``P(alarm) <= beta + (alpha - beta) = alpha`` whatever ``sigma_h``. Both quantiles come
   from a seeded Monte Carlo (:data:`DEFAULT_SIMS` draws) on a grid of shares
   (:data:`SHARE_GRID`, step 0.05; a share between grid points is rounded up), made
   non-decreasing in the share. Under an attack the gap inflates the variance, so ``rho+`` is
   small and the threshold is close to that of Gaussian reports, the most powerful case.

   With either null the high cluster (of :func:`two_means_1d`) must also be at most
   ``max_drop_fraction`` of the reports (an honest majority), and at least 3 reports are
   needed. ``separation_test=False`` is the original's rule: the high cluster is always dropped
   (within ``max_drop_fraction``), attack or not. Honest losses that themselves form clusters
   (strongly non-i.i.d. data) are outside both null models and can trigger either test; so
   can honest losses partly above the clip bound ``L`` (their atom at ``L`` is a second mode).
4. The remaining peers train; their updates are aggregated by ``inner`` (FedAvg by default,
   any registered rule otherwise).

Attackers report their true loss (non-adaptive attackers, as in the original). Eliminated
peers count as rejected in the detection metrics (:mod:`flhelpers.metrics.detection`).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from flhelpers.defenses.base import AggregationContext, AggregationResult, Defense
from flhelpers.params import load_flat_buffers, load_flat_params
from flhelpers.seeding import torch_generator
from flhelpers.models import loss_fn


def laplace_noise(scale: float, size: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` draws of Laplace(0, scale), float64: ``scale * (E1 - E2)`` with ``E ~ Exp(1)``."""
    u = torch.rand(2, size, generator=generator, dtype=torch.float64)
    e = -torch.log1p(-u)  # Exp(1); 1 - u lies in (0, 1], so the log is finite
    return scale * (e[0] - e[1])


def ldp_report(loss: float, clip: float, epsilon: float, generator: torch.Generator) -> float:
    """An ``epsilon``-LDP report of a loss: ``clip(loss, 0, L) + Laplace(0, L / epsilon)``."""
    if not clip > 0 or not epsilon > 0 or math.isinf(epsilon):
        raise ValueError(f"ldp_report needs clip L > 0 and a finite epsilon > 0, got L={clip}, epsilon={epsilon}.")
    clipped = min(max(float(loss), 0.0), float(clip))
    return clipped + float(laplace_noise(clip / epsilon, 1, generator)[0])


def _split_stats(sorted_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sorted rows ``(S, n)``: the best split's left size ``(S,)`` and its ``D`` ``(S,)``."""
    s = sorted_rows
    n = s.shape[1]
    c = np.cumsum(s, axis=1)[:, :-1]  # sums of the i smallest, i = 1..n-1
    c2 = np.cumsum(s * s, axis=1)[:, :-1]
    total, total2 = s.sum(axis=1, keepdims=True), (s * s).sum(axis=1, keepdims=True)
    i = np.arange(1, n, dtype=np.float64)
    sse = (c2 - c * c / i) + ((total2 - c2) - (total - c) ** 2 / (n - i))
    sse = np.maximum(sse, 0.0)
    best = np.argmin(sse, axis=1)
    rows = np.arange(s.shape[0])
    left = best + 1
    mean_lo = c[rows, best] / left
    mean_hi = (total[:, 0] - c[rows, best]) / (n - left)
    gap = mean_hi - mean_lo
    pooled = np.sqrt(sse[rows, best] / (n - 2)) if n > 2 else np.zeros(len(rows))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(pooled > 0, gap / np.where(pooled > 0, pooled, 1.0), np.where(gap > 0, np.inf, 0.0))
    return left, d


def two_means_1d(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Exact 1-D 2-means: ``(high, D)``.

    ``high`` is the ``(n,)`` bool mask of the cluster with the larger mean; the split
    minimises the within-cluster sum of squares over the ``n - 1`` splits of the sorted
    values (the global optimum of k-means with k = 2; ties go to the smallest low cluster).
    ``D`` is the standardised gap of the module docstring (``inf`` for two exact points,
    0 when all values are equal). Needs ``n >= 3``.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(x) < 3:
        raise ValueError(f"two_means_1d needs at least 3 values for a pooled spread, got {len(x)}.")
    if not np.isfinite(x).all():
        raise ValueError("two_means_1d got a non-finite value; reports must be finite numbers.")
    order = np.argsort(x, kind="stable")
    left, d = _split_stats(x[order][None, :])
    high = np.zeros(len(x), dtype=bool)
    high[order[int(left[0]):]] = True
    if float(d[0]) == 0.0:  # all equal: no cluster
        high[:] = False
    return high, float(d[0])


def noise_share(reports: np.ndarray, noise_scale: float) -> float:
    """A point estimate of ``rho``, the share of the reports' variance that the LDP noise
    explains: ``min(1, 2 b^2 / s^2)`` (Laplace(b) has variance ``2 b^2``; ``s^2`` the sample
    variance). Reported for information only: the test uses :func:`share_upper_bound`."""
    var = float(np.var(np.asarray(reports, dtype=np.float64), ddof=1))
    return 1.0 if var <= 0 else min(1.0, 2 * noise_scale**2 / var)


#: the noise shares at which the null law of the reports is tabulated (step 0.05)
SHARE_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))
#: Monte-Carlo draws per share (and per ``n``): the 0.9995 quantile rests on 50 exceedances
DEFAULT_SIMS = 100_000


def _simulate_null(n: int, share: float, sims: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``D`` and the sample variance of ``sims`` null draws of ``n`` unit-variance reports
    ``sqrt(1 - share) * Z + sqrt(share / 2) * Laplace(1)``."""
    rng = np.random.default_rng([seed, n, int(round(share * 100))])
    ds, vs = [], []
    for start in range(0, sims, 20000):
        size = (min(20000, sims - start), n)
        x = math.sqrt(1 - share) * rng.standard_normal(size) + math.sqrt(share / 2) * rng.laplace(size=size)
        ds.append(_split_stats(np.sort(x, axis=1))[1])
        vs.append(x.var(axis=1, ddof=1))
    return np.concatenate(ds), np.concatenate(vs)


@lru_cache(maxsize=4)
def _null_draws(n: int, sims: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(D, V)``, each ``(len(SHARE_GRID), sims)``: :func:`_simulate_null` at every grid share."""
    draws = [_simulate_null(n, g, sims, seed) for g in SHARE_GRID]
    return np.stack([d for d, _ in draws]), np.stack([v for _, v in draws])


@lru_cache(maxsize=256)
def _null_tables(n: int, d_level: float, var_level: float, sims: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Over :data:`SHARE_GRID`: the ``d_level`` quantile of ``D`` and the ``var_level`` quantile
    of the sample variance of ``n`` null reports, each made non-decreasing in the share by a
    running maximum (the true quantiles grow with the share, the heavier-tailed noise; the
    running maximum only removes Monte-Carlo wiggles, upwards, so the test stays conservative)."""
    d, var = _null_draws(n, sims, seed)
    return (np.maximum.accumulate(np.quantile(d, d_level, axis=1)),
            np.maximum.accumulate(np.quantile(var, var_level, axis=1)))


def _check_test_args(n: int, alpha: float, share: float = 0.0) -> None:
    if n < 3:
        raise ValueError(f"The separation test needs at least 3 reports, got n={n}.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"The noise share must be in [0, 1], got {share}.")


def null_threshold(n: int, alpha: float = 1e-3, share: float = 1.0, sims: int = DEFAULT_SIMS,
                   seed: int = 0) -> float:
    """``D_alpha(n, rho)``: the ``1 - alpha`` quantile of :func:`two_means_1d`'s ``D`` for ``n``
    reports of honest peers only at a *known* noise share ``rho``, by seeded Monte Carlo with
    ``sims`` draws per share (made non-decreasing in the share, see :func:`_null_tables`).

    Null model: ``report = mu + sigma_h * Z + Laplace(b)`` (Z standard normal: the honest
    losses' spread; Laplace: the LDP noise). ``D`` is location- and scale-free, so its law
    depends only on ``n`` and ``rho = 2 b^2 / (sigma_h^2 + 2 b^2)``; ``share`` is rounded up to
    :data:`SHARE_GRID`. ``share = 1``: pure Laplace noise, the heaviest tails and the highest
    threshold. The share is unknown in practice; :func:`separation_threshold` handles that.
    """
    _check_test_args(n, alpha, share)
    k = int(np.searchsorted(np.array(SHARE_GRID), share - 1e-12))
    return float(_null_tables(int(n), 1 - float(alpha), 0.5, int(sims), int(seed))[0][k])


def share_upper_bound(reports: np.ndarray, noise_scale: float, beta: float, sims: int = DEFAULT_SIMS,
                      seed: int = 0) -> float:
    """A ``1 - beta`` upper confidence bound, on :data:`SHARE_GRID`, for the noise share ``rho``
    of the reports given the known Laplace scale ``b``.

    At the true share the total variance is ``2 b^2 / rho``, so ``rho * s^2 / (2 b^2)`` is
    distributed as the sample variance ``V`` of ``n`` unit-variance null reports. The bound is
    the upper end ``g_k+1`` of the last grid cell ``[g_k, g_k+1]`` whose lower end passes
    ``g_k * s^2 / (2 b^2) <= q_k+1`` (``q`` the ``1 - beta`` quantile of ``V``, non-decreasing
    in the share): for a true share in a cell that fails, ``rho * s^2 / (2 b^2)`` exceeds
    ``q_k+1 >= q(rho)``, which happens with probability at most ``beta``. The first cell
    always passes, so the bound is at least 0.05; a large ``s^2`` (much more spread than
    noise) gives a small bound.
    """
    x = np.asarray(reports, dtype=np.float64).reshape(-1)
    _check_test_args(len(x), 0.5)
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}.")
    if not noise_scale > 0:
        raise ValueError(f"The Laplace scale b must be > 0, got {noise_scale}.")
    ratio = float(np.var(x, ddof=1)) / (2 * noise_scale**2)
    q = _null_tables(len(x), 0.5, 1 - float(beta), int(sims), int(seed))[1]
    grid = np.array(SHARE_GRID)
    passing = grid[:-1] * ratio <= q[1:]  # non-increasing in k: a prefix of the cells passes
    return float(grid[1:][passing].max())


def separation_threshold(reports: np.ndarray, noise_scale: float, alpha: float = 1e-3,
                         beta: float | None = None, sims: int = DEFAULT_SIMS,
                         seed: int = 0) -> tuple[float, float]:
    """Berger and Boos's threshold for ``D`` at level ``alpha`` with the noise share unknown:
    ``(threshold, share bound)``.

    ``threshold`` is the ``1 - (alpha - beta)`` quantile of ``D`` at the share bound
    :func:`share_upper_bound` (``beta`` defaults to ``alpha / 10``), the largest over the
    confidence set since the quantile grows with the share. Then ``P(D > threshold) <= alpha``
    when every peer is honest, for any spread of the honest losses (module docstring, step 3).
    """
    n = len(np.asarray(reports).reshape(-1))
    _check_test_args(n, alpha)
    beta = float(alpha) / 10 if beta is None else float(beta)
    if not 0 < beta < alpha:
        raise ValueError(f"beta must be in (0, alpha), got beta={beta}, alpha={alpha}.")
    upper = share_upper_bound(reports, noise_scale, beta, sims, seed)
    return null_threshold(n, float(alpha) - beta, upper, sims, seed), upper


#: the separation test's null models (module docstring, step 3)
NULLS: tuple[str, ...] = ("unimodal", "gaussian")

#: how to get the dip when the package is missing
DIPTEST_INSTALL = 'pip install "diptest>=0.8"'


def dip_statistic(values: np.ndarray) -> float:
    """Hartigan and Hartigan's dip of the values, ``inf_{G unimodal} sup_x |F_n(x) - G(x)|``
    (module docstring, step 3), computed by the ``diptest`` package (their algorithm).

    Two point masses of shares ``p`` and ``1 - p`` have dip ``min(p, 1 - p) / 2``.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(x).all():
        raise ValueError("dip_statistic got a non-finite value; reports must be finite numbers.")
    return float(_diptest().dipstat(x))


def _diptest() -> Any:
    from flhelpers.optional import import_optional

    return import_optional(("diptest",), "The unimodal separation test of user elimination needs the "
                           f"diptest package: {DIPTEST_INSTALL} (or pass null='gaussian').")


@lru_cache(maxsize=16)
def _uniform_dips(n: int, sims: int, seed: int) -> np.ndarray:
    """The dips of ``sims`` seeded samples of ``n`` i.i.d. Uniform(0, 1) draws."""
    dipstat = _diptest().dipstat
    rng = np.random.default_rng([seed, n, 19])
    out = np.empty(sims)
    for start in range(0, sims, 20000):
        block = np.sort(rng.random((min(20000, sims - start), n)), axis=1)
        out[start:start + len(block)] = [dipstat(row, sort_x=False) for row in block]
    return out


def unimodal_threshold(n: int, alpha: float = 1e-3, sims: int = DEFAULT_SIMS, seed: int = 0) -> float:
    """The ``1 - alpha`` quantile of the dip of ``n`` i.i.d. uniform draws (seeded Monte Carlo,
    ``sims`` draws): the threshold of the unimodal separation test, for which
    ``P(dip > threshold) <= alpha`` whenever the ``n`` reports are i.i.d. from a unimodal law
    (the uniform is the least favourable one; module docstring, step 3)."""
    _check_test_args(n, alpha)
    return _uniform_quantile(int(n), float(alpha), int(sims), int(seed))


@lru_cache(maxsize=256)
def _uniform_quantile(n: int, alpha: float, sims: int, seed: int) -> float:
    return float(np.quantile(_uniform_dips(n, sims, seed), 1 - alpha))


@torch.no_grad()
def global_loss_per_peer(exp, peer_ids: np.ndarray, global_params: torch.Tensor,
                         global_buffers: torch.Tensor) -> np.ndarray:
    """The mean loss of the global model on each peer's local data (its own, possibly flipped, labels)."""
    cfg, model, data = exp.config, exp.model, exp.dataset
    load_flat_params(model, global_params)
    if global_buffers.numel():
        load_flat_buffers(model, global_buffers)
    model.eval()
    # float64 sums on the device, read once: the float(loss) of every batch waited for the device
    totals = torch.zeros(len(peer_ids), dtype=torch.float64, device=exp.device)
    for row, k in enumerate(peer_ids):
        peer = exp.peers[int(k)]
        total = totals[row]
        for start in range(0, peer.num_samples, cfg.eval_batch_size):
            idx = peer.indices[start : start + cfg.eval_batch_size]
            xb = data.prepare(data.train_x[idx].to(exp.device))
            yb = peer.labels[start : start + cfg.eval_batch_size].to(exp.device)
            total += loss_fn(cfg.loss, model(xb), yb).double() * len(idx)
    sizes = np.array([max(exp.peers[int(k)].num_samples, 1) for k in peer_ids], dtype=np.float64)
    return totals.cpu().numpy() / sizes


class UserElimination(Defense):
    """Drop the high-loss cluster of the peers' LDP loss reports, when it is clearly apart.

    Args:
        epsilon: each report's LDP budget (> 0; the noise scale is ``clip / epsilon``).
        clip: ``L``, the loss bound the reports are clipped to (> 0).
        alpha: the separation test's false-alarm rate per round when nobody attacks.
        separation_test: test the clusters' separation (default); ``False`` always drops the
            high cluster, as the original did (honest peers too when nobody attacks).
        null: the test's null model (module docstring, step 3): ``"unimodal"`` (default; the
            dip test, any shape of honest losses) or ``"gaussian"`` (Berger and Boos's test of
            ``D``, more powerful, its level only for Gaussian honest losses).
        max_drop_fraction: the largest share of reports that may be eliminated (0 < x <= 0.5:
            the honest majority the server assumes).
        inner: the registered rule that aggregates the kept peers' updates (default fedavg).
        inner_kwargs: its keyword arguments.
        sims: Monte-Carlo draws per tabulated share for :func:`separation_threshold`.
        seed: the seed of the peers' noise; ``None`` uses the run's seed.

    ``last`` holds the latest round's reports, clusters, ``D``, threshold and dropped ids;
    :meth:`aggregate` copies it into the result's ``info``.
    """

    name = "user-elimination"

    def __init__(self, epsilon: float = 10.0, clip: float = 2.0, alpha: float = 1e-3,
                 separation_test: bool = True, null: str = "unimodal", max_drop_fraction: float = 0.5,
                 inner: str = "fedavg",
                 inner_kwargs: dict[str, Any] | None = None, sims: int = DEFAULT_SIMS,
                 seed: int | None = None) -> None:
        from flhelpers.registry import DEFENSES

        epsilon, clip, alpha = float(epsilon), float(clip), float(alpha)
        if not epsilon > 0 or math.isinf(epsilon):
            raise ValueError(f"UserElimination needs a finite epsilon > 0 (the LDP budget), got {epsilon}.")
        if not clip > 0 or math.isinf(clip):
            raise ValueError(f"UserElimination needs a finite clip bound L > 0, got {clip}.")
        if not 0 < alpha < 1:
            raise ValueError(f"UserElimination needs 0 < alpha < 1 (false-alarm rate), got {alpha}.")
        if not 0 < float(max_drop_fraction) <= 0.5:
            raise ValueError(f"max_drop_fraction must be in (0, 0.5] (honest majority), got {max_drop_fraction}.")
        if null not in NULLS:
            raise ValueError(f"null must be one of {', '.join(map(repr, NULLS))} (the separation test's null "
                             f"model), got {null!r}.")
        if int(sims) < 1000:
            raise ValueError(f"sims must be at least 1000 for a stable threshold, got {sims}.")
        if str(inner).strip().lower() == self.name:
            raise ValueError("user-elimination cannot wrap itself; choose inner='fedavg' or another rule.")
        self.epsilon, self.clip, self.alpha = epsilon, clip, alpha
        self.separation_test = bool(separation_test)
        self.null = null
        self.max_drop_fraction = float(max_drop_fraction)
        self.sims, self.seed = int(sims), seed
        self.inner_name = inner
        self.inner = DEFENSES.get(inner)(**(inner_kwargs or {}))
        self.needs_attacker_count = self.inner.needs_attacker_count
        self.last: dict[str, Any] = {}

    @property
    def noise_scale(self) -> float:
        """The Laplace scale ``b = L / epsilon``."""
        return self.clip / self.epsilon

    def validate(self, num_peers: int, expected_attackers: int) -> None:
        self.inner.validate(num_peers, expected_attackers)

    def reports(self, losses: np.ndarray, peer_ids: np.ndarray, round: int, seed: int) -> np.ndarray:
        """Each peer's LDP report; peer ``k`` draws its noise from ``(seed, "ldp", round, k)``."""
        return np.array([ldp_report(l, self.clip, self.epsilon, torch_generator(seed, "ldp", round, int(k)))
                         for l, k in zip(losses, peer_ids)])

    def eliminate(self, reports: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """The ``(n,)`` bool mask of eliminated reports, and the test's numbers: ``statistic``
        (``"dip"`` or ``"D"``, by ``null``), ``separation`` (its value), ``threshold`` (its
        threshold: :func:`unimodal_threshold` or :func:`separation_threshold`; 0 for the
        original rule), ``gap`` (``D`` of :func:`two_means_1d`), ``noise_share`` (the point
        estimate), ``noise_share_upper`` (the largest share the Gaussian test's confidence set
        keeps, else ``None``) and ``separated``."""
        n = len(reports)
        dropped = np.zeros(n, dtype=bool)
        statistic = "dip" if self.null == "unimodal" else "D"
        if n < 3:
            return dropped, {"statistic": statistic, "separation": None, "threshold": None, "gap": None,
                             "noise_share": None, "noise_share_upper": None, "separated": False}
        high, d = two_means_1d(reports)
        upper = None
        if not self.separation_test:  # the original: any two clusters count as separated
            value, threshold = d, 0.0
        elif self.null == "unimodal":
            value, threshold = dip_statistic(reports), unimodal_threshold(n, self.alpha, self.sims)
        else:
            value = d
            threshold, upper = separation_threshold(reports, self.noise_scale, self.alpha, sims=self.sims)
        separated = bool(value > threshold and 0 < high.sum() <= self.max_drop_fraction * n)
        if separated:
            dropped = high
        return dropped, {"statistic": statistic, "separation": value, "threshold": threshold, "gap": d,
                         "noise_share": noise_share(reports, self.noise_scale),
                         "noise_share_upper": upper, "separated": separated}

    def select_peers(self, candidates: np.ndarray, exp, global_params: torch.Tensor,
                     global_buffers: torch.Tensor, round: int) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=np.int64)
        seed = int(exp.config.seed) if self.seed is None else int(self.seed)
        losses = global_loss_per_peer(exp, candidates, global_params, global_buffers)
        reports = self.reports(losses, candidates, round, seed)
        dropped, test = self.eliminate(reports)
        self.last = {"round": round, "candidates": candidates.tolist(), "losses": losses.tolist(),
                     "reports": reports.tolist(), "eliminated": candidates[dropped].tolist(), **test}
        kept = candidates[~dropped]
        inner_select = getattr(self.inner, "select_peers", None)
        if inner_select is not None:
            kept = np.asarray(inner_select(kept, exp, global_params, global_buffers, round), dtype=np.int64)
        return kept

    def transform_updates(self, updates: torch.Tensor, peer_ids: np.ndarray, is_attacker: np.ndarray,
                          round: int) -> torch.Tensor:
        """The inner rule's transform (e.g. ``ffl-mixing``), if it has one."""
        inner = getattr(self.inner, "transform_updates", None)
        return updates if inner is None else inner(updates, peer_ids, is_attacker, round)

    def aggregate(self, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
        res = self.inner(updates, ctx)
        if self.last.get("round") == ctx.round:
            res.info = {**res.info, "elimination": dict(self.last)}
        return res

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def __repr__(self) -> str:
        return (f"UserElimination(epsilon={self.epsilon}, clip={self.clip}, alpha={self.alpha}, "
                f"separation_test={self.separation_test}, null={self.null!r}, inner={self.inner_name!r})")
