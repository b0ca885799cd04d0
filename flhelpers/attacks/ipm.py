"""Inner-product manipulation (Xie, Koyejo and Gupta, "Fall of Empires: Breaking Byzantine-tolerant
SGD by Inner Product Manipulation", UAI 2019; the ``xie`` attack of ``fedavg-krum-dp-readme.md``):
every attacker sends ``-epsilon * mean(honest updates)``. Omniscient, as in the paper: the
attackers see the honest updates of the round.
"""

from __future__ import annotations

import math

from flhelpers.attacks.base import ModelPoisoning, honest_rows


class InnerProductManipulation(ModelPoisoning):
    """Xie et al.'s inner-product manipulation: attackers send ``-epsilon * mean(honest)``.

    The mean is the plain mean of the round's honest updates. With a small ``epsilon`` the
    aggregate's inner product with the true gradient turns negative under mean-based rules;
    with ``epsilon = 1`` the identical attacker updates cluster tightly and can win Krum.

    Args:
        epsilon: the scale (> 0); the third seed uses 1.
        start_round: the first attacked round (the seed's ``--addtime 10``).
    """

    name = "ipm"

    def __init__(self, epsilon: float = 1.0, start_round: int = 0) -> None:
        super().__init__(start_round)
        epsilon = float(epsilon)
        if not epsilon > 0 or math.isinf(epsilon):
            raise ValueError(f"The IPM attack needs a finite epsilon > 0, got epsilon={epsilon}.")
        self.epsilon = epsilon

    def poison(self, updates, is_attacker, generator, layout):
        out = updates.clone()
        out[is_attacker] = -self.epsilon * honest_rows(updates, is_attacker).mean(dim=0)
        return out

    def __repr__(self) -> str:
        return f"InnerProductManipulation(epsilon={self.epsilon}, start_round={self.start_round})"


__all__ = ["InnerProductManipulation"]
