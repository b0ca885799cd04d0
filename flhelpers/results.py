"""The results store: ``<results_dir>/runs/<run-id>/``.

* ``config.json``: the fully resolved configuration, the seed, the attackers, the versions of
  python, torch and flhelpers, and torch's CPU thread count.
* ``metrics.csv``: one row per evaluated round (tidy; pandas reads it directly). Only
  deterministic numbers: the same config and seed give a byte-identical file in two processes
  on the same CPU machine and thread count, and after a kill and resume.
* ``timings.csv``: one row per round with the wall times (``train_time``, ``aggregation_time``,
  ``eval_time``, seconds); these differ from run to run, so they live apart from the metrics.
* ``summary.json``: the run summary (:func:`flhelpers.metrics.summarize`) plus the SHA-256 of
  ``metrics.csv``; written last, so its presence marks a finished run.
* ``checkpoint.pt``: the latest checkpoint of an unfinished run (:mod:`flhelpers.fl.checkpoint`).

Every file is written atomically: a temporary file in the same folder, flush, fsync, rename
(``os.replace``), fsync of the folder. A crash or a SIGKILL at any point leaves either the old
file or the new one, never a truncated one; at worst a stray ``.<name>.*.tmp`` file, which no
loader reads and the next run of that config removes. A run folder without ``summary.json``
(metrics.csv written at a checkpoint, then a crash) is *unfinished* and never loads as finished.

Run ids are checked so that no id (``..``, ``/``, an absolute path, a symlink) can place files
outside ``<results_dir>/runs``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

CONFIG = "config.json"
METRICS = "metrics.csv"
TIMINGS = "timings.csv"
SUMMARY = "summary.json"
#: summary.json key holding the SHA-256 of metrics.csv (not a metric; dropped by load_results)
METRICS_DIGEST = "metrics_sha256"
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


def run_dir(results_dir: str | os.PathLike, run_id: str) -> Path:
    """The folder of run ``run_id``; refuses ids that could escape ``results_dir/runs``.

    An id is 1-128 characters of letters, digits, ``.``, ``_`` and ``-``, starting with a letter
    or digit, without ``..``; and the resolved folder (symlinks followed) must sit directly in
    ``results_dir/runs``.
    """
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or ".." in run_id:
        raise ValueError(
            f"Invalid run id {run_id!r}: use letters, digits, '.', '_' and '-' only "
            f"(no path separators, no '..'), at most 128 characters."
        )
    root = (Path(results_dir) / "runs").resolve()
    path = (root / run_id).resolve()
    if path.parent != root:
        raise ValueError(f"Run id {run_id!r} would place files outside {root}.")
    return path


def is_finished(path: Path) -> bool:
    """Whether the run folder holds a summary (written last, so the run completed)."""
    return (Path(path) / SUMMARY).is_file()


@contextlib.contextmanager
def claim_run(results_dir: str | os.PathLike, run_id: str) -> Iterator[bool]:
    """Hold ``<results_dir>/runs/<run-id>.lock`` while the block runs: yields ``True`` when this
    process created the lock (and removes it on exit, even on error), ``False`` when another
    process holds it, so two processes can share one plan of runs."""
    lock = Path(results_dir) / "runs" / f"{run_id}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        yield False
        return
    try:
        yield True
    finally:
        lock.unlink(missing_ok=True)


def finished_metrics(results_dir: str | os.PathLike, configs: Sequence[Any]) -> Iterator[tuple[Any, str, pd.DataFrame]]:
    """``(config, run id, metrics.csv)`` of each run of ``configs`` that is finished in ``results_dir``."""
    for cfg in configs:
        rid = cfg.run_id()
        path = run_dir(results_dir, rid)
        if is_finished(path):
            yield cfg, rid, pd.read_csv(path / "metrics.csv")


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


def read_finished_run(path: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """``(summary, metrics)`` of a finished run, checking ``metrics.csv`` against its digest.

    Raises:
        ValueError: the summary is unreadable, or ``metrics.csv`` is missing or differs from
            the file the summary was written for (edited, truncated or replaced afterwards).
    """
    path = Path(path)
    try:
        summary = read_json(path / SUMMARY)
    except (OSError, ValueError) as exc:
        raise ValueError(f"Unreadable {path / SUMMARY}: {exc}.") from exc
    if not isinstance(summary, dict):
        raise ValueError(f"{path / SUMMARY} does not hold a JSON object.")
    try:
        text = (path / METRICS).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"The finished run {path.name} has no readable {METRICS}: {exc}.") from exc
    digest = summary.get(METRICS_DIGEST)
    if digest is not None and sha256_text(text) != digest:
        raise ValueError(
            f"{path / METRICS} does not match the run's summary (SHA-256 differs): the file was "
            f"changed after the run finished. Re-run the config with force=True to recompute it."
        )
    return summary, pd.read_csv(io.StringIO(text))


def read_timings(path: Path) -> pd.DataFrame | None:
    """The run's ``timings.csv``, or ``None`` when absent (runs written before it existed)."""
    f = Path(path) / TIMINGS
    return pd.read_csv(f) if f.is_file() else None


