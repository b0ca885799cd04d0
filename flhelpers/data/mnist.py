"""MNIST (LeCun et al., 1998): 60,000 training and 10,000 test handwritten digits, 28 x 28 grey.

On-disk layout (what ``torchvision.datasets.MNIST`` leaves after a download)::

    <data_root>/MNIST/raw/train-images-idx3-ubyte
    <data_root>/MNIST/raw/train-labels-idx1-ubyte
    <data_root>/MNIST/raw/t10k-images-idx3-ubyte
    <data_root>/MNIST/raw/t10k-labels-idx1-ubyte

The files are read with ``torchvision.datasets.MNIST``. The paper's MNIST benchmarks
(§6.1: iid, Dirichlet-mild and extreme non-iid over 100 peers, attack 7 -> 1) use the
standard train/test split unchanged.
"""

from __future__ import annotations

import os

import torch

from flhelpers.data.base import FLDataset, file_sizes, resolve_data_root, warn_if_short
from flhelpers.data.download import DataCorruptError, dir_is_writable, raise_missing, removing_new_folders

__all__ = ["MNIST_FILES", "MNIST_MEAN", "MNIST_STD", "load_mnist"]

MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MNIST_MEAN: tuple[float, ...] = (0.1307,)
MNIST_STD: tuple[float, ...] = (0.3081,)
MNIST_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
#: the standard (training, test) sizes; a data root holding fewer raises a warning
MNIST_SIZES: tuple[int, int] = (60000, 10000)


def load_mnist(data_root: str | os.PathLike | None = None, download: bool = True) -> FLDataset:
    """Load MNIST as an in-memory :class:`FLDataset`.

    Args:
        data_root: folder holding ``MNIST/raw/`` (default: ``$FLHELPERS_DATA``, else ``./data``).
        download: when the raw files are absent, let torchvision download them into
            ``<data_root>/MNIST/raw/``. Local files are always tried first, so an offline
            machine with the files never touches the network.

    Returns:
        ``train_x`` uint8 ``(60000, 1, 28, 28)``, ``train_y`` int64 ``(60000,)``, the test set
        likewise with 10,000 images; ``mean=(0.1307,)``, ``std=(0.3081,)``, classes ``"0"``..``"9"``.

    Raises:
        DataMissingError: the files are absent and could not be downloaded; the message
            names the four files and the directory they belong in.
        DataCorruptError: the files are present but torchvision cannot read them.
    """
    from torchvision.datasets import MNIST

    root = resolve_data_root(data_root)
    raw = root / "MNIST" / "raw"
    missing = [name for name in MNIST_FILES if not (raw / name).is_file()]
    if missing:
        hint = (
            "The official gzipped files (train-images-idx3-ubyte.gz etc.) may be placed there "
            "too; torchvision unpacks them when download=True."
        )
        if not download:
            raise_missing("MNIST", raw, MNIST_FILES, reason=f"missing {', '.join(missing)} "
                          "(download=False)", hint=hint)
        if not dir_is_writable(root):
            raise_missing("MNIST", raw, MNIST_FILES, reason=f"missing {', '.join(missing)}, and "
                          f"{root} is not writable, so they cannot be downloaded", hint=hint)
        try:
            with removing_new_folders(raw):  # a failed download leaves no new folder behind
                MNIST(str(root), train=True, download=True)
        except Exception as exc:  # network errors come as RuntimeError/URLError/OSError
            raise_missing("MNIST", raw, MNIST_FILES,
                          reason=f"download failed ({type(exc).__name__}: {_first_line(exc)})",
                          hint=hint, cause=exc)

    try:
        train = MNIST(str(root), train=True, download=False)
        test = MNIST(str(root), train=False, download=False)
    except Exception as exc:
        raise DataCorruptError(
            f"Could not read the MNIST files in {raw} ({type(exc).__name__}: {exc}). "
            f"Delete the damaged files ({', '.join(MNIST_FILES)}) and download them again."
        ) from exc

    def images(ds: MNIST) -> torch.Tensor:
        return ds.data.to(torch.uint8).unsqueeze(1).contiguous()

    warn_if_short("MNIST", raw, len(train.targets), len(test.targets), *MNIST_SIZES)
    return FLDataset(
        name="mnist",
        train_x=images(train),
        train_y=train.targets.to(torch.int64),
        test_x=images(test),
        test_y=test.targets.to(torch.int64),
        num_classes=10,
        class_names=MNIST_CLASSES,
        mean=MNIST_MEAN,
        std=MNIST_STD,
        meta={"source": str(raw), "source_files": file_sizes(raw, MNIST_FILES)},
    )


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The exception's text on one line, shortened (torchvision's download errors are long)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."
