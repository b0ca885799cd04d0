"""Partial flipping: each attacker flips only a share ``q`` of its source-class samples.

Definition: attacker ``k`` holding ``n_k`` samples of ``source_class`` relabels
``m_k = floor(q n_k + 1/2)`` of them as ``target_class``: the first ``m_k`` of the permutation
``torch.randperm(n_k, generator=torch_generator(seed, "partial-flip", k))`` of its source-class
positions; the rest keep their true label. Less poisoned signal per attacker, in the
output-layer rows LFighter clusters on, too. Source: this project's Beyond study, a weakened form
of the paper's attack (Jebreel et al., LFighter, 2023, section 3), whose attackers flip every
source-class sample; at ``q = 1`` it is that attack
(:class:`~flhelpers.attacks.label_flip.LabelFlip`). Takes ``rate`` and
``start_round`` like every :class:`~flhelpers.attacks.data_poisoning.DataPoisoning`.
"""

from __future__ import annotations

from typing import Any

import torch

from flhelpers.attacks.data_poisoning import DataPoisoning, PoisonedPeer, check_pair, check_unit_interval, flip
from flhelpers.seeding import torch_generator


def partial_positions(labels: torch.Tensor, source_class: int, q: float, generator: torch.Generator) -> torch.Tensor:
    """The local positions an attacker flips: ``floor(q n + 1/2)`` of its ``n`` source positions,
    the first of a seeded permutation, in increasing order."""
    where = torch.nonzero(labels.cpu() == source_class).flatten()
    count = int(q * len(where) + 0.5)
    chosen = where[torch.randperm(len(where), generator=generator)[:count]]
    return chosen.sort().values.to(labels.device)


class PartialFlip(DataPoisoning):
    """Flip a seeded share ``q`` of each attacker's ``source_class`` samples to ``target_class``.

    Args:
        source_class, target_class: the flipped pair.
        num_classes: the data set's classes (for the range check).
        q: the share flipped, in (0, 1]; 1 is the paper's attack.
        rate, start_round: when to attack (:class:`DataPoisoning`).
    """

    name = "partial-flip"

    def __init__(self, source_class: int, target_class: int, num_classes: int | None = None,
                 q: float = 1.0, rate: float = 1.0, start_round: int = 0) -> None:
        super().__init__(rate, start_round)
        self.source_class, self.target_class = check_pair(source_class, target_class, num_classes)
        self.q = check_unit_interval("q", q, self.name)

    def poison_peer(self, peer: Any, dataset: Any, rank: int, seed: int) -> PoisonedPeer:
        gen = torch_generator(seed, "partial-flip", int(peer.peer_id))
        positions = partial_positions(peer.labels, self.source_class, self.q, gen)
        return PoisonedPeer(flip(peer.labels, self.source_class, self.target_class, positions))

    def __repr__(self) -> str:
        return f"PartialFlip({self.source_class} -> {self.target_class}, q={self.q}, {self._timing()})"


__all__ = ["PartialFlip", "partial_positions"]
