"""IMDB Large Movie Review data set (Maas et al., 2011): 50,000 reviews, positive or negative.

Sources, tried in this order under the data root:

1. ``imdb.csv`` or ``imdb.csv.gz``: columns ``review,sentiment`` (``positive``/``negative``),
   the layout of the widely used ``imdb.csv``; rows 0-24,999 are the official training
   reviews and rows 25,000-49,999 the official test reviews (in general: first half / second half).
2. ``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``: the extracted official archive.
3. ``aclImdb_v1.tar.gz``: the official archive, read in place (not extracted), after its
   SHA256 is checked.
4. With ``download=True`` and a writable root: the archive is downloaded from
   :data:`IMDB_URL` to ``<root>/aclImdb_v1.tar.gz``, checked, and read as in 3.

Reviews from the folder or the archive are ordered train/pos, train/neg, test/pos, test/neg,
each by numeric id, so both give the same data set.

Splits (paper §6.1): ``split="paper"`` shuffles all 50,000 reviews with ``seed`` and takes
the first 40,000 as training and the last 10,000 as test (in general the last fifth is the
test set); ``split="official"`` keeps the official 25,000 / 25,000 split.

Text is encoded with :mod:`flhelpers.data.tokenizer`: lowercased, HTML tags dropped, words and
punctuation tokens; the vocabulary (``vocab_size`` entries including ``<pad>`` = 0 and
``<unk>`` = 1) is built on the **training split only**; each review is cut to its last
``max_len`` tokens and left-padded with 0.

Encoded tensors are cached in ``<cache>/imdb-<key>.pt``, where ``<cache>`` is the user's cache
folder (``$FLHELPERS_CACHE``, else ``$XDG_CACHE_HOME/flhelpers``, else ``~/.cache/flhelpers``;
:func:`flhelpers.data.base.resolve_cache_dir`), never the data root, which is often read-only or
shared. The key hashes the options and the source file's path, size and modification time; when
the cache folder cannot be written the tensors are simply not cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flhelpers.data.base import FLDataset, file_sizes, resolve_cache_dir, resolve_data_root, warn_if_short
from flhelpers.data.download import (
    DataCorruptError,
    dir_is_writable,
    download_url,
    raise_missing,
    removing_new_folders,
    verify_checksum,
)
from flhelpers.data.tokenizer import Vocabulary, encode_texts, tokenize_many

__all__ = [
    "IMDB_ARCHIVE",
    "IMDB_CLASSES",
    "IMDB_MD5",
    "IMDB_SHA256",
    "IMDB_URL",
    "find_imdb_source",
    "load_imdb",
    "read_imdb_reviews",
]

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_ARCHIVE = "aclImdb_v1.tar.gz"
#: Published checksums of aclImdb_v1.tar.gz (84,125,825 bytes); SHA256 is the one verified.
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
IMDB_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
IMDB_CLASSES: tuple[str, ...] = ("negative", "positive")
IMDB_CSV_NAMES: tuple[str, ...] = ("imdb.csv", "imdb.csv.gz")
IMDB_FOLDER = "aclImdb"
#: Bump when the tokenizer or the cache layout changes, so stale caches are ignored.
CACHE_VERSION = 1

_SPLITS = ("paper", "official")
_LABELS = {"negative": 0, "positive": 1}
_PARTS = (("train", "pos"), ("train", "neg"), ("test", "pos"), ("test", "neg"))
#: (training, test) reviews of the full data set per split; a source holding fewer raises a warning
IMDB_SIZES: dict[str, tuple[int, int]] = {"paper": (40000, 10000), "official": (25000, 25000)}
_MEMBER_RE = re.compile(r"^(?:\./)?aclImdb/(train|test)/(pos|neg)/(\d+)_\d+\.txt$")
_EXPECTED = (
    "imdb.csv or imdb.csv.gz (columns review,sentiment; rows 0-24,999 official train, "
    "25,000-49,999 official test)",
    "or aclImdb/{train,test}/{pos,neg}/*.txt (the extracted official archive)",
    f"or {IMDB_ARCHIVE} (the official archive, {IMDB_URL})",
)


@dataclass
class IMDBReviews:
    """Raw reviews in source order: texts, labels (1 = positive) and the official-train flag."""

    texts: list[str]
    labels: np.ndarray
    official_train: np.ndarray
    source: Path


def find_imdb_source(root: Path) -> Path | None:
    """The first IMDB source present under ``root`` (csv, csv.gz, aclImdb/, archive), or None."""
    for name in (*IMDB_CSV_NAMES, IMDB_FOLDER, IMDB_ARCHIVE):
        path = root / name
        if path.exists():
            return path
    return None


def read_imdb_reviews(source: Path) -> IMDBReviews:
    """Read the reviews of a source found by :func:`find_imdb_source`."""
    if source.name.endswith((".csv", ".csv.gz")):
        return _read_csv(source)
    if source.is_dir():
        return _read_folder(source)
    return _read_archive(source)


def load_imdb(
    data_root: str | os.PathLike | None = None,
    split: str = "paper",
    max_len: int = 128,
    vocab_size: int = 20000,
    seed: int = 0,
    download: bool = True,
    cache: bool = True,
) -> FLDataset:
    """Load IMDB as encoded token ids (see the module docstring for sources and choices).

    Args:
        data_root: folder holding one of the sources (default: ``$FLHELPERS_DATA``, else ``./data``).
        split: ``"paper"`` (seeded shuffle, 40K train / 10K test) or ``"official"`` (25K / 25K).
        max_len: tokens per review; longer reviews keep their end, shorter are left-padded.
        vocab_size: vocabulary size including ``<pad>`` and ``<unk>``, built on the training split.
        seed: the shuffle of ``split="paper"``.
        download: fetch the official archive when no source is on disk.
        cache: read/write the encoded tensors in the user's cache folder
            (:func:`~flhelpers.data.base.resolve_cache_dir`; writes are skipped silently when that
            folder is not writable). Nothing is ever written into the data root.

    Returns:
        ``train_x``/``test_x`` int64 ``(N, max_len)``, ``train_y``/``test_y`` int64 in {0, 1}
        (``negative`` = 0, ``positive`` = 1); ``meta``: ``vocab_size`` (the actual size, at
        most the requested one), ``max_len``, ``split``, ``seed``, ``source``.

    Raises:
        ValueError: a bad option.
        DataMissingError: no source on disk and none could be downloaded.
        DataCorruptError / ChecksumError: a source exists but cannot be read or fails its checksum.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}; got {split!r}.")
    for name, value, low in (("max_len", max_len, 1), ("vocab_size", vocab_size, 3)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer; got {seed!r}.")

    root = resolve_data_root(data_root)
    source = find_imdb_source(root)
    if source is None:
        source = _download(root, download)

    options = {"split": split, "max_len": max_len, "vocab_size": vocab_size, "seed": seed}
    cache_file = resolve_cache_dir() / f"imdb-{_cache_key(source, options)}.pt" if cache else None
    if cache_file is not None:
        cached = _load_cache(cache_file, max_len)
        if cached is not None:
            return _dataset(cached, options, source)

    if source.name == IMDB_ARCHIVE:
        verify_checksum(source, IMDB_SHA256, "sha256")
    reviews = read_imdb_reviews(source)
    train_idx, test_idx = _split_indices(reviews, split, seed)

    tokens = tokenize_many(reviews.texts)
    train_tokens = [tokens[i] for i in train_idx]
    test_tokens = [tokens[i] for i in test_idx]
    vocab = Vocabulary.build(train_tokens, vocab_size)
    labels = torch.from_numpy(reviews.labels.astype(np.int64))
    tensors = {
        "train_x": encode_texts(train_tokens, vocab, max_len),
        "train_y": labels[torch.as_tensor(train_idx)],
        "test_x": encode_texts(test_tokens, vocab, max_len),
        "test_y": labels[torch.as_tensor(test_idx)],
        "vocab_size": torch.tensor(len(vocab)),
    }
    if cache_file is not None:
        _save_cache(cache_file, tensors)
    return _dataset(tensors, options, source)


# --------------------------------------------------------------------------- reading


def _read_csv(path: Path) -> IMDBReviews:
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, compression="infer")
    except Exception as exc:
        raise DataCorruptError(
            f"Could not read the IMDB CSV {path}: {type(exc).__name__}: {exc}"
        ) from exc
    missing = {"review", "sentiment"} - set(frame.columns)
    if missing:
        raise DataCorruptError(
            f"The IMDB CSV {path} lacks the column(s) {sorted(missing)}; "
            f"expected 'review,sentiment', found {list(frame.columns)}."
        )
    sentiment = frame["sentiment"].str.strip().str.lower()
    bad = sorted(set(sentiment) - set(_LABELS))
    if bad:
        raise DataCorruptError(
            f"The IMDB CSV {path} has sentiment values {bad[:5]}; expected 'positive'/'negative'."
        )
    if len(frame) < 2:
        raise DataCorruptError(f"The IMDB CSV {path} has {len(frame)} reviews; need at least 2.")
    labels = sentiment.map(_LABELS).to_numpy(dtype=np.int64)
    official_train = np.zeros(len(frame), dtype=bool)
    official_train[: len(frame) // 2] = True
    return IMDBReviews(frame["review"].tolist(), labels, official_train, path)


def _read_folder(folder: Path) -> IMDBReviews:
    missing = [f"{s}/{p}" for s, p in _PARTS if not (folder / s / p).is_dir()]
    if missing:
        raise_missing("IMDB", folder, [f"{part}/*.txt" for part in ("train/pos", "train/neg",
                      "test/pos", "test/neg")], reason=f"missing sub-folders {missing}")
    items: list[tuple[int, int, int, str]] = []  # (part, id, label, text)
    for part, (split, polarity) in enumerate(_PARTS):
        for path in (folder / split / polarity).glob("*.txt"):
            match = _MEMBER_RE.match(f"aclImdb/{split}/{polarity}/{path.name}")
            if match is None:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            items.append((part, int(match.group(3)), int(polarity == "pos"), text))
    return _reviews_from_items(items, folder)


def _read_archive(path: Path) -> IMDBReviews:
    items: list[tuple[int, int, int, str]] = []
    part_of = {sp: i for i, sp in enumerate(_PARTS)}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                match = _MEMBER_RE.match(member.name)
                if match is None or not member.isfile():
                    continue
                split, polarity, review_id = match.group(1), match.group(2), int(match.group(3))
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                text = handle.read().decode("utf-8", errors="replace")
                items.append((part_of[(split, polarity)], review_id, int(polarity == "pos"), text))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataCorruptError(
            f"Could not read the IMDB archive {path}: {type(exc).__name__}: {exc}. "
            f"Delete it and retry."
        ) from exc
    return _reviews_from_items(items, path)


def _reviews_from_items(items: list[tuple[int, int, int, str]], source: Path) -> IMDBReviews:
    if not items:
        raise DataCorruptError(
            f"No reviews found in {source}; expected aclImdb/{{train,test}}/{{pos,neg}}/<id>_<rating>.txt."
        )
    items.sort(key=lambda item: (item[0], item[1]))
    texts = [text for _, _, _, text in items]
    labels = np.array([label for _, _, label, _ in items], dtype=np.int64)
    official_train = np.array([_PARTS[part][0] == "train" for part, _, _, _ in items], dtype=bool)
    return IMDBReviews(texts, labels, official_train, source)


def _download(root: Path, download: bool) -> Path:
    if not download:
        raise_missing("IMDB", root, _EXPECTED, reason="no source found (download=False)")
    if not dir_is_writable(root):
        raise_missing("IMDB", root, _EXPECTED,
                      reason=f"no source found, and {root} is not writable, so the archive "
                      f"cannot be downloaded")
    dest = root / IMDB_ARCHIVE
    try:
        with removing_new_folders(root, keep_on=(DataCorruptError,)):  # no new folder left by a failed download
            download_url(IMDB_URL, dest, sha256=IMDB_SHA256)
    except DataCorruptError:  # a checksum mismatch: its message says what to do
        raise
    except Exception as exc:  # URLError, timeouts, HTTP errors, a full disk, ...
        raise_missing("IMDB", root, _EXPECTED,
                      reason=f"downloading {IMDB_URL} failed ({type(exc).__name__}: {exc})",
                      cause=exc)
    return dest


# --------------------------------------------------------------------------- split, cache


def _split_indices(reviews: IMDBReviews, split: str, seed: int) -> tuple[list[int], list[int]]:
    n = len(reviews.texts)
    if split == "official":
        train = np.flatnonzero(reviews.official_train).tolist()
        test = np.flatnonzero(~reviews.official_train).tolist()
    else:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        n_test = n // 5
        train, test = order[: n - n_test], order[n - n_test:]
    if not train or not test:
        raise DataCorruptError(
            f"The IMDB source {reviews.source} gives {len(train)} training and {len(test)} "
            f"test reviews for split={split!r}; both must be non-empty."
        )
    return train, test


def _source_signature(source: Path) -> list:
    """What identifies the source's contents cheaply: path, size and mtime (per part for a folder)."""
    if source.is_dir():
        parts = []
        for split, polarity in _PARTS:
            sub = source / split / polarity
            st = sub.stat()
            parts.append([f"{split}/{polarity}", st.st_mtime_ns, sum(1 for _ in os.scandir(sub))])
        return [str(source.resolve()), parts]
    st = source.stat()
    return [str(source.resolve()), st.st_size, st.st_mtime_ns]


def _cache_key(source: Path, options: dict) -> str:
    payload = json.dumps(
        {"version": CACHE_VERSION, "source": _source_signature(source), **options}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _load_cache(path: Path, max_len: int) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        ok = (
            isinstance(data, dict)
            and data["train_x"].shape[1] == max_len
            and data["test_x"].shape[1] == max_len
            and len(data["train_x"]) == len(data["train_y"])
            and len(data["test_x"]) == len(data["test_y"])
        )
    except Exception:
        ok = False
    if not ok:
        warnings.warn(f"Ignoring the unreadable IMDB cache {path}; it will be rebuilt.", stacklevel=3)
        return None
    return data


def _save_cache(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write the cache atomically; skip silently when the folder is not writable."""
    if not dir_is_writable(path.parent):
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(tensors, tmp)
        os.replace(tmp, path)
    except OSError:
        pass
    finally:
        if tmp.exists():
            try:
                tmp.unlink()
            except OSError:
                pass


def _source_files(source: Path) -> dict[str, int]:
    """Bytes of the source: the csv or archive, or the review files of each part of a folder."""
    if not source.is_dir():
        return file_sizes(source.parent, [source.name])
    sizes = {}
    for split, polarity in _PARTS:
        with os.scandir(source / split / polarity) as entries:
            sizes[f"{source.name}/{split}/{polarity}"] = sum(e.stat().st_size for e in entries if e.is_file())
    return sizes


def _dataset(tensors: dict[str, torch.Tensor], options: dict, source: Path) -> FLDataset:
    warn_if_short("IMDB", source, len(tensors["train_y"]), len(tensors["test_y"]), *IMDB_SIZES[options["split"]],
                  stacklevel=4)
    return FLDataset(
        name="imdb",
        train_x=tensors["train_x"],
        train_y=tensors["train_y"],
        test_x=tensors["test_x"],
        test_y=tensors["test_y"],
        num_classes=2,
        class_names=IMDB_CLASSES,
        meta={
            "vocab_size": int(tensors["vocab_size"]),
            "max_len": options["max_len"],
            "split": options["split"],
            "seed": options["seed"],
            "source": str(source),
            "source_files": _source_files(source),
        },
    )

