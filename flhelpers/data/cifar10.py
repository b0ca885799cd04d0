"""CIFAR-10 (Krizhevsky, 2009): 50,000 training and 10,000 test colour images, 32 x 32, 10 classes.

On-disk layout (the "python version" that ``torchvision.datasets.CIFAR10`` extracts)::

    <data_root>/cifar-10-batches-py/data_batch_1 ... data_batch_5   (10,000 images each)
    <data_root>/cifar-10-batches-py/test_batch                      (10,000 images)

Each batch is a pickle of a dict with ``data`` (uint8, ``(10000, 3072)``, each row the red,
green then blue 32 x 32 planes) and ``labels`` (10,000 ints in 0..9).

The pickles are read directly rather than through torchvision, because torchvision insists
on the MD5 of the original files and on all five training batches: the offline mirror holds
re-written pickles without the ``filenames`` key. Whatever ``data_batch_N`` are present are
used (in order), and ``meta`` records how many; fewer than five raises a warning, since the
paper's CIFAR10 benchmarks (§6.1, ResNet18, 20 peers, attack dog -> cat) train on all 50,000
images. ``train_batches=N`` asks for exactly the first ``N`` (the presets ask for 5, so a run's
id names its training set and a data root with fewer batches fails before training).
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from flhelpers.data.base import FLDataset, file_sizes, resolve_data_root, warn_if_short
from flhelpers.data.download import DataCorruptError, dir_is_writable, raise_missing, removing_new_folders

__all__ = ["CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "load_cifar10", "read_cifar_batch"]

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_FILES: tuple[str, ...] = CIFAR10_TRAIN_BATCHES + (CIFAR10_TEST_BATCH,)
#: images in each official batch (five training batches, one test batch)
CIFAR10_BATCH_SIZE = 10000
CIFAR10_MEAN: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, ...] = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_HINT = (
    "Get the python version from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
    f"and extract it so that the folder {CIFAR10_FOLDER}/ sits in the data root. "
    "At least one data_batch_N and test_batch are required."
)


def _batch_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR-10 batch pickle refers to: numpy's array, dtype and scalar
    rebuilders (under ``numpy.core`` as numpy 1 writes them, ``numpy._core`` as numpy 2 does),
    and ``_codecs.encode``, which protocols 0-2 use for ``bytes`` written by Python 3."""
    import codecs

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                              ("_codecs", "encode"): codecs.encode,
                                              ("codecs", "encode"): codecs.encode}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds only what a CIFAR-10 batch holds (dicts, lists, strings, bytes,
    numbers and numpy arrays): any other global (``os.system``, ``builtins.exec``, a class
    of a library) is refused, so a crafted file in the data root cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        found = _batch_globals().get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which a CIFAR-10 batch never holds (refused: "
                f"unpickling it could run code)")
        return found


def read_cifar_batch(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one CIFAR-10 python batch: uint8 images ``(N, 3, 32, 32)`` and int64 labels ``(N,)``.

    The pickle is read with :class:`_BatchUnpickler`, which admits only the types a batch holds,
    never code (``pickle.load`` would run whatever a crafted file asks for).

    Raises:
        DataCorruptError: naming the file, when it is not a readable pickle of the expected form
            (or refers to anything but plain data and numpy arrays).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            entry = _BatchUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, ... : all mean "damaged"
        raise DataCorruptError(
            f"Could not read the CIFAR-10 batch {path}: {type(exc).__name__}: {exc}. "
            f"The file is damaged or not a CIFAR-10 python pickle; delete it and download again."
        ) from exc
    if not isinstance(entry, dict) or "data" not in entry or not (
        "labels" in entry or "fine_labels" in entry
    ):
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise DataCorruptError(
            f"The CIFAR-10 batch {path} lacks the keys 'data' and 'labels' (found {keys})."
        )
    data = np.asarray(entry["data"])
    labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataCorruptError(
            f"The CIFAR-10 batch {path} has 'data' of dtype {data.dtype} and shape {data.shape}; "
            f"expected uint8 (N, 3072)."
        )
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataCorruptError(
            f"The CIFAR-10 batch {path} has {labels.shape} labels for {data.shape[0]} images, "
            f"or labels outside 0..9."
        )
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels)


