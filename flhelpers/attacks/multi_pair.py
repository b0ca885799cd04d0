"""Several source -> target pairs at once.

Definition: given pairs ``(s_1 -> t_1), ..., (s_P -> t_P)`` with distinct sources, an attacker
relabels its ``s_j`` samples as ``t_j`` for the pairs it carries (all at once, from the true
labels, so a chain ``7 -> 1, 1 -> 7`` swaps). ``spread="each"``: every attacker carries every
pair; ``spread="split"``: the ``i``-th attacker (in increasing peer id) carries pair
``i mod P`` only. LFighter's Procedure 1 assumes the two largest output neurons are the source
and the target; with two pairs there are four relevant neurons. Source: this project's Beyond study
project (the paper, Jebreel et al. 2023, section 3, attacks one pair). With the single pair
``(source_class, target_class)`` it is :class:`~flhelpers.attacks.label_flip.LabelFlip`.

Runs with more than one pair report, per pair ``s -> t``, ``source_accuracy_s_t`` and
``attack_success_rate_s_t`` (:mod:`flhelpers.metrics.attack_metrics`); the run's own
``source_accuracy`` and ``attack_success_rate`` stay those of the config's pair, which must
be among ``pairs``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from flhelpers.attacks.data_poisoning import DataPoisoning, PoisonedPeer, check_pair

SPREADS = ("each", "split")


def parse_pairs(pairs: Any, num_classes: int | None) -> tuple[tuple[int, int], ...]:
    """``pairs`` (a sequence of ``[source, target]``) as a tuple of checked pairs with distinct sources."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs:
        raise ValueError(f"pairs must be a non-empty list of [source, target] pairs, e.g. [[7, 1], [3, 8]]; "
                         f"got {pairs!r}.")
    out = []
    for p in pairs:
        if isinstance(p, (str, bytes)) or not isinstance(p, Sequence) or len(p) != 2:
            raise ValueError(f"Each pair must be [source, target], got {p!r} in pairs={pairs!r}.")
        out.append(check_pair(p[0], p[1], num_classes))
    sources = [s for s, _ in out]
    if len(set(sources)) != len(sources):
        raise ValueError(f"pairs={pairs!r} flips one source class to two targets; give each source once.")
    return tuple(out)


def flip_pairs(labels: torch.Tensor, pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``labels`` with every ``s`` of ``pairs`` set to its ``t``, all read from the true labels."""
    out = labels.clone()
    for s, t in pairs:
        out[labels == s] = t
    return out


class MultiPairFlip(DataPoisoning):
    """Flip several source -> target pairs, carried by each attacker or split among them.

    Args:
        source_class, target_class: the config's pair (must be one of ``pairs``).
        num_classes: the data set's classes (for the range checks).
        pairs: ``[[s, t], ...]``; ``None`` means the config's pair alone.
        spread: ``"each"`` or ``"split"`` (module docstring).
        rate, start_round: when to attack (:class:`DataPoisoning`).
    """

    name = "multi-pair-flip"

    def __init__(self, source_class: int, target_class: int, num_classes: int | None = None,
                 pairs: Sequence[Sequence[int]] | None = None, spread: str = "each",
                 rate: float = 1.0, start_round: int = 0) -> None:
        super().__init__(rate, start_round)
        own = check_pair(source_class, target_class, num_classes)
        self.pairs = parse_pairs(pairs, num_classes) if pairs is not None else (own,)
        if own not in self.pairs:
            raise ValueError(f"pairs={[list(p) for p in self.pairs]} lacks the config's pair "
                             f"{own[0]} -> {own[1]} (source_class -> target_class), whose Src-Acc and ASR "
                             f"the run reports; add it to pairs or set source_class/target_class to one of them.")
        if spread not in SPREADS:
            raise ValueError(f"spread must be one of {', '.join(SPREADS)}, got {spread!r}.")
        self.spread = spread
        self.source_class, self.target_class = own

    def pairs_of(self, rank: int) -> tuple[tuple[int, int], ...]:
        """The pairs the ``rank``-th attacker carries."""
        return self.pairs if self.spread == "each" else (self.pairs[rank % len(self.pairs)],)

    def poison_peer(self, peer: Any, dataset: Any, rank: int, seed: int) -> PoisonedPeer:
        return PoisonedPeer(flip_pairs(peer.labels, self.pairs_of(rank)))

    def evaluation_pairs(self) -> tuple[tuple[int, int], ...]:
        return self.pairs if len(self.pairs) > 1 else ()

    def __repr__(self) -> str:
        shown = ", ".join(f"{s} -> {t}" for s, t in self.pairs)
        return f"MultiPairFlip([{shown}], spread={self.spread!r}, {self._timing()})"


__all__ = ["MultiPairFlip", "SPREADS", "flip_pairs", "parse_pairs"]
