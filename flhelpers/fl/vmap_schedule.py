"""The peers' batches, step by step, for the vectorized backend (:mod:`flhelpers.fl.vectorized`).

Step ``s`` of peer ``k`` uses the batch the sequential loop uses: epoch ``e = s // S_k`` of
:func:`flhelpers.fl.training.batch_order`, positions ``[j B, min((j+1) B, n_k))``, with
``S_k = ceil(n_k / B)`` steps an epoch, or ``floor(n_k / B)`` with ``drop_last``. A peer that has
taken its ``E * S_k`` steps takes no further step. :func:`build_schedule` lays this out for a
chunk of peers as one :class:`Schedule`; :func:`steps_of` counts a peer's steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from flhelpers.config import ExperimentConfig
from flhelpers.fl.training import PeerData, batch_order, batches_per_epoch

__all__ = ["Schedule", "build_schedule", "steps_of"]


@dataclass
class Schedule:
    """Which samples each peer of a chunk uses at each lockstep step.

    ``positions[k, s]`` are the ``B`` local positions (into peer ``k``'s data) of its batch at
    step ``s``, ``-1`` where there is no sample; ``sizes[k, s]`` is the real batch size (0 once
    peer ``k`` has taken all its ``E * ceil(n_k / B)`` steps).
    """

    positions: torch.Tensor
    sizes: np.ndarray

    @property
    def num_steps(self) -> int:
        return self.sizes.shape[1]


def steps_of(cfg: ExperimentConfig, num_samples: int) -> int:
    """Local steps of a peer with ``num_samples`` samples: ``E * S`` with ``S`` from
    :func:`flhelpers.fl.training.batches_per_epoch`."""
    return cfg.local_epochs * batches_per_epoch(cfg, num_samples)


def build_schedule(cfg: ExperimentConfig, peers: Sequence[PeerData], round_: int,
                   device: torch.device | str = "cpu") -> Schedule:
    """The lockstep :class:`Schedule` of ``peers`` in round ``round_``; epoch ``e`` of peer
    ``k`` is :func:`flhelpers.fl.training.batch_order` cut into batches of ``B`` (last one short,
    or dropped with ``drop_last``)."""
    bsz, epochs = cfg.batch_size, cfg.local_epochs
    per_epoch = [batches_per_epoch(cfg, p.num_samples) for p in peers]
    total = max([e * epochs for e in per_epoch] + [0])
    positions = torch.full((len(peers), total, bsz), -1, dtype=torch.long)
    sizes = np.zeros((len(peers), total), dtype=np.int64)
    for k, peer in enumerate(peers):
        n, s = peer.num_samples, per_epoch[k]
        used = min(n, s * bsz)  # drop_last: the tail past the last full batch is not trained on
        for e in range(epochs):
            padded = torch.full((s * bsz,), -1, dtype=torch.long)
            padded[:used] = batch_order(cfg, peer, round_, e)[:used]
            positions[k, e * s:(e + 1) * s] = padded.view(s, bsz)
            sizes[k, e * s:(e + 1) * s] = bsz
            if s:
                sizes[k, (e + 1) * s - 1] = used - (s - 1) * bsz
    return Schedule(positions.to(device), sizes)
