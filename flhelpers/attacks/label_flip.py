"""Label flipping (paper section 3): each attacker relabels **all** its ``source_class``
samples as ``target_class`` and otherwise trains honestly with the same hyperparameters.
"""

from __future__ import annotations

import torch

from flhelpers.attacks.base import Attack


class LabelFlip(Attack):
    """Relabel every ``source_class`` sample as ``target_class``."""

    name = "label_flip"
    needs_source_holders = True

    def __init__(self, source_class: int, target_class: int, num_classes: int | None = None) -> None:
        if source_class == target_class:
            raise ValueError(
                f"source_class and target_class are both {source_class}: a label-flipping attack "
                f"needs two different classes."
            )
        for name, c in (("source_class", source_class), ("target_class", target_class)):
            if c < 0 or (num_classes is not None and c >= num_classes):
                raise ValueError(
                    f"{name}={c} is out of range: the dataset has classes 0..{(num_classes or 1) - 1}."
                )
        self.source_class = int(source_class)
        self.target_class = int(target_class)

    def poison_labels(self, labels: torch.Tensor) -> torch.Tensor:
        out = labels.clone()
        out[labels == self.source_class] = self.target_class
        return out

    def __repr__(self) -> str:
        return f"LabelFlip({self.source_class} -> {self.target_class})"


__all__ = ["LabelFlip"]
