"""What every grid executor shares: progress with an ETA, and runs that travel as files.

:func:`flhelpers.fl.grid.run_grid` computes the runs of a grid with one of two executors: ``local``
(this process, or ``workers`` local processes) and ``ray`` (one Ray task per run,
:mod:`flhelpers.fl.ray_executor`). Both report to a :class:`GridProgress`, and a run computed on
another machine comes back as its files (:func:`read_run_files`), which the driver writes into
its results store with the atomic writers of :mod:`flhelpers.results`
(:func:`write_finished_run`, :func:`write_unfinished_run`), so the store holds exactly what a
local run would have written.

A grid may also *record* its runs (``run_grid(..., recorder=...)``): a :class:`RunRecorder`,
sent to the process (or Ray task) that computes a run, builds that run's ``on_round`` callback
(a :class:`RunRecording`), which writes the record's files under the store (e.g.
``records/<run-id>.csv``) and is told when the run ends. :func:`compute_recorded` computes one
run so, in the store or, for a finished run whose record is missing, beside it (only the record
moves in, :func:`adopt_record`); a record computed elsewhere travels as bytes like the run's files
(:func:`read_record_files`, :func:`write_record_files`).
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Mapping

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from flhelpers.config import ExperimentConfig
from flhelpers.fl.checkpoint import CHECKPOINT
from flhelpers.results import (CONFIG, METRICS, SUMMARY, TIMINGS, atomic_write_bytes, hold_run, is_finished,
                               read_finished_run, remove_temporaries, run_dir)

if TYPE_CHECKING:
    from flhelpers.fl.engine import RoundRecord, RunResult

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


# ----------------------------------------------------------------------------- records of runs

#: the key prefix of a record's files among a run's files in transit (``record:records/<run-id>.csv``)
RECORD_PREFIX = "record:"


class RunRecording:
    """One run's recording: its ``on_round`` callback, then :meth:`finish` once the run ended.

    Built by :meth:`RunRecorder.start` in the process that computes the run; it writes its
    files under the store it was started for and is never pickled. The base records nothing.
    """

    def __call__(self, record: RoundRecord) -> None:
        """After each aggregation (``run_experiment``'s ``on_round``)."""

    def finish(self, result: RunResult) -> None:
        """The run finished (``result`` holds ``extra["experiment"]``): write what is left."""


class RunRecorder:
    """What a grid records of each run it computes, besides the run's own files.

    :func:`flhelpers.fl.grid.run_grid` sends it (pickled: subclass it at module level, e.g. as a
    frozen dataclass) to the worker that computes a run, which calls :meth:`start` for that run's
    :class:`RunRecording`. The base records nothing; a subclass names the record's files
    (:meth:`outputs`, relative to the results store: they travel from a Ray task to the driver,
    and a resumed run's record travels with its checkpoint) and builds the recording.

    * :meth:`needs_computing`: a *finished* run still to compute for its record (default: when
      one of its outputs is missing). It is computed again in a temporary store beside it and
      only the record moves in, and only if the recomputed ``metrics.csv`` equals the stored one
      (:func:`adopt_record`): the finished run's files are never rewritten.
    * :meth:`whole_run`: the record needs every round from round 0 (a capture kept in memory): an
      unfinished run then starts over instead of resuming, and a finished run whose record is
      missing is recomputed in its place (its files replaced by those the record describes).
    """

    def outputs(self, cfg: ExperimentConfig) -> tuple[str, ...]:
        """The record's files or folders for the run ``cfg``, relative to the store (``()``: none)."""
        return ()

    def needs_computing(self, cfg: ExperimentConfig, results_dir: str | Path) -> bool:
        """Whether the finished run ``cfg`` in ``results_dir`` must be computed again for its record."""
        return any(not (Path(results_dir) / rel).exists() for rel in self.outputs(cfg))

    def whole_run(self, cfg: ExperimentConfig) -> bool:
        """Whether the record of ``cfg`` needs the run's every round, from round 0 (class docstring)."""
        return False

    def start(self, cfg: ExperimentConfig, results_dir: Path) -> RunRecording | None:
        """The recording of the run ``cfg`` computed in the store ``results_dir`` (``None``: nothing)."""
        return None


def read_record_files(results_dir: str | Path, outputs: tuple[str, ...]) -> dict[str, bytes]:
    """The files of ``outputs`` present under ``results_dir`` (every file of a folder), keyed
    :data:`RECORD_PREFIX` + their path relative to the store."""
    root = Path(results_dir)
    found: dict[str, bytes] = {}
    for rel in outputs:
        path = root / rel
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if f.is_file():
                found[RECORD_PREFIX + f.relative_to(root).as_posix()] = f.read_bytes()
    return found


def write_record_files(results_dir: str | Path, files: Mapping[str, bytes], outputs: tuple[str, ...]) -> None:
    """Write the record files among ``files`` (keys :data:`RECORD_PREFIX` + path) under ``results_dir``.

    A file is replaced atomically; a folder of ``outputs`` is written whole beside its place and
    then put there, so a reader never sees it half written or mixed with an older one.
    """
    root = Path(results_dir)
    records = {k[len(RECORD_PREFIX):]: v for k, v in files.items() if k.startswith(RECORD_PREFIX)}
    for rel in outputs:
        inside = {k: v for k, v in records.items() if k.startswith(rel.rstrip("/") + "/")}
        if rel in records:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(root / rel, records[rel])
        elif inside:
            dest = root / rel
            work = dest.with_name(f".{dest.name}.{os.getpid()}.new")
            shutil.rmtree(work, ignore_errors=True)
            for k, v in inside.items():
                target = work / Path(k).relative_to(rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(v)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(work, dest)


def same_metrics(ours: bytes, stored: bytes, atol: float = 1e-6) -> bool:
    """Whether two ``metrics.csv`` hold the same columns and numbers (within ``atol``, NaN equal to NaN)."""
    a, b = pd.read_csv(io.BytesIO(ours)), pd.read_csv(io.BytesIO(stored))
    return list(a.columns) == list(b.columns) and a.shape == b.shape and np.allclose(
        a.to_numpy(dtype=float), b.to_numpy(dtype=float), rtol=0, atol=atol, equal_nan=True)


def adopt_record(results_dir: str | Path, run_id: str, files: Mapping[str, bytes], outputs: tuple[str, ...]) -> bool:
    """Keep the record of a finished run recomputed elsewhere for it (``files``: its ``metrics.csv``
    and record files) when the recomputed ``metrics.csv`` equals the stored one; otherwise warn
    and keep nothing. The stored run's files are never touched. Returns whether it was kept."""
    stored = (run_dir(results_dir, run_id) / METRICS).read_bytes()
    if not same_metrics(files[METRICS], stored):
        warnings.warn(f"Run {run_id} recomputed for its record differs from the stored {METRICS} (another torch "
                      f"thread count or CPU?); the record is not kept. Recompute the run itself with force=True "
                      f"to have both.", stacklevel=2)
        return False
    write_record_files(results_dir, files, outputs)
    return True


def record_run(cfg: ExperimentConfig, data_root: str | Path | None, results_dir: str | Path,
               recorder: RunRecorder | None, force: bool = False, progress: bool = False,
               also: Callable[[RoundRecord], None] | None = None) -> RunResult:
    """``run_experiment`` of ``cfg`` in ``results_dir`` with ``recorder``'s recording (and ``also``,
    a further ``on_round`` callback), then the recording's :meth:`RunRecording.finish`. A
    :meth:`RunRecorder.whole_run` record starts the run over (``force``)."""
    from flhelpers.fl.engine import run_experiment

    recording = recorder.start(cfg, Path(results_dir)) if recorder is not None else None
    callbacks = [c for c in (recording, also) if c is not None]

    def on_round(record: RoundRecord) -> None:
        for callback in callbacks:
            callback(record)

    restart = recording is not None and recorder is not None and recorder.whole_run(cfg)
    result = run_experiment(cfg, data_root=data_root, results_dir=results_dir, progress=progress,
                            force=force or restart, on_round=on_round if callbacks else None)
    if recording is not None:
        recording.finish(result)
    return result


def compute_recorded(cfg: ExperimentConfig, data_root: str | Path | None, results_dir: str | Path,
                     recorder: RunRecorder, force: bool = False, progress: bool = False) -> RunResult:
    """One run of a recorded grid, in the store ``results_dir`` (the body of a local worker).

    Decided while holding the run's lock (so two processes sharing a plan cannot both compute
    it): a run to compute (``force``, unfinished) is computed with its recording (:func:`record_run`;
    a resumed run's record is appended to); a finished run whose record is missing
    (:meth:`RunRecorder.needs_computing`) is computed again in a temporary store inside
    ``results_dir`` and only its record moves in (:func:`adopt_record`), unless the record is a
    :meth:`RunRecorder.whole_run` one, which recomputes the run in its place; any other finished
    run is read back. The result's ``reused`` is False whenever the run was computed here.
    """
    from flhelpers.fl.engine import run_experiment

    with hold_run(results_dir, cfg.run_id()):
        finished = is_finished(run_dir(results_dir, cfg.run_id()))
        if force or not finished:
            return record_run(cfg, data_root, results_dir, recorder, force, progress)
        if not recorder.needs_computing(cfg, results_dir):
            return run_experiment(cfg, data_root=data_root, results_dir=results_dir, progress=False)
        if recorder.whole_run(cfg):
            return record_run(cfg, data_root, results_dir, recorder, True, progress)
        with tempfile.TemporaryDirectory(prefix=".record-", dir=results_dir) as tmp:
            record_run(cfg, data_root, tmp, recorder)
            outputs = recorder.outputs(cfg)
            files = {METRICS: (run_dir(tmp, cfg.run_id()) / METRICS).read_bytes(), **read_record_files(tmp, outputs)}
            adopt_record(results_dir, cfg.run_id(), files, outputs)
        result = run_experiment(cfg, data_root=data_root, results_dir=results_dir, progress=False)
        result.reused = False  # computed again (for its record), though its files were kept
        return result


__all__ = ["FINISHED_FILES", "GridProgress", "RECORD_PREFIX", "RunFailed", "RunRecorder", "RunRecording",
           "UNFINISHED_FILES", "adopt_record", "compute_recorded", "format_duration", "read_record_files",
           "read_run_files", "record_run", "same_metrics", "write_finished_run", "write_record_files",
           "write_unfinished_run"]
