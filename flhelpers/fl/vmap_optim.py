"""The optimizers of the vectorized backend (:mod:`flhelpers.fl.vectorized`): one row per peer.

:class:`BatchedSGD` and :class:`BatchedAdam` apply PyTorch's update rules (``torch.optim.SGD``
with momentum and weight decay, ``torch.optim.Adam``) verbatim to ``(C, D)`` parameter and state
tensors, one row per peer of a chunk; a peer whose row is not active at a step keeps its
parameters. :func:`make_batched_optimizer` is the batched twin of
:func:`flhelpers.fl.training.make_optimizer`.
"""

from __future__ import annotations

import math

import torch

from flhelpers.config import ExperimentConfig

__all__ = ["BatchedAdam", "BatchedSGD", "make_batched_optimizer"]


class BatchedSGD:
    """``torch.optim.SGD`` (dampening 0, no Nesterov), one row per peer.

    ``g <- g + lambda p``; ``b <- g`` at the first step, else ``b <- mu b + g``;
    ``p <- p - eta b`` (``b = g`` without momentum). Rows with ``active = False`` keep ``p``.
    """

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buf: torch.Tensor | None = None

    @property
    def state_copies(self) -> int:
        return 1 if self.momentum else 0

    def step(self, params: torch.Tensor, grads: torch.Tensor, active: torch.Tensor) -> None:
        g = grads.add(params, alpha=self.weight_decay) if self.weight_decay else grads
        if self.momentum:
            if self.buf is None:
                self.buf = g.clone()
            else:
                self.buf.mul_(self.momentum).add_(g)
            g = self.buf
        params.addcmul_(g, active.unsqueeze(1).to(params.dtype), value=-self.lr)


class BatchedAdam:
    """``torch.optim.Adam`` (no AMSGrad), one row per peer, PyTorch's formulation.

    ``g <- g + lambda p``; ``m <- beta1 m + (1 - beta1) g``; ``v <- beta2 v + (1 - beta2) g^2``;
    ``p <- p - eta / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``, ``t`` the step
    count (the same for every peer still stepping: peers only stop at the end).
    """

    def __init__(self, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.t = 0

    state_copies = 2

    def step(self, params: torch.Tensor, grads: torch.Tensor, active: torch.Tensor) -> None:
        b1, b2 = self.betas
        g = grads.add(params, alpha=self.weight_decay) if self.weight_decay else grads
        if self.m is None:
            self.m, self.v = torch.zeros_like(params), torch.zeros_like(params)
        self.t += 1
        self.m.lerp_(g, 1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        step_size = self.lr / (1 - b1 ** self.t)
        denom = (self.v.sqrt() / math.sqrt(1 - b2 ** self.t)).add_(self.eps)
        scale = active.unsqueeze(1).to(params.dtype) * -step_size
        params.add_(self.m / denom * scale)


def make_batched_optimizer(cfg: ExperimentConfig) -> BatchedSGD | BatchedAdam:
    """The batched twin of :func:`flhelpers.fl.training.make_optimizer`."""
    if cfg.optimizer == "adam":
        return BatchedAdam(cfg.lr, cfg.weight_decay)
    return BatchedSGD(cfg.lr, cfg.momentum, cfg.weight_decay)
