"""What a peer computes (local training), and the sequential backend that runs peers one by one.

PEER_UPDATE of Algorithm 1: start from the global model ``W^t``, train ``E`` local epochs of
mini-batch steps with a fresh optimizer, return ``W_k^{t+1} - W^t``. Each peer's batch order
and dropout noise come from seeds derived from ``(run seed, round, peer id)``, so any backend
that honours them reproduces the same updates.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from flhelpers.config import ExperimentConfig
from flhelpers.data.base import FLDataset
from flhelpers.models import loss_fn
from flhelpers.params import flatten_buffers, flatten_params, load_flat_buffers, load_flat_params
from flhelpers.seeding import derive_seed, torch_generator


@dataclass
class PeerData:
    """A peer's local data: indices into the training tensors and its (possibly flipped) labels."""

    peer_id: int
    indices: torch.Tensor
    labels: torch.Tensor

    @property
    def num_samples(self) -> int:
        return len(self.indices)


def make_optimizer(cfg: ExperimentConfig, params) -> torch.optim.Optimizer:
    """A fresh optimizer of the benchmark (SGD with momentum, or Adam)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def training_autocast(cfg: ExperimentConfig, device: torch.device) -> AbstractContextManager:
    """The context a local step's forward pass and loss run in: nothing for ``precision="float32"``,
    ``torch.autocast(device.type, dtype=torch.bfloat16)`` for ``"bfloat16"`` (the backward pass
    follows the forward's dtypes; parameters, gradients and optimizer state stay float32)."""
    if cfg.precision == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def batches_per_epoch(cfg: ExperimentConfig, num_samples: int) -> int:
    """Local steps an epoch: ``floor(n / B)`` with ``drop_last`` (the authors' DataLoader), else
    ``ceil(n / B)`` (the last batch short)."""
    if cfg.drop_last:
        return num_samples // cfg.batch_size
    return -(-num_samples // cfg.batch_size)


def batch_order(cfg: ExperimentConfig, peer: PeerData, round_: int, epoch: int) -> torch.Tensor:
    """The peer's shuffled local positions for one epoch (seeded by run seed, round, peer, epoch)."""
    g = torch_generator(cfg.seed, "batches", round_, peer.peer_id, epoch)
    return torch.randperm(peer.num_samples, generator=g)


def peer_update(model: nn.Module, cfg: ExperimentConfig, dataset: FLDataset, peer: PeerData,
                global_params: torch.Tensor, global_buffers: torch.Tensor, round_: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """PEER_UPDATE(k, W^t): ``(W_k^{t+1} - W^t, W_k's float buffers)``; ``model`` is reused scratch.

    Each epoch takes :func:`batches_per_epoch` steps over :func:`batch_order` (the short last
    batch dropped when ``cfg.drop_last``), each forward pass in :func:`training_autocast`."""
    load_flat_params(model, global_params)
    if global_buffers.numel():
        load_flat_buffers(model, global_buffers)
    model.train()
    opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    torch.manual_seed(derive_seed(cfg.seed, "dropout", round_, peer.peer_id))
    x_all, idx, y_all = dataset.train_x, peer.indices, peer.labels
    for epoch in range(cfg.local_epochs):
        # drawn on the CPU (the same numbers on every device), moved once an epoch: indexing
        # device tensors with a CPU permutation would copy it at every step
        order = batch_order(cfg, peer, round_, epoch).to(idx.device)
        for step in range(batches_per_epoch(cfg, len(order))):
            pos = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            xb = dataset.prepare(x_all[idx[pos]].to(device, non_blocking=True))
            yb = y_all[pos].to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with training_autocast(cfg, device):
                loss = loss_fn(cfg.loss, model(xb), yb)
            loss.backward()
            opt.step()
    return flatten_params(model) - global_params, flatten_buffers(model)


class SequentialTrainer:
    """The reference backend: one scratch model, peers trained one after another."""

    name = "sequential"

    def __init__(self, model: nn.Module, cfg: ExperimentConfig, dataset: FLDataset,
                 device: torch.device) -> None:
        self.model, self.cfg, self.dataset, self.device = model, cfg, dataset, device

    def train_round(self, peers: list[PeerData], global_params: torch.Tensor,
                    global_buffers: torch.Tensor, round_: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All peers' updates ``(K, D)`` and float buffers ``(K, B)``."""
        updates, buffers = [], []
        for peer in peers:
            u, b = peer_update(self.model, self.cfg, self.dataset, peer, global_params,
                               global_buffers, round_, self.device)
            updates.append(u)
            buffers.append(b)
        return torch.stack(updates), torch.stack(buffers)
