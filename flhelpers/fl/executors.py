"""What every grid executor shares: progress with an ETA, and runs that travel as files.

:func:`flhelpers.fl.grid.run_grid` computes the runs of a grid with one of two executors: ``local``
(this process, or ``workers`` local processes) and ``ray`` (one Ray task per run,
:mod:`flhelpers.fl.ray_executor`). Both report to a :class:`GridProgress`, and a run computed on
another machine comes back as its files (:func:`read_run_files`), which the driver writes into
its results store with the atomic writers of :mod:`flhelpers.results`
(:func:`write_finished_run`, :func:`write_unfinished_run`), so the store holds exactly what a
local run would have written.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO, Mapping

from tqdm.auto import tqdm

from flhelpers.fl.checkpoint import CHECKPOINT
from flhelpers.results import (CONFIG, METRICS, SUMMARY, TIMINGS, atomic_write_bytes, is_finished,
                               read_finished_run, remove_temporaries, run_dir)

#: the files of a finished run, in the order the driver writes them (``summary.json`` last)
FINISHED_FILES = (CONFIG, METRICS, TIMINGS, SUMMARY)
#: the files of an unfinished run (partial metrics for monitoring; the checkpoint last)
UNFINISHED_FILES = (CONFIG, METRICS, TIMINGS, CHECKPOINT)


class RunFailed(RuntimeError):
    """A run of a grid failed; ``index`` is its position in the grid, ``cause`` the error."""

    def __init__(self, index: int, cause: BaseException | str) -> None:
        super().__init__(str(cause))
        self.index = index
        self.cause = cause


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (``?`` when unknown)."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class GridProgress:
    """Runs done / to do and the estimated time left, over a whole grid.

    On a terminal or in a notebook it is a tqdm bar that starts at the runs already finished (so
    its rate and ETA count only runs computed now); elsewhere (a log file, CI) one line per
    finished run::

        grid: 3/12 runs done (1 reused), 9 to do, ETA 0:04:10; last: mnist-iid, lfighter, ... (41.2 s)

    The ETA is the time per computed run so far (wall clock, so parallel runs count as they
    overlap) times the runs left.
    """

    def __init__(self, total: int, reused: int, enabled: bool = True, stream: IO[str] | None = None,
                 bar: bool | None = None) -> None:
        self.total, self.reused, self.enabled = total, reused, enabled
        self.computed = 0
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        if bar is None:  # a terminal, or a notebook (tqdm.auto draws a widget there)
            bar = self.stream.isatty() or (self.stream is sys.stderr and "ipykernel" in sys.modules)
        use_bar = bar
        self._bar = tqdm(total=total, initial=reused, desc="grid", unit="run", file=self.stream,
                         disable=not (enabled and use_bar))
        self._lines = enabled and not use_bar
        if self._lines:
            self._print(f"grid: {total} runs, {reused} finished already, {total - reused} to compute")

    @property
    def done(self) -> int:
        return self.reused + self.computed

    def eta(self) -> float:
        """Seconds left, estimated from the runs computed so far (NaN before the first)."""
        if not self.computed:
            return float("nan")
        return (time.perf_counter() - self.start) / self.computed * (self.total - self.done)

    def update(self, description: str, seconds: float) -> None:
        """One more run computed: ``description`` took ``seconds``."""
        self.computed += 1
        self._bar.set_postfix_str(description)
        self._bar.update(1)
        if self._lines:
            self._print(f"grid: {self.done}/{self.total} runs done ({self.reused} reused), "
                        f"{self.total - self.done} to do, ETA {format_duration(self.eta())}; "
                        f"last: {description} ({seconds:.1f} s)")

    def close(self) -> None:
        self._bar.close()

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


def read_run_files(path: Path, names: tuple[str, ...] = FINISHED_FILES) -> dict[str, bytes]:
    """The bytes of the files ``names`` present in the run folder ``path``."""
    return {name: (Path(path) / name).read_bytes() for name in names if (Path(path) / name).is_file()}


def write_finished_run(results_dir: str | Path, run_id: str, files: Mapping[str, bytes]) -> Path:
    """Write a finished run computed elsewhere into the store, as a local run would have.

    Each file is replaced atomically; ``summary.json`` is removed first and written last, so a
    reader never sees a summary beside metrics it was not written for; the run's checkpoint is
    deleted afterwards. The written run is then read back and checked against its digest.
    """
    missing = [n for n in FINISHED_FILES if n not in files]
    if missing:
        raise ValueError(f"Run {run_id} came back without {', '.join(missing)}.")
    path = run_dir(results_dir, run_id)
    path.mkdir(parents=True, exist_ok=True)
    remove_temporaries(path)
    (path / SUMMARY).unlink(missing_ok=True)
    for name in FINISHED_FILES:
        atomic_write_bytes(path / name, files[name])
    (path / CHECKPOINT).unlink(missing_ok=True)
    read_finished_run(path)  # raises if metrics.csv does not match the summary's digest
    return path


def write_unfinished_run(results_dir: str | Path, run_id: str, files: Mapping[str, bytes]) -> bool:
    """Write a relayed checkpoint (and the partial metrics) of a run still computing elsewhere.

    Nothing is written into a finished run's folder. The checkpoint is written last, so the
    folder is an ordinary unfinished run that a later ``run_experiment`` resumes. Returns
    whether anything was written.
    """
    if CHECKPOINT not in files:
        return False
    path = run_dir(results_dir, run_id)
    if is_finished(path):
        return False
    path.mkdir(parents=True, exist_ok=True)
    for name in UNFINISHED_FILES:
        if name in files:
            atomic_write_bytes(path / name, files[name])
    return True


__all__ = ["FINISHED_FILES", "GridProgress", "RunFailed", "UNFINISHED_FILES", "format_duration",
           "read_run_files", "write_finished_run", "write_unfinished_run"]
