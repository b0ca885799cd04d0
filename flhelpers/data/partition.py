"""Seeded splits of a training set among peers (paper section 6.1).

* ``iid``: a uniform random permutation cut into K near-equal parts.
* ``dirichlet`` (mild non-iid): for each class c, proportions p_c ~ Dir(alpha * 1_K) over the
  peers; class c's shuffled samples are cut at the cumulative proportions.
* ``extreme``: one class per peer and the same number of peers per class (10 per class for 100
  peers and 10 classes); each class's shuffled samples are cut into equal parts.

Every peer gets at least ``min_samples`` samples (one local batch), guaranteed as follows:
iid and extreme cut into equal parts, so the check ``N_part >= min_samples`` is exact and
raises before any training; Dirichlet redraws the proportions (rejection sampling, up to
``max_tries`` draws from the same seeded generator) until every peer has enough, and raises
a ValueError naming the remedy otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

PARTITIONS = ("iid", "dirichlet", "extreme")


@dataclass
class Partition:
    """Each peer's sample indices into the training set, and a peers x classes histogram."""

    indices: list[torch.Tensor]
    histogram: np.ndarray

    @property
    def num_peers(self) -> int:
        return len(self.indices)

    def sizes(self) -> np.ndarray:
        return np.array([len(i) for i in self.indices], dtype=np.int64)

    def holders_of(self, cls: int) -> np.ndarray:
        """Ids of the peers holding at least one sample of class ``cls``."""
        return np.flatnonzero(self.histogram[:, cls] > 0)


def _histogram(labels: np.ndarray, indices: list[np.ndarray], num_classes: int) -> np.ndarray:
    return np.stack([np.bincount(labels[i], minlength=num_classes) for i in indices]).astype(np.int64)


def _finish(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> Partition:
    parts = [np.sort(p) for p in parts]
    return Partition(
        indices=[torch.from_numpy(p.astype(np.int64)) for p in parts],
        histogram=_histogram(labels, parts, num_classes),
    )


def iid_partition(labels: np.ndarray, num_peers: int, rng: np.random.Generator, min_samples: int = 1,
                  num_classes: int | None = None) -> Partition:
    """Uniform random split into ``num_peers`` near-equal parts."""
    n = len(labels)
    if n // num_peers < min_samples:
        raise ValueError(
            f"iid split of {n} samples among {num_peers} peers gives {n // num_peers} per peer, "
            f"fewer than one batch ({min_samples}); use fewer peers or a smaller batch."
        )
    parts = np.array_split(rng.permutation(n), num_peers)
    return _finish(labels, parts, num_classes or int(labels.max()) + 1)


def dirichlet_partition(labels: np.ndarray, num_peers: int, alpha: float, rng: np.random.Generator,
                        min_samples: int = 1, num_classes: int | None = None,
                        max_tries: int = 1000) -> Partition:
    """Per-class Dirichlet(alpha) proportions over peers, redrawn until each peer has ``min_samples``."""
    if alpha <= 0:
        raise ValueError(f"dirichlet_alpha must be > 0, got {alpha}.")
    c = num_classes or int(labels.max()) + 1
    by_class = [np.flatnonzero(labels == k) for k in range(c)]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_peers)]
        for idx in by_class:
            idx = rng.permutation(idx)
            p = dirichlet_proportions(rng, num_peers, alpha)
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for peer, chunk in enumerate(np.split(idx, cuts)):
                parts[peer].append(chunk)
        merged = [np.concatenate(p) for p in parts]
        if min(len(p) for p in merged) >= min_samples:
            return _finish(labels, merged, c)
    raise ValueError(
        f"Could not draw a Dirichlet(alpha={alpha}) split of {len(labels)} samples among "
        f"{num_peers} peers giving every peer at least {min_samples} samples in {max_tries} draws "
        f"(even at a large alpha each peer gets about {len(labels) // num_peers}); "
        f"use fewer peers or a smaller batch{', or a larger alpha (a more even split)' if alpha < 1e3 else ''}."
    )


def dirichlet_proportions(rng: np.random.Generator, num_peers: int, alpha: float) -> np.ndarray:
    """``p ~ Dir(alpha * 1_K)``: one class's shares of the ``K`` peers.

    ``rng.dirichlet`` normalises ``K`` draws ``g_k ~ Gamma(alpha, 1)``; once ``K * alpha`` nears
    the float range (``alpha = 1e308``) their sum overflows and it returns zeros, which would put
    the whole class on the last peer. Since ``Dir(alpha)`` is the law of ``g / sum(g)`` for any
    common scale of the ``g_k``, such draws are redone as ``g_k ~ Gamma(alpha, 1 / alpha)``
    (mean 1, no overflow), the same distribution; every other alpha keeps ``rng.dirichlet``'s
    draws, so existing splits are unchanged.
    """
    p = rng.dirichlet(np.full(num_peers, alpha))
    total = float(p.sum())
    if math.isfinite(total) and abs(total - 1.0) < 1e-6:
        return p
    g = rng.gamma(alpha, 1.0 / alpha, num_peers)
    return g / g.sum()


def extreme_partition(labels: np.ndarray, num_peers: int, rng: np.random.Generator,
                      min_samples: int = 1, num_classes: int | None = None) -> Partition:
    """One class per peer, ``num_peers / num_classes`` peers per class; peer k holds class k // per."""
    c = num_classes or int(labels.max()) + 1
    if num_peers % c != 0:
        raise ValueError(
            f"The extreme split needs the number of peers ({num_peers}) to be a multiple of the "
            f"number of classes ({c}), so every class has the same number of peers."
        )
    per = num_peers // c
    parts: list[np.ndarray] = []
    for k in range(c):
        idx = rng.permutation(np.flatnonzero(labels == k))
        if len(idx) // per < min_samples:
            raise ValueError(
                f"Class {k} has {len(idx)} samples for {per} peers: fewer than one batch "
                f"({min_samples}) each; use fewer peers or a smaller batch."
            )
        parts.extend(np.array_split(idx, per))
    return _finish(labels, parts, c)


def make_partition(labels: torch.Tensor | np.ndarray, num_peers: int, scheme: str, seed: int,
                   alpha: float = 1.0, min_samples: int = 1,
                   num_classes: int | None = None) -> Partition:
    """Split by ``scheme`` (``iid``, ``dirichlet``, ``extreme``) with a generator seeded by ``seed``."""
    labels_np = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if num_peers < 1:
        raise ValueError(f"num_peers must be >= 1, got {num_peers}.")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return iid_partition(labels_np, num_peers, rng, min_samples, num_classes)
    if scheme in ("dirichlet", "mild"):
        return dirichlet_partition(labels_np, num_peers, alpha, rng, min_samples, num_classes)
    if scheme == "extreme":
        return extreme_partition(labels_np, num_peers, rng, min_samples, num_classes)
    raise ValueError(f"Unknown partition {scheme!r}; valid: {', '.join(PARTITIONS)}.")
