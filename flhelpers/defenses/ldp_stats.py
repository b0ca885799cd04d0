"""The statistics of user elimination (:mod:`flhelpers.defenses.user_elimination`): the peers'
LDP loss reports and the server's test of whether they form two clusters.

* :func:`ldp_report` (with :func:`laplace_noise`): ``clip(loss, 0, L) + Laplace(0, L / epsilon)``,
  an ``epsilon``-LDP report of a loss;
* :func:`two_means_1d`: the exact 1-D 2-means split of the reports and its standardised gap ``D``;
* the ``"unimodal"`` null: :func:`dip_statistic` (Hartigan and Hartigan's dip, by the ``diptest``
  package) and its threshold :func:`unimodal_threshold`;
* the ``"gaussian"`` null: Berger and Boos's threshold :func:`separation_threshold`, from
  :func:`share_upper_bound` and :func:`null_threshold`.

The null models and why each test keeps its false-alarm rate are in
:mod:`flhelpers.defenses.user_elimination` (step 3); the thresholds come from seeded Monte
Carlo runs, cached per process. Pure functions of arrays: nothing here knows a peer or a model.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch


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
    ``D`` is the standardised gap of :mod:`~flhelpers.defenses.user_elimination` (step 3):
    ``inf`` for two exact points, 0 when all values are equal. Needs ``n >= 3``.
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
    when every peer is honest, for any spread of the honest losses
    (:mod:`~flhelpers.defenses.user_elimination`, step 3).
    """
    n = len(np.asarray(reports).reshape(-1))
    _check_test_args(n, alpha)
    beta = float(alpha) / 10 if beta is None else float(beta)
    if not 0 < beta < alpha:
        raise ValueError(f"beta must be in (0, alpha), got beta={beta}, alpha={alpha}.")
    upper = share_upper_bound(reports, noise_scale, beta, sims, seed)
    return null_threshold(n, float(alpha) - beta, upper, sims, seed), upper


#: the separation test's null models (:mod:`~flhelpers.defenses.user_elimination`, step 3)
NULLS: tuple[str, ...] = ("unimodal", "gaussian")

#: how to get the dip when the package is missing
DIPTEST_INSTALL = 'pip install "diptest>=0.8"'


def dip_statistic(values: np.ndarray) -> float:
    """Hartigan and Hartigan's dip of the values, ``inf_{G unimodal} sup_x |F_n(x) - G(x)|``
    (:mod:`~flhelpers.defenses.user_elimination`, step 3), computed by the ``diptest`` package
    (their algorithm).

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
    (the uniform is the least favourable one; :mod:`~flhelpers.defenses.user_elimination`,
    step 3)."""
    _check_test_args(n, alpha)
    return _uniform_quantile(int(n), float(alpha), int(sims), int(seed))


@lru_cache(maxsize=256)
def _uniform_quantile(n: int, alpha: float, sims: int, seed: int) -> float:
    return float(np.quantile(_uniform_dips(n, sims, seed), 1 - alpha))


__all__ = ["DEFAULT_SIMS", "DIPTEST_INSTALL", "NULLS", "SHARE_GRID", "dip_statistic", "laplace_noise", "ldp_report",
           "noise_share", "null_threshold", "separation_threshold", "share_upper_bound", "two_means_1d",
           "unimodal_threshold"]
