"""A little is enough (Baruch, Baruch and Goldberg, "A Little Is Enough: Circumventing Defenses
For Distributed Learning", NeurIPS 2019): every attacker sends ``mu - z * sigma`` coordinate-wise,
with ``z`` from the numbers of peers and attackers (:func:`alie_z`).

Which updates ``mu`` and ``sigma`` are taken over (``statistics``):

* ``"attackers"`` (the default, the paper's threat model): the attack is *not* omniscient. The
  attackers train honestly on their own data and estimate the honest updates' distribution from
  their own updates: ``mu`` is the mean and ``sigma`` the population standard deviation
  (denominator ``m``) of the ``m`` attackers' rows. The authors' released code does exactly this
  (``moranant/attacking_distributed_learning``, ``malicious.py``: ``np.mean`` and
  ``np.var(...) ** 0.5`` over the malicious users' gradients, then ``mean - num_std * stdev``).
* ``"honest"``: an omniscient variant (this module's only behaviour before the option existed):
  the mean and the sample standard deviation (denominator ``n_h - 1``) of the round's honest rows.

The released code perturbs *gradients* ``g`` (its server steps ``-lr * g``), so its
``mean(g) - z sigma(g)`` is ``mean(u) + z sigma(u)`` for updates ``u = -lr g``; this module
subtracts in update space (its behaviour before ``statistics`` existed). Both move every
coordinate ``z`` standard deviations away from the mean, in opposite directions.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from flhelpers.attacks.base import ModelPoisoning, honest_rows


def alie_z(num_peers: int, num_attackers: int) -> float:
    """Baruch et al.'s ``z_max``: ``s = floor(n/2 + 1) - m``, ``z = Phi^{-1}((n - s) / n)``.

    Source: the paper's Algorithm 3 (lines 1-2: "set number of required supporters
    ``s = floor(n/2 + 1) - m``", "set (using the z-table) ``z_max = max_z (Phi(z) < (n - s)/n)``")
    and its section 3 ("perturbation range"). The released code does not derive ``z``: it takes
    it from the command line (``--num_std``, default 1.5); pass ``z=`` to do the same.

    ``s`` is the number of honest peers the attackers need on their side for a majority;
    ``Phi`` is the standard normal CDF. When the attackers are already a majority
    (``s <= 0``) ``s`` is set to 1, the largest ``z`` the formula allows (a documented
    choice; the paper does not cover that case).
    """
    n, m = int(num_peers), int(num_attackers)
    if n < 2 or not 0 < m <= n:
        raise ValueError(f"alie_z needs n >= 2 peers and 0 < m <= n attackers, got n={n}, m={m}.")
    s = max(n // 2 + 1 - m, 1)
    return NormalDist().inv_cdf((n - s) / n)


#: where ALIE's mean and standard deviation come from (module docstring)
STATISTICS = ("attackers", "honest")


def alie_statistics(updates: torch.Tensor, is_attacker: torch.Tensor,
                    statistics: str = "attackers") -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, sigma)``, coordinate-wise, of the rows ``statistics`` names.

    ``"attackers"``: over the ``m`` attackers' own rows ``a_1..a_m``,
    ``mu = (1/m) sum_i a_i`` and ``sigma = sqrt((1/m) sum_i (a_i - mu)^2)`` (population;
    0 for one attacker), as the released code's ``np.mean`` and ``np.var(...) ** 0.5``.
    ``"honest"``: over the honest rows ``h_1..h_n`` (all rows when every peer attacks,
    :func:`~flhelpers.attacks.base.honest_rows`), ``mu`` their mean and
    ``sigma = sqrt(sum_i (h_i - mu)^2 / (n - 1))`` (sample; 0 for a single row).
    """
    if statistics == "attackers":
        rows = updates[is_attacker]
        correction = 0
    elif statistics == "honest":
        rows = honest_rows(updates, is_attacker)
        correction = 1
    else:
        raise ValueError(f"statistics must be one of {', '.join(STATISTICS)}, got {statistics!r}.")
    mu = rows.mean(dim=0)
    sd = rows.std(dim=0, correction=correction) if rows.shape[0] > 1 else torch.zeros_like(mu)
    return mu, sd


class ALittleIsEnough(ModelPoisoning):
    """Baruch et al.'s attack: every attacker sends ``mu - z * sigma`` (coordinate-wise).

    ``mu`` and ``sigma`` are the mean and standard deviation that :func:`alie_statistics`
    takes over the attackers' own updates (the paper's default) or over the honest ones
    (omniscient), and ``z = alie_z(K, m)`` for ``K`` peers of which ``m`` attack this round,
    unless ``z`` is given.

    Args:
        z: a fixed ``z``; ``None`` (default) computes it each round from ``K`` and ``m``.
        start_round: the first attacked round.
        statistics: ``"attackers"`` (default; Baruch et al.'s non-omniscient attackers and their
            released code) or ``"honest"`` (omniscient; this class's behaviour before the option
            existed). A run that does not pass it gets ``"attackers"``, and its run id says so
            (:data:`flhelpers.config.HASHED_KWARG_DEFAULTS`), so no run computed before is reused.
    """

    name = "alie"

    def __init__(self, z: float | None = None, start_round: int = 0, statistics: str = "attackers") -> None:
        super().__init__(start_round)
        if z is not None:
            z = float(z)
            if not math.isfinite(z):
                raise ValueError(f"ALIE needs a finite z (or None to derive it), got z={z}.")
        if statistics not in STATISTICS:
            raise ValueError(f"ALIE's statistics must be one of {', '.join(STATISTICS)} (whose updates give the "
                             f"mean and standard deviation), got {statistics!r}.")
        self.z = z
        self.statistics = statistics
        self.last_z: float | None = None

    def poison(self, updates, is_attacker, generator, layout):
        z = self.z if self.z is not None else alie_z(updates.shape[0], int(is_attacker.sum()))
        self.last_z = z
        mu, sd = alie_statistics(updates, is_attacker, self.statistics)
        out = updates.clone()
        out[is_attacker] = mu - z * sd
        return out

    def __repr__(self) -> str:
        return f"ALittleIsEnough(z={self.z}, start_round={self.start_round}, statistics={self.statistics!r})"


__all__ = ["ALittleIsEnough", "STATISTICS", "alie_statistics", "alie_z"]
