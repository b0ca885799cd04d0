"""A little is enough (Baruch, Baruch and Goldberg, "A Little Is Enough: Circumventing Defenses
For Distributed Learning", NeurIPS 2019): every attacker sends ``mean(honest) - z * std(honest)``
coordinate-wise, with ``z`` from the numbers of peers and attackers (:func:`alie_z`). Omniscient,
as in the paper: the attackers see the honest updates of the round.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from flhelpers.attacks.base import ModelPoisoning, honest_rows


def alie_z(num_peers: int, num_attackers: int) -> float:
    """Baruch et al.'s ``z_max``: ``s = floor(n/2 + 1) - m``, ``z = Phi^{-1}((n - s) / n)``.

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


class ALittleIsEnough(ModelPoisoning):
    """Baruch et al.'s attack: every attacker sends ``mu - z * sigma`` (coordinate-wise).

    ``mu`` and ``sigma`` are the mean and the sample standard deviation (``n - 1``
    denominator; 0 for a single honest update) of the honest updates of the round, and
    ``z = alie_z(K, m)`` for ``K`` peers of which ``m`` attack, unless ``z`` is given.

    Args:
        z: a fixed ``z``; ``None`` (default) computes it each round from ``K`` and ``m``.
        start_round: the first attacked round.
    """

    name = "alie"

    def __init__(self, z: float | None = None, start_round: int = 0) -> None:
        super().__init__(start_round)
        if z is not None:
            z = float(z)
            if not math.isfinite(z):
                raise ValueError(f"ALIE needs a finite z (or None to derive it), got z={z}.")
        self.z = z
        self.last_z: float | None = None

    def poison(self, updates, is_attacker, generator, layout):
        honest = honest_rows(updates, is_attacker)
        z = self.z if self.z is not None else alie_z(updates.shape[0], int(is_attacker.sum()))
        self.last_z = z
        mu = honest.mean(dim=0)
        sd = honest.std(dim=0, correction=1) if honest.shape[0] > 1 else torch.zeros_like(mu)
        out = updates.clone()
        out[is_attacker] = mu - z * sd
        return out

    def __repr__(self) -> str:
        return f"ALittleIsEnough(z={self.z}, start_round={self.start_round})"


__all__ = ["ALittleIsEnough", "alie_z"]
