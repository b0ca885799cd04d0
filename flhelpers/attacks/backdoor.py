"""The backdoor the paper leaves to future work: BadNets (Gu, Dolan-Gavitt and Garg, "BadNets:
Identifying Vulnerabilities in the Machine Learning Model Supply Chain", 2017), optionally with
model replacement (Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS 2020).

Definition: the trigger is a ``s x s`` square of value ``v`` (default: white, 255 on uint8
images) in the bottom-right corner of every channel. Each attacker ``k`` draws
``m_k = floor(f n_k + 1/2)`` of its ``n_k`` samples whose true class is in ``from_classes``
(default every class but the target): the first ``m_k`` of
``torch.randperm(n_k, generator=torch_generator(seed, "backdoor", k))``. It trains on copies of
those images with the trigger stamped, labelled ``target_class``; its other samples are
untouched. Model replacement scales an attacking peer's update by ``gamma = boost``
(Bagdasaryan et al. send ``gamma (X - G) + G`` with ``gamma = n / eta``; ``boost = 1`` does
not scale).

Metric: backdoor ASR (``backdoor_attack_success_rate``), the share of test images whose class
is not the target that the model predicts as the target once the trigger is stamped on them,
beside the clean accuracy (:mod:`flhelpers.metrics.attack_metrics`).

Neutral setting: ``trigger_size=0``, ``from_classes=[source_class]``, ``fraction=1``,
``boost=1`` relabels every source-class sample as the target without changing an image: the
paper's label flip (:class:`~flhelpers.attacks.label_flip.LabelFlip`), and no backdoor ASR.
Attackers are drawn among the source-class holders, as the flip's are, so a backdoor run and a
flip run at the same ratio and seed have the same attackers.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from flhelpers.attacks.data_poisoning import DataPoisoning, PoisonedPeer, check_class, check_unit_interval
from flhelpers.seeding import torch_generator


def stamp(images: torch.Tensor, size: int, value: float | None = None) -> torch.Tensor:
    """``images`` ``(N, C, H, W)`` with a ``size x size`` square of ``value`` in the bottom-right
    corner of every channel (``value=None``: 255 for uint8 images, else 1.0)."""
    if images.dim() != 4:
        raise ValueError(f"A backdoor trigger needs images (N, C, H, W); got a tensor of shape "
                         f"{tuple(images.shape)} (token ids cannot carry this trigger).")
    if size > min(images.shape[-2:]):
        raise ValueError(f"trigger_size={size} is larger than the {images.shape[-2]} x {images.shape[-1]} images.")
    out = images.clone()
    if size:
        v = value if value is not None else (255 if images.dtype == torch.uint8 else 1.0)
        out[..., images.shape[-2] - size:, images.shape[-1] - size:] = v
    return out


def backdoor_positions(true_labels: torch.Tensor, from_classes: Sequence[int], fraction: float,
                       generator: torch.Generator) -> torch.Tensor:
    """The local positions an attacker poisons: ``floor(f n + 1/2)`` of its ``n`` samples of
    ``from_classes``, the first of a seeded permutation, in increasing order."""
    eligible = torch.nonzero(torch.isin(true_labels.cpu(), torch.tensor(list(from_classes)))).flatten()
    count = int(fraction * len(eligible) + 0.5)
    chosen = eligible[torch.randperm(len(eligible), generator=generator)[:count]]
    return chosen.sort().values.to(true_labels.device)


class Backdoor(DataPoisoning):
    """BadNets with an optional model-replacement boost (module docstring).

    Args:
        source_class: the config's source class (``from_classes=[source_class]`` is the neutral setting).
        target_class: the backdoor's target.
        num_classes: the data set's classes (for the range checks).
        fraction: ``f``, the share of each attacker's eligible samples it poisons, in (0, 1].
        trigger_size: ``s >= 0``, the side of the square trigger in pixels (0: no trigger).
        trigger_value: ``v`` (``None``: white).
        from_classes: the true classes eligible for poisoning (``None``: every class but the target).
        boost: ``gamma >= 1``, the model-replacement factor on an attacking peer's update.
        rate, start_round: when to attack (:class:`DataPoisoning`).
    """

    name = "backdoor"

    def __init__(self, source_class: int, target_class: int, num_classes: int | None = None,
                 fraction: float = 0.5, trigger_size: int = 4, trigger_value: float | None = None,
                 from_classes: Sequence[int] | None = None, boost: float = 1.0,
                 rate: float = 1.0, start_round: int = 0) -> None:
        super().__init__(rate, start_round)
        self.source_class = check_class("source_class", source_class, num_classes)
        self.target_class = check_class("target_class", target_class, num_classes)
        self.fraction = check_unit_interval("fraction", fraction, self.name)
        if isinstance(trigger_size, bool) or not isinstance(trigger_size, int) or trigger_size < 0:
            raise ValueError(f"trigger_size must be an integer >= 0 (pixels), got {trigger_size!r}.")
        self.trigger_size = trigger_size
        if trigger_value is not None and (isinstance(trigger_value, bool) or not isinstance(trigger_value, (int, float))):
            raise ValueError(f"trigger_value must be a number or None (white), got {trigger_value!r}.")
        self.trigger_value = trigger_value
        if from_classes is None:
            top = num_classes if num_classes is not None else max(source_class, target_class) + 1
            from_classes = [c for c in range(top) if c != self.target_class]
        if isinstance(from_classes, (str, bytes)) or not isinstance(from_classes, Sequence) or not from_classes:
            raise ValueError(f"from_classes must be a non-empty list of classes or None, got {from_classes!r}.")
        self.from_classes = tuple(check_class("from_classes entry", c, num_classes) for c in from_classes)
        if self.target_class in self.from_classes:
            raise ValueError(f"from_classes={list(self.from_classes)} contains the target class "
                             f"{self.target_class}; its samples already carry the target label.")
        if isinstance(boost, bool) or not isinstance(boost, (int, float)) or not 1.0 <= boost < float("inf"):
            raise ValueError(f"boost (model replacement) must be a finite number >= 1, got {boost!r}.")
        self.boost = float(boost)

    def poison_peer(self, peer: Any, dataset: Any, rank: int, seed: int) -> PoisonedPeer:
        gen = torch_generator(seed, "backdoor", int(peer.peer_id))
        positions = backdoor_positions(peer.labels, self.from_classes, self.fraction, gen)
        labels = peer.labels.clone()
        labels[positions] = self.target_class
        images = stamp(dataset.train_x[peer.indices[positions]], self.trigger_size, self.trigger_value)
        return PoisonedPeer(labels, positions, images)

    def merge_round(self, updates: torch.Tensor, buffers: torch.Tensor, peers: list[Any], round: int,
                    layout: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Model replacement: the rows of the peers attacking this round times ``boost``."""
        if self.boost == 1.0:
            return updates, buffers
        rows = [i for i, p in enumerate(peers) if self.is_attacking(p, round)]
        if not rows:
            return updates, buffers
        out = updates.clone()
        index = torch.tensor(rows, device=updates.device)
        out[index] = updates[index] * self.boost
        return out, buffers

    def stamp_trigger(self, images: torch.Tensor) -> torch.Tensor | None:
        return stamp(images, self.trigger_size, self.trigger_value) if self.trigger_size else None

    @property
    def backdoor_target(self) -> int | None:
        return self.target_class if self.trigger_size else None

    def __repr__(self) -> str:
        return (f"Backdoor(target={self.target_class}, fraction={self.fraction}, trigger_size={self.trigger_size}, "
                f"boost={self.boost}, {self._timing()})")


__all__ = ["Backdoor", "backdoor_positions", "stamp"]
