"""Loss-based user elimination with local differential privacy (``user-elimination-readme.md``).

Per round, before training (the ``select_peers`` hook, :class:`~flhelpers.defenses.base.ScreeningHook`):

1. The server asks each candidate peer ``k`` for the loss ``l_k`` of the global model on its own
   data (:attr:`ServerView.peer_losses <flhelpers.defenses.base.ServerView>`; the peer computes it
   on its labels as it holds them, flipped for a label-flipping attacker), and the peer reports

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

   **``null="unimodal"`` (default).** The honest losses are skewed (lognormal- or
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

   **``null="gaussian"``** (more powerful, but its level holds only for Gaussian
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
   rounds at ``alpha = 0.001``). We use **Berger and Boos's** construction instead
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
peers count as rejected in the detection metrics (:mod:`flhelpers.metrics.detection`). The
statistics (reports, 2-means, both tests) are in :mod:`flhelpers.defenses.ldp_stats`, re-exported here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from flhelpers.defenses.base import (AggregationContext, AggregationResult, Defense, Screening, ServerView,
                                     Transformed, as_screening, as_transformed)
from flhelpers.defenses.ldp_stats import (DEFAULT_SIMS, DIPTEST_INSTALL, NULLS, SHARE_GRID,  # noqa: F401 (re-exported)
                                          dip_statistic, laplace_noise, ldp_report, noise_share, null_threshold,
                                          separation_threshold, share_upper_bound, two_means_1d, unimodal_threshold)
from flhelpers.seeding import torch_generator


@dataclasses.dataclass(frozen=True)
class EliminationNote:
    """What :meth:`UserElimination.select_peers` hands the round's aggregate: ``record`` (the
    reports, clusters, test and eliminated ids: ``info["elimination"]``) and ``inner`` (the inner
    rule's own screening note)."""

    record: dict[str, Any]
    inner: Any = None


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

    :meth:`select_peers` returns, with the kept ids, the round's reports, clusters, ``D``,
    threshold and dropped ids (:class:`EliminationNote`); :meth:`aggregate` copies them into the
    result's ``info["elimination"]``.
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

    def select_peers(self, view: ServerView) -> Screening:
        """Ask the candidates for their losses (``view.peer_losses``), drop the high cluster of
        their LDP reports when it is apart, then let the inner rule select among the rest."""
        if view.peer_losses is None:
            raise ValueError("user-elimination needs to ask the peers for their losses: the view has no "
                             "peer_losses (run it through the engine, or give the view a peer_losses callback).")
        candidates = np.asarray(view.candidates, dtype=np.int64)
        seed = int(view.seed) if self.seed is None else int(self.seed)
        losses = np.asarray(view.peer_losses(candidates), dtype=np.float64)
        reports = self.reports(losses, candidates, view.round, seed)
        dropped, test = self.eliminate(reports)
        record = {"round": view.round, "candidates": candidates.tolist(), "losses": losses.tolist(),
                  "reports": reports.tolist(), "eliminated": candidates[dropped].tolist(), **test}
        kept, inner_note = candidates[~dropped], None
        inner_select = getattr(self.inner, "select_peers", None)
        if inner_select is not None:
            inner = as_screening(inner_select(dataclasses.replace(view, candidates=kept)))
            kept, inner_note = inner.kept, inner.note
        return Screening(kept, EliminationNote(record, inner_note))

    def transform_updates(self, view: ServerView) -> Transformed:
        """The inner rule's transform (e.g. ``ffl-mixing``), if it has one."""
        inner = getattr(self.inner, "transform_updates", None)
        return Transformed(view.updates) if inner is None else as_transformed(inner(view))

    def aggregate(self, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
        note = ctx.screening if isinstance(ctx.screening, EliminationNote) else None
        res = self.inner(updates, ctx if note is None else dataclasses.replace(ctx, screening=note.inner))
        if note is not None:
            res.info = {**res.info, "elimination": dict(note.record)}
        return res

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def __repr__(self) -> str:
        return (f"UserElimination(epsilon={self.epsilon}, clip={self.clip}, alpha={self.alpha}, "
                f"separation_test={self.separation_test}, null={self.null!r}, inner={self.inner_name!r})")


#: the statistics of :mod:`flhelpers.defenses.ldp_stats` stay importable from here
__all__ = ["DEFAULT_SIMS", "DIPTEST_INSTALL", "EliminationNote", "NULLS", "SHARE_GRID", "UserElimination",
           "dip_statistic", "laplace_noise", "ldp_report", "noise_share", "null_threshold", "separation_threshold",
           "share_upper_bound", "two_means_1d", "unimodal_threshold"]
