"""The in-memory dataset every benchmark trains on, and the data-root setting.

A dataset is held whole as tensors: ``uint8`` images ``(N, C, H, W)`` or ``int64`` token ids
``(N, L)``, and ``int64`` labels. Images are normalised per batch by :meth:`FLDataset.prepare`,
so the training loop never runs per-sample Python transforms.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

DATA_ENV = "FLHELPERS_DATA"
#: overrides where derived files (the tokenised IMDB tensors) are cached
CACHE_ENV = "FLHELPERS_CACHE"


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The data root: the ``data_root`` argument, else ``$FLHELPERS_DATA``, else ``./data``."""
    if data_root is not None and str(data_root) != "":
        return Path(data_root).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path("data")


def resolve_cache_dir() -> Path:
    """Where flhelpers caches files derived from the data: ``$FLHELPERS_CACHE``, else
    ``$XDG_CACHE_HOME/flhelpers``, else ``~/.cache/flhelpers``.

    Never the data root: data roots are often read-only or shared between users and projects.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "flhelpers"


class DataMissingError(FileNotFoundError):
    """Raised when a data set is not on disk and cannot be downloaded."""


@dataclass
class FLDataset:
    """A whole data set in memory.

    Attributes:
        name: registry name (``mnist``, ``cifar10``, ``imdb``).
        train_x, train_y, test_x, test_y: the tensors.
        num_classes: number of classes (2 for IMDB).
        class_names: a name per class, for plots.
        mean, std: per-channel normalisation of uint8 images (``None`` for token ids).
        meta: extra facts a model needs (``vocab_size`` for text) or a user may want.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """A batch ready for the model: uint8 images -> normalised float; token ids unchanged."""
        if x.dtype != torch.uint8:
            return x
        x = x.float().div_(255.0)
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0) -> "FLDataset":
        """A seeded random subset of ``train`` training and ``test`` test examples."""
        g = torch.Generator().manual_seed(seed)
        tx, ty, vx, vy = self.train_x, self.train_y, self.test_x, self.test_y
        if train is not None and train < len(ty):
            idx = torch.randperm(len(ty), generator=g)[:train].sort().values
            tx, ty = tx[idx], ty[idx]
        if test is not None and test < len(vy):
            idx = torch.randperm(len(vy), generator=g)[:test].sort().values
            vx, vy = vx[idx], vy[idx]
        return FLDataset(
            self.name, tx, ty, vx, vy, self.num_classes, self.class_names,
            self.mean, self.std, dict(self.meta),
        )

    def __repr__(self) -> str:
        return (
            f"FLDataset({self.name!r}, train={tuple(self.train_x.shape)}, "
            f"test={tuple(self.test_x.shape)}, classes={self.num_classes})"
        )
