"""When to attack: the paper's label flip, but each attacker attacks a round only with
probability ``p``, and only from round ``R0`` on.

Definition: attacker ``k`` trains in round ``t`` on its labels with every ``source_class``
label set to ``target_class`` when ``t >= R0`` and ``u_{k,t} < p`` (``u_{k,t} ~ U(0, 1)``,
seeded by ``(seed, "attack-timing", t, k)``), and on its true labels otherwise
(:class:`~flhelpers.attacks.data_poisoning.DataPoisoning`). Source: the per-round probability
is the ``malicious_behavior_rate`` of the authors' released code (Jebreel et al., LFighter,
2023; named so here); a late start lets the model learn the source class first. At
``p = 1, R0 = 0`` it is the paper's attack, :class:`~flhelpers.attacks.label_flip.LabelFlip`.
"""

from __future__ import annotations

from typing import Any

from flhelpers.attacks.data_poisoning import DataPoisoning, PoisonedPeer, check_pair, flip


class TimedFlip(DataPoisoning):
    """The label flip on a schedule: rounds ``t >= start_round``, each with probability ``rate``.

    Args:
        source_class, target_class: the flipped pair.
        num_classes: the data set's classes (for the range check).
        rate: ``p`` in (0, 1].
        start_round: ``R0 >= 0``.
    """

    name = "timed-flip"

    def __init__(self, source_class: int, target_class: int, num_classes: int | None = None,
                 rate: float = 1.0, start_round: int = 0) -> None:
        super().__init__(rate, start_round)
        self.source_class, self.target_class = check_pair(source_class, target_class, num_classes)

    def poison_peer(self, peer: Any, dataset: Any, rank: int, seed: int) -> PoisonedPeer:
        return PoisonedPeer(flip(peer.labels, self.source_class, self.target_class))

    def __repr__(self) -> str:
        return f"TimedFlip({self.source_class} -> {self.target_class}, {self._timing()})"


__all__ = ["TimedFlip"]
