"""Run locks: ``runs/<run-id>.lock`` marks a run being computed.

The lock file holds ``<pid> <host>`` of its holder. :func:`claim_run` takes it if it is free
(two processes can share one plan of runs); :func:`hold_run` waits while another live process
holds it, takes over a lock whose holder on this host was killed, and refuses to wait for ever on
a lock that names no holder (:class:`RunLockedError`). Both are re-entrant for the thread that
holds the lock (:func:`holds_run`).

The timing constants :data:`LOCK_POLL_S` and :data:`LOCK_UNNAMED_S` are read from this module
at each use; set them here (``flhelpers.results.locks.LOCK_POLL_S``) to change them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator

__all__ = [
    "LOCK_POLL_S",
    "LOCK_UNNAMED_S",
    "RunLockedError",
    "claim_run",
    "hold_run",
    "holds_run",
    "lock_holder",
    "lock_path",
]

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
    :func:`claim_run` or :func:`hold_run`, as a recorded grid run does): then it does nothing.
    A lock left by a process of this host that no longer exists is removed and taken over. While another live
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
