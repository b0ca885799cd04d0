"""Shared helpers of the data loaders: checksums, downloads, writability and error messages.

Nothing here knows about a particular data set. The loaders (:mod:`flhelpers.data.mnist`,
:mod:`flhelpers.data.cifar10`, :mod:`flhelpers.data.imdb`) call these helpers so that every
data set reports a missing or damaged file the same way: which files, where, and how to fix it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import urllib.request
from pathlib import Path
from typing import Iterable, Iterator

from flhelpers.data.base import DATA_ENV, DataMissingError

__all__ = [
    "ChecksumError",
    "DataCorruptError",
    "DataMissingError",
    "dir_is_writable",
    "download_url",
    "removing_new_folders",
    "file_digest",
    "missing_data_message",
    "raise_missing",
    "verify_checksum",
]


class DataCorruptError(RuntimeError):
    """A data file is on disk but cannot be read (truncated, wrong format, bad contents)."""


class ChecksumError(DataCorruptError):
    """A downloaded or local archive does not have its published checksum."""


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk_size: int = 1 << 20) -> str:
    """The hex digest of a file (``sha256``, ``md5`` or any :mod:`hashlib` name)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: str | os.PathLike, expected: str, algorithm: str = "sha256") -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the digest ``expected``.

    The message names the file, the expected and the actual checksum, and says to delete
    the file and retry (a truncated download is the usual cause).
    """
    actual = file_digest(path, algorithm)
    if actual.lower() != expected.lower():
        raise ChecksumError(
            f"Checksum mismatch for {path}: expected {algorithm} {expected.lower()}, "
            f"got {actual}. The file is damaged or incomplete (e.g. an interrupted "
            f"download); delete it and retry."
        )


def dir_is_writable(path: str | os.PathLike) -> bool:
    """Whether we may create files in ``path`` (or, if it does not exist yet, create it).

    The nearest existing directory must be writable by ``os.access`` *and* carry a write
    permission bit. The second test matters for root, for whom ``os.access`` ignores the
    mode bits: a folder deliberately made read-only (``r-x``, like a shared data mirror) is
    treated as read-only even then, so nothing is ever written into it.
    """
    p = Path(path)
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    if not p.is_dir():
        return False
    try:
        mode = p.stat().st_mode
    except OSError:
        return False
    has_write_bit = bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return has_write_bit and os.access(p, os.W_OK | os.X_OK)


@contextlib.contextmanager
def removing_new_folders(path: str | os.PathLike,
                         keep_on: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Run a download into ``path``; if it raises, remove every folder on the way to ``path``
    that did not exist before it started (with whatever the failed download left in them),
    except for the exceptions ``keep_on`` (a checksum mismatch keeps the file for inspection).

    Downloaders create the folders they write into, so a failed download into a mistyped data
    root (``--data-root ./dtaa``) used to leave that path behind, and the next run found a data
    root that looked real. Folders that existed before are never touched; a successful download
    keeps everything.
    """
    path = Path(path)
    top = None
    p = path
    while not p.exists() and p.parent != p:
        top, p = p, p.parent
    try:
        yield
    except BaseException as exc:
        if top is not None and top.is_dir() and not isinstance(exc, keep_on):
            shutil.rmtree(top, ignore_errors=True)
        raise


def download_url(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` (via ``dest.part``, renamed when complete).

    If ``sha256`` is given the finished file is verified and a :class:`ChecksumError`
    raised (the damaged file is kept so the user can inspect it; the message says to delete it).
    Network failures propagate as :class:`OSError` (``urllib.error.URLError`` is one).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            while True:
                block = response.read(1 << 20)
                if not block:
                    break
                out.write(block)
        os.replace(part, dest)
    finally:
        if part.exists():
            part.unlink()
    if sha256 is not None:
        verify_checksum(dest, sha256, "sha256")
    return dest


def missing_data_message(
    dataset: str,
    directory: str | os.PathLike,
    files: Iterable[str],
    *,
    reason: str | None = None,
    hint: str | None = None,
) -> str:
    """A uniform "data missing" message: which files, in which directory, and how to fix it."""
    names = "\n".join(f"  - {name}" for name in files)
    lines = [f"{dataset} data not found. Expected these files in {directory}:", names]
    if reason:
        lines.append(f"Reason: {reason}")
    if hint:
        lines.append(hint)
    lines.append(
        f"Put the files there, or point the loader at a folder that has them: pass "
        f"data_root=... or set the environment variable ${DATA_ENV}."
    )
    return "\n".join(lines)


def raise_missing(
    dataset: str,
    directory: str | os.PathLike,
    files: Iterable[str],
    *,
    reason: str | None = None,
    hint: str | None = None,
    cause: BaseException | None = None,
) -> None:
    """Raise :class:`DataMissingError` with :func:`missing_data_message` (chained to ``cause``)."""
    raise DataMissingError(
        missing_data_message(dataset, directory, files, reason=reason, hint=hint)
    ) from cause
