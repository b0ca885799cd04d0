"""The in-memory dataset every benchmark trains on, and the data-root setting.

A dataset is held whole as tensors: ``uint8`` images ``(N, C, H, W)`` or ``int64`` token ids
``(N, L)``, and ``int64`` labels. Images are normalised per batch by :meth:`FLDataset.prepare`,
so the training loop never runs per-sample Python transforms.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

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


def file_sizes(folder: Path, names: Iterable[str]) -> dict[str, int]:
    """``{name: size in bytes}`` of the files ``names`` in ``folder`` that exist: what a loader
    read, recorded in ``meta["source_files"]`` and from there in a run's ``config.json``."""
    sizes = {}
    for name in names:
        try:
            sizes[name] = (Path(folder) / name).stat().st_size
        except OSError:
            continue
    return sizes


def warn_if_short(name: str, source: str | os.PathLike, train: int, test: int,
                  full_train: int, full_test: int, stacklevel: int = 3) -> None:
    """Warn when a data set holds fewer samples than its standard size (a cut or partial copy):
    a run on it would otherwise look like a run on the full data."""
    if train >= full_train and test >= full_test:
        return
    warnings.warn(f"{name} in {source} holds {train} training and {test} test samples, fewer than the "
                  f"standard {full_train:,} and {full_test:,}: results will not match full-data runs. "
                  f"Replace it with the complete data set unless this is intended.", stacklevel=stacklevel)


def _tensor_sha256(h: "hashlib._Hash", t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def dataset_record(ds: "FLDataset") -> dict[str, Any]:
    """What a run trained and was tested on, for its ``config.json``: the sample counts, the
    SHA-256 of the training and of the test tensors (inputs and labels, after any subsetting)
    and the sizes of the source files the loader read (``meta["source_files"]``).

    Two runs of one config (one run id) on different data get different digests, so a
    finished run is not taken for a run on the data the data root holds now.
    """
    digests = {}
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        h = hashlib.sha256()
        _tensor_sha256(h, x)
        _tensor_sha256(h, y)
        digests[f"{split}_sha256"] = h.hexdigest()
    return {"train_samples": int(len(ds.train_y)), "test_samples": int(len(ds.test_y)), **digests,
            "source_files": dict(ds.meta.get("source_files", {}))}


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
    #: ``(mean, std)`` as ``(1, C, 1, 1)`` tensors per device (:meth:`normalisation`)
    _normalisation: dict[Any, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def normalisation(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean`` and ``std`` as float32 ``(1, C, 1, 1)`` tensors on ``device``, built once per
        device (not per batch: on CUDA each build is a host-to-device copy)."""
        key = (str(device), self.mean, self.std)
        if key not in self._normalisation:
            self._normalisation[key] = (torch.tensor(self.mean, device=device).view(1, -1, 1, 1),
                                        torch.tensor(self.std, device=device).view(1, -1, 1, 1))
        return self._normalisation[key]

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """A batch ready for the model: uint8 images -> normalised float; token ids unchanged."""
        if x.dtype != torch.uint8:
            return x
        x = x.float().div_(255.0)
        if self.mean is not None and self.std is not None:
            mean, std = self.normalisation(x.device)
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
