"""The base of the attacks that poison attackers' training data, and when they attack.

A data-poisoning attack rewrites each attacker's training data once, before training
(:meth:`DataPoisoning.poison_peer`: its labels and, for a backdoor, some of its images), and in
every round decides whether the attacker trains on that poisoned data or on its clean data:

    attacks(k, t) = [t >= R0]  and  [u_{k,t} < p],    u_{k,t} ~ U(0, 1)

with ``u_{k,t}`` drawn from ``torch_generator(seed, "attack-timing", t, k)`` (no draw at
``p = 1``). ``p`` (``rate``) is the per-round probability of attacking (named
``malicious_behavior_rate`` in the authors' released code); ``R0``
(``start_round``) lets the model learn the source class before the first attack. At ``p = 1,
R0 = 0`` every attacker attacks in every round, the paper's attacker.

The attack only hands the engine per-peer data (indices into the training images, labels), so
every trainer (sequential, vectorized, Ray) trains exactly what the sequential loop trains. A
peer that does not attack in a round trains on its clean data and is still counted as an
attacker in the detection metrics (the defense's TPR then counts its honest rounds as misses).

Images a peer's poisoned data needs that the data set lacks (a backdoor's triggered copies) are
appended to ``train_x`` once; the peer's indices point at the copies, other peers are untouched.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Sequence

import torch

from flhelpers.attacks.base import Attack, _check_start
from flhelpers.seeding import torch_generator


def check_unit_interval(name: str, value: Any, attack: str, open_left: bool = True) -> float:
    """``value`` as a float in ``(0, 1]`` (or ``[0, 1]`` with ``open_left=False``), else a ValueError
    that names the parameter, the attack and the range."""
    number = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not number or not ((0 < value <= 1) if open_left else (0 <= value <= 1)):
        interval = "(0, 1]" if open_left else "[0, 1]"
        raise ValueError(f"The {attack!r} attack needs {name} in {interval}, got {name}={value!r}.")
    return float(value)


def check_class(name: str, value: Any, num_classes: int | None) -> int:
    """A class index in ``0 .. num_classes - 1`` (any ``>= 0`` when ``num_classes`` is unknown)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (
            num_classes is not None and value >= num_classes):
        top = f"0..{num_classes - 1}" if num_classes is not None else "0, 1, ..."
        raise ValueError(f"{name}={value!r} is not a class of the data set (classes {top}).")
    return int(value)


def check_pair(source_class: Any, target_class: Any, num_classes: int | None) -> tuple[int, int]:
    """A source -> target pair of two different classes of the data set."""
    s = check_class("source_class", source_class, num_classes)
    t = check_class("target_class", target_class, num_classes)
    if s == t:
        raise ValueError(f"source_class and target_class are both {s}: a label-flipping attack needs "
                         f"two different classes.")
    return s, t


def flip(labels: torch.Tensor, source_class: int, target_class: int,
         positions: torch.Tensor | None = None) -> torch.Tensor:
    """``labels`` with the ``source_class`` entries (only those at ``positions`` when given) set
    to ``target_class``."""
    out = labels.clone()
    if positions is None:
        out[labels == source_class] = target_class
    else:
        out[positions] = target_class
    return out


@dataclasses.dataclass
class PoisonedPeer:
    """What :meth:`DataPoisoning.poison_peer` returns for one attacker.

    ``labels``: the labels it trains on when it attacks (one per local sample);
    ``positions``: local positions whose images are replaced by ``images`` (``None``: none).
    """

    labels: torch.Tensor
    positions: torch.Tensor | None = None
    images: torch.Tensor | None = None