def load_cifar10(data_root: str | os.PathLike | None = None, download: bool = True,
                 train_batches: int | None = None) -> FLDataset:
    """Load CIFAR-10 as an in-memory :class:`FLDataset`.

    Args:
        data_root: folder holding ``cifar-10-batches-py/`` (default: ``$FLHELPERS_DATA``,
            else ``./data``).
        download: when the folder is absent (or holds no batch at all), download and extract
            the official archive (torchvision's downloader, MD5-checked) into the data root.
            A folder that has some batches is never touched.
        train_batches: read exactly ``data_batch_1`` ... ``data_batch_<N>`` (``N`` in 1..5;
            a missing one raises ``DataMissingError``); ``None`` reads every batch present.
            The presets name ``5`` so that a run's id says it trained on all 50,000 images.

    Returns:
        uint8 images ``(N, 3, 32, 32)`` and int64 labels; ``N`` = 10,000 per training batch
        found (50,000 for the full set) and 10,000 test. ``mean``/``std`` are the usual
        CIFAR-10 channel statistics; ``class_names`` airplane..truck (cat = 3, dog = 5).
        ``meta``: ``source``, ``train_batches`` (names read), ``num_train_batches``,
        ``num_train_images``, ``complete`` (all five batches present).

    Raises:
        DataMissingError: no training batch or no ``test_batch`` and no download possible.
        DataCorruptError: a batch is present but unreadable (the message names the file).
    """
    root = resolve_data_root(data_root)
    folder = root / CIFAR10_FOLDER
    if not _present_batches(folder) and not (folder / CIFAR10_TEST_BATCH).is_file():
        if not download:
            raise_missing("CIFAR-10", folder, CIFAR10_FILES,
                          reason=f"{folder} has no batches (download=False)", hint=_HINT)
        if not dir_is_writable(root):
            raise_missing("CIFAR-10", folder, CIFAR10_FILES,
                          reason=f"{root} is not writable, so the data cannot be downloaded",
                          hint=_HINT)
        _download(root, folder)

    wanted = train_batches
    if wanted is not None and (isinstance(wanted, bool) or not isinstance(wanted, int)
                               or not 1 <= wanted <= len(CIFAR10_TRAIN_BATCHES)):
        raise ValueError(f"train_batches must be None or an integer in 1..5, got {wanted!r}.")
    train_batches = _present_batches(folder)
    if wanted is not None:
        missing = [n for n in CIFAR10_TRAIN_BATCHES[:wanted] if n not in train_batches]
        if missing:
            raise_missing("CIFAR-10", folder, CIFAR10_FILES,
                          reason=f"train_batches={wanted} asks for {', '.join(missing)}, not found",
                          hint=_HINT)
        train_batches = list(CIFAR10_TRAIN_BATCHES[:wanted])
    if not train_batches:
        raise_missing("CIFAR-10", folder, CIFAR10_FILES,
                      reason="no training batch data_batch_1..data_batch_5 found", hint=_HINT)
    if not (folder / CIFAR10_TEST_BATCH).is_file():
        raise_missing("CIFAR-10", folder, CIFAR10_FILES,
                      reason=f"{CIFAR10_TEST_BATCH} not found", hint=_HINT)

    parts = [read_cifar_batch(folder / name) for name in train_batches]
    train_x = torch.cat([x for x, _ in parts])
    train_y = torch.cat([y for _, y in parts])
    test_x, test_y = read_cifar_batch(folder / CIFAR10_TEST_BATCH)

    if len(train_batches) < len(CIFAR10_TRAIN_BATCHES) and wanted is None:
        warnings.warn(
            f"CIFAR-10: only {len(train_batches)} of 5 training batches found in {folder} "
            f"({', '.join(train_batches)}; {len(train_y)} training images instead of 50,000). "
            f"Results will not match the paper's full-data runs.",
            stacklevel=2,
        )
    # a batch cut short (each official batch holds 10,000 images) is a partial data set too
    warn_if_short("CIFAR-10", folder, len(train_y), len(test_y), CIFAR10_BATCH_SIZE * len(train_batches),
                  CIFAR10_BATCH_SIZE)

    return FLDataset(
        name="cifar10",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=10,
        class_names=CIFAR10_CLASSES,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        meta={
            "source": str(folder),
            "train_batches": list(train_batches),
            "num_train_batches": len(train_batches),
            "num_train_images": int(len(train_y)),
            "complete": len(train_batches) == len(CIFAR10_TRAIN_BATCHES),
            "source_files": file_sizes(folder, [*train_batches, CIFAR10_TEST_BATCH]),
        },
    )


def _present_batches(folder: Path) -> list[str]:
    return [name for name in CIFAR10_TRAIN_BATCHES if (folder / name).is_file()]


def _download(root: Path, folder: Path) -> None:
    """Download and extract the official archive with torchvision's MD5-checked helper."""
    try:
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import download_and_extract_archive

        with removing_new_folders(folder):  # a failed download leaves no new folder behind
            download_and_extract_archive(
                CIFAR10.url, download_root=str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5
            )
    except Exception as exc:
        text = " ".join(str(exc).split())[:300]
        raise_missing("CIFAR-10", folder, CIFAR10_FILES,
                      reason=f"download failed ({type(exc).__name__}: {text})", hint=_HINT,
                      cause=exc)
