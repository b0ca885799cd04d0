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
outside ``<results_dir>/runs``. A finished run is read only if its ``config.json`` still hashes
to the folder's run id and its summary holds the digest of ``metrics.csv``
(:func:`read_finished_run`), so hand edits do not pass for the run.

``runs/<run-id>.lock`` (holder's pid and host) marks a run being computed (:func:`claim_run`,
:func:`hold_run`); ``runs/.<run-id>.recompute`` holds the recomputation of a finished run until it
is complete and swapped in (:func:`publish_run`, :func:`recover_run`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
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


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists (``path`` when nothing above exists)."""
    p = path
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def check_results_dir(results_dir: Any, writable: bool = True, option: str = "results_dir") -> Path:
    """``results_dir`` as a Path, or a one-line :class:`~flhelpers.config.ConfigError` naming the fix.

    Checked before any data is loaded or any run trains: the value is a path (not ``None``); it
    is a folder or can be made one (no file at it or above it); and, when ``writable``, runs can
    be written under ``<results_dir>/runs`` (its nearest existing folder is writable, with the
    rule of :func:`flhelpers.data.download.dir_is_writable`: a folder without write permission
    bits counts as read-only even for root). ``option`` names the setting in the message
    (``--results-dir`` for the command line).
    """
    from flhelpers.config import ConfigError
    from flhelpers.data.download import dir_is_writable

    if results_dir is None or isinstance(results_dir, bool) or not isinstance(results_dir, (str, os.PathLike)) \
            or str(results_dir) == "":
        raise ConfigError(f"{option} must be a folder path (str or pathlib.Path), got {results_dir!r}; pass e.g. "
                          f"{option}='results' (the default).")
    root = Path(results_dir)
    existing = _nearest_existing(root / "runs")
    if not existing.is_dir():
        what = f"{root} is a file" if existing == root else f"{existing} is a file, so {root} cannot be created"
        raise ConfigError(f"{option} {root} is not a folder ({what}); give a folder (it is created when missing).")
    if writable:  # the store's root too: tables/ and the like go there, and runs/ may be a lock's fresh folder
        for folder in dict.fromkeys((existing, _nearest_existing(root))):
            if not dir_is_writable(folder):
                raise ConfigError(f"{option} {root} is not writable ({folder} is read-only), so no run can be "
                                  f"saved there; give a folder you can write to.")
    return root


def check_output_file(path: Any, option: str) -> Path:
    """``path`` as a Path for a file to write, or a one-line ConfigError: not a folder, no file
    in the way of its folder, and a writable folder (:func:`check_results_dir`'s rule)."""
    from flhelpers.config import ConfigError
    from flhelpers.data.download import dir_is_writable

    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option} {p} is a folder; give a file name such as {p / 'grid_summary.csv'}.")
    existing = _nearest_existing(p.parent)
    if not existing.is_dir():
        raise ConfigError(f"{option} {p} cannot be written: {existing} is a file, not a folder.")
    if not dir_is_writable(existing):
        raise ConfigError(f"{option} {p} cannot be written: {existing} is read-only; choose another path.")
    return p


def is_finished(path: Path) -> bool:
    """Whether the run folder holds a summary (written last, so the run completed)."""
    return (Path(path) / SUMMARY).is_file()


def recompute_dir(path: Path) -> Path:
    """Where the finished run at ``path`` is recomputed (``force``, ``on_round``) until the new
    result is complete: the hidden sibling ``runs/.<run-id>.recompute``, which no loader reads,
    so a kill during the recomputation leaves the finished result as it was."""
    path = Path(path)
    return path.parent / f".{path.name}.recompute"


def _replaced_dir(path: Path) -> Path:
    return path.parent / f".{path.name}.replaced"


def publish_run(work: Path, path: Path) -> None:
    """Put the complete run in ``work`` (:func:`recompute_dir`) in the place of the run at ``path``.

    Two renames, the old folder aside and the new one in place, then the old one is deleted. A
    kill between the renames leaves no ``path``; :func:`recover_run` then completes the swap.
    """
    work, path = Path(work), Path(path)
    old = _replaced_dir(path)
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(work, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_run(path: Path) -> None:
    """Complete a :func:`publish_run` that a kill interrupted: when ``path`` is missing, the
    recomputed run (if it finished) or else the old one is put back in place."""
    path = Path(path)
    old = _replaced_dir(path)
    if not path.exists():
        work = recompute_dir(path)
        if is_finished(work):
            os.replace(work, path)
        elif old.is_dir():
            os.replace(old, path)
        else:
            return
        _fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


#: the run locks this process holds: lock path -> (pid, thread id) of the holder, so that
#: :func:`hold_run` inside a :func:`claim_run` block of the same thread does not wait for itself
_HELD: dict[str, tuple[int, int]] = {}
_HELD_GUARD = threading.Lock()
#: seconds between two looks at a lock another process holds (:func:`hold_run`)
LOCK_POLL_S = 2.0
#: a lock file still naming no holder after this many seconds was made by an older flhelpers
#: (or by hand): its holder cannot be checked (:func:`hold_run`)
LOCK_UNNAMED_S = 10.0


class RunLockedError(RuntimeError):
    """The run is locked by a holder that cannot be checked from here (:func:`hold_run`)."""


def lock_path(results_dir: str | os.PathLike, run_id: str) -> Path:
    """``<results_dir>/runs/<run-id>.lock``, the file that marks a run as being computed."""
    return Path(results_dir) / "runs" / f"{run_id}.lock"


def _held_key(lock: Path) -> str:
    return os.path.abspath(lock)


@contextlib.contextmanager
def claim_run(results_dir: str | os.PathLike, run_id: str) -> Iterator[bool]:
    """Hold ``<results_dir>/runs/<run-id>.lock`` while the block runs: yields ``True`` when this
    process created the lock (and removes it on exit, even on error), ``False`` when another
    process holds it, so two processes can share one plan of runs.

    The lock file holds ``<pid> <host>`` of its holder, so that a lock left behind by a process
    that was killed can be told from a live one (:func:`hold_run`).
    """
    lock = lock_path(results_dir, run_id)
    for attempt in range(3):  # a hold_run ending elsewhere may remove an empty runs/ in between
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            break
        except FileExistsError:
            yield False
            return
        except FileNotFoundError:
            if attempt == 2:
                raise
    key = _held_key(lock)
    try:
        try:
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        finally:
            os.close(fd)
        with _HELD_GUARD:
            _HELD[key] = (os.getpid(), threading.get_ident())
        yield True
    finally:
        with _HELD_GUARD:
            _HELD.pop(key, None)
        lock.unlink(missing_ok=True)


def holds_run(results_dir: str | os.PathLike, run_id: str) -> bool:
    """Whether this thread of this process holds the run's lock (a :func:`claim_run` block)."""
    with _HELD_GUARD:
        return _HELD.get(_held_key(lock_path(results_dir, run_id))) == (os.getpid(), threading.get_ident())


def lock_holder(results_dir: str | os.PathLike, run_id: str) -> tuple[int, str] | None:
    """``(pid, host)`` written in the run's lock file; ``None`` when there is no lock or it names
    no holder (being written, or made by an older flhelpers)."""
    try:
        pid, host = lock_path(results_dir, run_id).read_text().split()
        return int(pid), host
    except (OSError, ValueError):
        return None


def _lock_is_stale(results_dir: str | os.PathLike, run_id: str) -> bool:
    """Whether the run's lock names a process of this host that no longer exists (killed)."""
    holder = lock_holder(results_dir, run_id)
    if holder is None or holder[1] != socket.gethostname():
        return False  # unknown holder, or one on another machine: it cannot be checked from here
    pid = holder[0]
    if pid == os.getpid():
        return False  # another thread of this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: the process exists (another user's)
        return False
    return False


@contextlib.contextmanager
def hold_run(results_dir: str | os.PathLike, run_id: str, poll_s: float | None = None) -> Iterator[None]:
    """Hold the run's lock while the block runs, waiting while another process holds it.

    Re-entrant for the thread that already holds it (a caller that wrapped the run in
    :func:`claim_run`, as ``tools/run_reference.py`` does): then it does nothing. A lock left by
    a process of this host that no longer exists is removed and taken over. While another live
    holder computes the run, a warning names it and the lock file, and this waits (the caller
    then finds the run finished and reuses it); a holder on another host is waited for too. A
    lock that names no holder (an older flhelpers made it) cannot be checked: after
    :data:`LOCK_UNNAMED_S` seconds it raises :class:`RunLockedError`, naming the lock file to
    delete, rather than wait for ever. A results folder where no lock can be created
    (read-only) is used without one: nothing can be written there anyway.
    """
    if holds_run(results_dir, run_id):
        yield
        return
    runs = lock_path(results_dir, run_id).parent
    made = [d for d in (runs, runs.parent) if not d.exists()]  # removed again if left empty
    try:
        yield from _hold(results_dir, run_id, LOCK_POLL_S if poll_s is None else poll_s)
    finally:
        for d in made:
            try:
                d.rmdir()
            except OSError:  # not empty (a run was written), or another process uses it
                break


def _hold(results_dir: str | os.PathLike, run_id: str, poll: float) -> Iterator[None]:
    """The body of :func:`hold_run` (a generator yielding once, with the lock held)."""
    warned = False
    while True:
        acquired = False
        try:
            with claim_run(results_dir, run_id) as mine:
                acquired = mine
                if mine:
                    yield
        except OSError:
            if acquired:
                raise  # the block's own error
            yield  # no lock can be created here (a read-only store)
            return
        if acquired:
            return
        if _lock_is_stale(results_dir, run_id):
            lock_path(results_dir, run_id).unlink(missing_ok=True)
            continue
        holder = lock_holder(results_dir, run_id)
        lock = lock_path(results_dir, run_id)
        try:
            unnamed = holder is None and time.time() - lock.stat().st_mtime > LOCK_UNNAMED_S
        except FileNotFoundError:  # released meanwhile
            continue
        if unnamed:
            raise RunLockedError(
                f"Run {run_id} is locked by {lock}, which names no process (made by an older flhelpers or "
                f"by hand), so whether it still runs cannot be checked; if "
                f"no process computes this run any more, delete the lock file and run again.")
        if not warned:
            who = f"process {holder[0]} on {holder[1]}" if holder else "another process"
            warnings.warn(f"Run {run_id} is being computed by {who} (lock {lock_path(results_dir, run_id)}); "
                          f"waiting for it to end, then reusing or resuming its result. If no such process "
                          f"runs any more, delete the lock file.", stacklevel=3)
            warned = True
        time.sleep(poll)


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


def read_run_record(path: Path) -> dict[str, Any]:
    """The run's ``config.json`` record, checked to be the run of its folder.

    The folder's name is the run id, the hash of the config (``ExperimentConfig.run_id``); a
    config whose fields no longer hash to it was edited by hand, and reading it as that run
    would label the run's numbers with settings they were not computed with.

    Raises:
        ValueError: the record is unreadable, holds no ``config``, or hashes to another id.
    """
    from flhelpers.config import ExperimentConfig  # here: results.py is imported without torch

    path = Path(path)
    try:
        record = read_json(path / CONFIG)
    except (OSError, ValueError) as exc:
        raise ValueError(f"Unreadable {path / CONFIG}: {exc}.") from exc
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ValueError(f"{path / CONFIG} holds no 'config' object; re-run the config with force=True.")
    try:
        rid = ExperimentConfig.from_dict(record["config"]).run_id()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path / CONFIG} holds no valid config ({exc}); re-run the config with force=True.") from exc
    if rid != path.name:
        raise ValueError(
            f"{path / CONFIG} hashes to run id {rid}, not to its folder's {path.name}: the file was "
            f"edited after the run was written. Restore it, or re-run the config with force=True.")
    return record


def read_finished_run(path: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """``(summary, metrics)`` of a finished run, checking ``metrics.csv`` against its digest and
    ``config.json`` against the folder's run id (:func:`read_run_record`).

    Raises:
        ValueError: the summary or config is unreadable, the summary records no digest, the
            config hashes to another run id, or ``metrics.csv`` is missing or differs from the
            file the summary was written for (edited, truncated or replaced afterwards).
    """
    path = Path(path)
    read_run_record(path)
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
    if digest is None:
        raise ValueError(
            f"{path / SUMMARY} has no {METRICS_DIGEST} (every finished run records one): the summary "
            f"was edited or written by hand. Re-run the config with force=True to recompute it.")
    if sha256_text(text) != digest:
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
    files are damaged (unreadable config or summary, a config that no longer hashes to the
    folder's run id, a summary without the metrics digest, metrics.csv not matching it) is
    skipped with a warning naming it.
    """
    root = Path(results_dir) / "runs"
    if not root.is_dir():  # a mistyped path must not read as "no runs yet" without a word
        why = (f"{results_dir} does not exist" if not Path(results_dir).exists()
               else f"{results_dir} has no runs/ folder" if Path(results_dir).is_dir()
               else f"{results_dir} is not a folder")
        warnings.warn(f"load_results: {why}, so there are no runs to load; returning an empty table. "
                      f"Check the path (the store holds <results_dir>/runs/<run-id>/).", stacklevel=2)
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
            record = read_run_record(d)  # refuses a config.json edited by hand
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