class DataPoisoning(Attack):
    """Base of the data-poisoning attacks: poisoned data once, clean or poisoned per round.

    Args:
        rate: ``p``, the probability that an attacker attacks in a given round (0 < p <= 1).
        start_round: ``R0``, the first round in which attackers attack.

    Attackers are drawn among the source-class holders, as the label flip's are, so every
    attack of this family meets the same attackers at the same ratio and seed.
    """

    name = "data-poisoning"
    needs_source_holders = True

    def __init__(self, rate: float = 1.0, start_round: int = 0) -> None:
        self.rate = check_unit_interval("rate", rate, self.name)
        self.start_round = _check_start(start_round)
        self.seed = 0
        self.clean_peers: dict[int, Any] = {}

    # -- what an attacker's data becomes ------------------------------------------------------
    def poison_peer(self, peer: Any, dataset: Any, rank: int, seed: int) -> PoisonedPeer:
        """The poisoned data of one attacker; ``rank`` is its place among the sorted attackers."""
        raise NotImplementedError

    def poison_data(self, dataset: Any, peers: list[Any], attackers: Sequence[int],
                    seed: int) -> tuple[Any, list[Any]]:
        """Every attacker's data through :meth:`poison_peer`; new images appended to ``train_x``."""
        self.seed = int(seed)
        self.clean_peers = {}
        out = list(peers)
        size = len(dataset.train_x)
        new_x, new_y = [], []
        for rank, k in enumerate(sorted(int(a) for a in attackers)):
            peer = peers[k]
            poisoned = self.poison_peer(peer, dataset, rank, self.seed)
            indices = peer.indices
            if poisoned.positions is not None and len(poisoned.positions):
                count = len(poisoned.positions)
                indices = indices.clone()
                moved = indices[poisoned.positions]
                indices[poisoned.positions] = torch.arange(size, size + count, device=indices.device)
                size += count
                new_x.append(poisoned.images.to(dataset.train_x.device, dataset.train_x.dtype))
                new_y.append(dataset.train_y[moved])  # the copies' true labels
            self.clean_peers[k] = peer
            out[k] = dataclasses.replace(peer, indices=indices, labels=poisoned.labels)
        if new_x:
            dataset = dataclasses.replace(dataset, train_x=torch.cat([dataset.train_x, *new_x]),
                                          train_y=torch.cat([dataset.train_y, *new_y]))
        return dataset, out

    # -- when an attacker attacks -------------------------------------------------------------
    def attacks_in(self, peer_id: int, round: int) -> bool:
        """Whether attacker ``peer_id`` attacks in ``round`` (formula in the module docstring)."""
        if round < self.start_round:
            return False
        if self.rate >= 1.0:
            return True
        u = torch.rand(1, generator=torch_generator(self.seed, "attack-timing", round, int(peer_id)))
        return bool(u.item() < self.rate)

    def is_attacking(self, peer: Any, round: int) -> bool:
        """``peer`` is an attacker and attacks in ``round``."""
        return peer.peer_id in self.clean_peers and self.attacks_in(peer.peer_id, round)

    def round_peers(self, peers: list[Any], round: int) -> list[Any]:
        """Attackers that sit ``round`` out train on their clean data."""
        return [self.clean_peers[p.peer_id] if p.peer_id in self.clean_peers and not self.attacks_in(
            p.peer_id, round) else p for p in peers]

    def _timing(self) -> str:
        return f"rate={self.rate}, start_round={self.start_round}"


def data_poisoning_factory(cls: type[DataPoisoning]):
    """A registry factory for ``cls``: passes ``source_class``, ``target_class`` and
    ``num_classes`` on, and turns an unknown keyword (a typo in ``attack_kwargs``) into a
    ValueError naming the valid ones."""
    fixed = ("self", "source_class", "target_class", "num_classes")
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in fixed]

    def make(source_class: int, target_class: int, num_classes: int | None = None, **kwargs: Any) -> Attack:
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise ValueError(f"Unknown argument(s) {unknown} for the {cls.name!r} attack; valid: {valid}.")
        return cls(source_class, target_class, num_classes, **kwargs)

    make.__doc__ = cls.__doc__
    return make


__all__ = ["DataPoisoning", "data_poisoning_factory", "PoisonedPeer", "check_class", "check_pair", "check_unit_interval", "flip"]
