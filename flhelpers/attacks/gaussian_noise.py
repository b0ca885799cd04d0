"""FFL's Gaussian-noise attack (``ffl-readme.md``, the paper's related systems): the attacker sends its
trained model with noise ``N(0, sigma^2)`` added to each tensor, each tensor perturbed with
probability ``prob``. Adding noise to the model ``W_k`` adds the same noise to the update ``W_k - W``.
"""

from __future__ import annotations

import math

import torch

from flhelpers.attacks.base import ModelPoisoning


class GaussianNoise(ModelPoisoning):
    """FFL's Gaussian-noise attack: ``W_k + N(0, sigma^2)`` on each tensor with probability ``prob``.

    Args:
        sigma: the noise's standard deviation (> 0).
        prob: the probability that a given tensor of the model is perturbed (0 < prob <= 1);
            drawn independently per attacker, round and tensor.
        start_round: the first attacked round.

    Without a layout the whole update is one tensor. The draws come from the engine's
    per-round generator, so a run is reproducible.
    """

    name = "gaussian-noise"

    def __init__(self, sigma: float = 1.0, prob: float = 1.0, start_round: int = 0) -> None:
        super().__init__(start_round)
        sigma, prob = float(sigma), float(prob)
        if not sigma > 0 or math.isinf(sigma):
            raise ValueError(f"GaussianNoise needs a finite sigma > 0, got sigma={sigma}.")
        if not 0.0 < prob <= 1.0:
            raise ValueError(f"GaussianNoise needs 0 < prob <= 1 (per-tensor probability), got prob={prob}.")
        self.sigma, self.prob = sigma, prob

    def poison(self, updates, is_attacker, generator, layout):
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        d = updates.shape[1]
        slices = [layout.slice_of(n) for n in layout.names] if layout is not None else [slice(0, d)]
        out = updates.clone()
        for k in is_attacker.nonzero().flatten().tolist():
            for sl in slices:
                if torch.rand(1, generator=gen).item() >= self.prob:
                    continue
                n = sl.stop - sl.start
                noise = torch.randn(n, generator=gen, dtype=updates.dtype) * self.sigma
                out[k, sl] += noise.to(updates.device)
        return out

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma}, prob={self.prob}, start_round={self.start_round})"


__all__ = ["GaussianNoise"]