def _flat_config(cfg: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in cfg.items() if not isinstance(v, (dict, list))}
    flat.update({k: json.dumps(v, sort_keys=True) for k, v in cfg.items() if isinstance(v, (dict, list))})
    return flat


def train_samples(record: dict[str, Any]) -> int | None:
    """The number of training samples a run used, from its ``config.json`` record: recorded as
    ``train_samples`` since the field existed, else the sum of its peers' partition sizes."""
    if "train_samples" in record:
        return int(record["train_samples"])
    sizes = record.get("partition_sizes")
    return int(sum(sizes)) if sizes else None


def load_results(results_dir: str | os.PathLike = "results", per_round: bool = False,
                 include_unfinished: bool = False, timings: bool = False) -> pd.DataFrame:
    """Every finished run under ``results_dir/runs`` as one DataFrame.

    ``per_round=False``: one row per run (config columns + summary). ``per_round=True``: one row
    per run and evaluated round (config columns + metrics.csv). ``timings=True``: one row per
    run and round (config columns + timings.csv).

    Unfinished runs (no ``summary.json``: still running, or interrupted and resumable) are
    skipped, and a warning names how many and which. ``include_unfinished=True`` adds them
    (their partial metrics.csv; summary columns empty) with ``finished = False``. A run whose
    files are damaged (unreadable config or summary, metrics.csv not matching the summary's
    digest) is skipped with a warning naming it.
    """
    root = Path(results_dir) / "runs"
    frames: list[pd.DataFrame] = []
    unfinished: list[str] = []
    damaged: list[str] = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if not d.is_dir() or d.name.startswith("."):
            continue
        finished = is_finished(d)
        if not finished and not include_unfinished:
            unfinished.append(d.name)
            continue
        try:
            record = read_json(d / CONFIG)
            flat = _flat_config(record["config"])
            flat["train_samples"] = train_samples(record)
            if finished:
                summary, metrics = read_finished_run(d)
            else:
                summary = {}
                metrics = pd.read_csv(d / METRICS) if (d / METRICS).is_file() else pd.DataFrame()
        except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError) as exc:
            damaged.append(f"{d.name} ({exc})")
            continue
        flat["run_id"] = d.name
        flat["finished"] = finished
        if timings:
            frame = read_timings(d)
            if frame is None:
                continue
        elif per_round:
            frame = metrics
        else:
            frame = pd.DataFrame([{k: v for k, v in summary.items() if k != METRICS_DIGEST}])
        if frame.empty and (per_round or timings):
            continue
        frame = frame.copy()
        for k, v in flat.items():
            frame[k] = v
        frames.append(frame)
    if unfinished:
        shown = ", ".join(unfinished[:5]) + (", ..." if len(unfinished) > 5 else "")
        warnings.warn(
            f"Skipped {len(unfinished)} unfinished run(s) in {root} (no {SUMMARY}): {shown}. "
            f"Run the same config again to resume it from its checkpoint.", stacklevel=2)
    if damaged:
        warnings.warn(f"Skipped {len(damaged)} damaged run(s) in {root}: {'; '.join(damaged[:5])}",
                      stacklevel=2)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)
