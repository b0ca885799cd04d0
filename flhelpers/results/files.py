"""The results store's files: atomic writes, digests, and reading them back.

Every file is written atomically (:func:`atomic_write_bytes`): a temporary file in the same
folder, flush, fsync, rename (``os.replace``), fsync of the folder. A crash or a SIGKILL at any
point leaves either the old file or the new one, never a truncated one; at worst a stray
``.<name>.*.tmp`` file, which no loader reads and :func:`remove_temporaries` removes.
:func:`sha256_text` and :func:`file_sha256` are the digests a finished run records.

This module imports nothing from flhelpers (and not torch), so that it can be loaded alone.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

__all__ = [
    "append_csv_row",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "csv_text",
    "current_umask",
    "file_sha256",
    "read_json",
    "remove_temporaries",
    "sha256_text",
]

_TMP_GLOB = ".*.tmp"


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's file-creation mask (read from ``/proc`` where it can, so no thread sees it
    change; else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename.

    Readers see the old contents or the new ones, never a mix; if anything fails before the
    rename, the temporary file is removed and the old file is untouched. The file gets the mode
    a plain ``open(path, "w")`` would give (``0o666`` less the umask, usually ``0o644``), not the
    temporary file's private ``0o600``, so others sharing a results store can read it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def append_csv_row(path: str | Path, columns: Sequence[str], row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV at ``path`` (header ``columns`` written when the file is new):
    per-round records that survive a stopped and resumed run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        if new:
            writer.writeheader()
        writer.writerow(row)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any, sort_keys: bool = True) -> None:
    """:func:`atomic_write_bytes` of indented JSON (keys sorted unless ``sort_keys=False``)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=_json_default) + "\n")


def csv_text(frame: pd.DataFrame) -> str:
    """The CSV text flhelpers writes for ``frame`` (no index; floats as their shortest repr)."""
    return frame.to_csv(index=False, lineterminator="\n")


def atomic_write_csv(path: Path, frame: pd.DataFrame) -> None:
    """:func:`atomic_write_bytes` of ``frame`` as CSV."""
    atomic_write_text(path, csv_text(frame))


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def sha256_text(text: str) -> str:
    """Hex SHA-256 of UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def remove_temporaries(path: Path) -> int:
    """Delete stray ``.<name>.*.tmp`` files that a kill between write and rename left; their count."""
    removed = 0
    for tmp in Path(path).glob(_TMP_GLOB):
        try:
            tmp.unlink()
            removed += 1
        except OSError:
            pass
    return removed
