"""Camouflage against LFighter: a flipper that hides its output layer.

The attacker knows LFighter (Jebreel et al. 2023, Procedure 1) clusters peers on the
output-layer gradient rows of the two largest neurons. Each round it attacks, it trains twice
from the global model with the same batches and dropout (same peer seed): once on its flipped
labels (update ``U^f``), once on its true labels (``U^c``), and sends

    U = U^f                                 outside the output layer,
    U = lam * U^c + (1 - lam) * U^f          on the output layer (weights and bias).

``lam = 0`` is the paper's flipper (:class:`~flhelpers.attacks.label_flip.LabelFlip`); at
``lam = 1`` its output layer is an honest peer's, and the flip survives only through the
feature layers. The trade-off, ASR against LFighter's detection TPR as ``lam`` grows, is the
study's camouflage curve. Source: this project's own construction (the Beyond study); it is a
hand-made instance of the stealth idea of Bhagoji et al. ("Analyzing Federated Learning
through an Adversarial Lens", ICML 2019), who keep a malicious update close to a benign one.
The clean training doubles an attacker's compute in the rounds it attacks.
"""

from __future__ import annotations

from typing import Any

import torch

from flhelpers.attacks.data_poisoning import check_unit_interval
from flhelpers.attacks.timed_flip import TimedFlip


def blend_output_layer(flipped: torch.Tensor, clean: torch.Tensor, lam: float, layout: Any) -> torch.Tensor:
    """``flipped`` rows with their output layer replaced by ``lam * clean + (1 - lam) * flipped``."""
    out = flipped.clone()
    parts = [layout.output_weight] + ([layout.output_bias] if layout.output_bias is not None else [])
    for sl in parts:
        out[:, sl] = lam * clean[:, sl] + (1.0 - lam) * flipped[:, sl]
    return out


class CamouflageFlip(TimedFlip):
    """The label flip with a camouflaged output layer (module docstring).

    Args:
        source_class, target_class: the flipped pair.
        num_classes: the data set's classes (for the range check).
        lam: the clean update's weight on the output layer, in [0, 1].
        rate, start_round: when to attack (:class:`~flhelpers.attacks.data_poisoning.DataPoisoning`).
    """

    name = "camouflage-flip"

    def __init__(self, source_class: int, target_class: int, num_classes: int | None = None,
                 lam: float = 0.5, rate: float = 1.0, start_round: int = 0) -> None:
        super().__init__(source_class, target_class, num_classes, rate, start_round)
        self.lam = check_unit_interval("lam", lam, self.name, open_left=False)

    def round_peers(self, peers: list[Any], round: int) -> list[Any]:
        """The round's peers (non-attacking attackers on clean data), then a clean twin of each
        attacking attacker, in the order of ``peers``."""
        twins = [self.clean_peers[p.peer_id] for p in peers if self.is_attacking(p, round)]
        return super().round_peers(peers, round) + twins

    def merge_round(self, updates: torch.Tensor, buffers: torch.Tensor, peers: list[Any], round: int,
                    layout: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        k = len(peers)
        rows = [i for i, p in enumerate(peers) if self.is_attacking(p, round)]
        if len(updates) != k + len(rows):
            raise RuntimeError(f"camouflage-flip expected {k + len(rows)} trained rows ({k} peers and "
                               f"{len(rows)} clean twins), got {len(updates)}.")
        out = updates[:k]
        if rows:
            if layout is None:
                raise ValueError("camouflage-flip needs the parameter layout to find the output layer.")
            index = torch.tensor(rows, device=updates.device)
            out = out.clone()
            out[index] = blend_output_layer(updates[index], updates[k:], self.lam, layout)
        return out, buffers[:k]

    def __repr__(self) -> str:
        return f"CamouflageFlip({self.source_class} -> {self.target_class}, lam={self.lam}, {self._timing()})"


__all__ = ["CamouflageFlip", "blend_output_layer"]
