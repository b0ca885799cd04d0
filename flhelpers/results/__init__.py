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

This package is the public face; every name is importable from ``flhelpers.results``. The parts:

* :mod:`flhelpers.results.files`: atomic writes, digests, reading JSON, removing stray temporaries;
* :mod:`flhelpers.results.locks`: the run locks (:func:`claim_run`, :func:`hold_run`; the timing
  constants ``LOCK_POLL_S`` and ``LOCK_UNNAMED_S`` are read there);
* :mod:`flhelpers.results.store`: the store's layout, checked paths, swapping a recomputed run in,
  reading finished runs (:func:`load_results`).
"""

from __future__ import annotations

from flhelpers.results.files import (
    append_csv_row,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    csv_text,
    current_umask,
    file_sha256,
    read_json,
    remove_temporaries,
    sha256_text,
)
from flhelpers.results.locks import (
    LOCK_POLL_S,
    LOCK_UNNAMED_S,
    RunLockedError,
    claim_run,
    hold_run,
    holds_run,
    lock_holder,
    lock_path,
)
from flhelpers.results.store import (
    CONFIG,
    METRICS,
    METRICS_DIGEST,
    SUMMARY,
    TIMINGS,
    check_output_file,
    check_results_dir,
    finished_metrics,
    is_finished,
    load_results,
    publish_run,
    read_finished_run,
    read_run_record,
    read_timings,
    recompute_dir,
    recover_run,
    run_dir,
    train_samples,
)

__all__ = [
    "CONFIG",
    "LOCK_POLL_S",
    "LOCK_UNNAMED_S",
    "METRICS",
    "METRICS_DIGEST",
    "SUMMARY",
    "TIMINGS",
    "RunLockedError",
    "append_csv_row",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_file",
    "check_results_dir",
    "claim_run",
    "csv_text",
    "current_umask",
    "file_sha256",
    "finished_metrics",
    "hold_run",
    "holds_run",
    "is_finished",
    "load_results",
    "lock_holder",
    "lock_path",
    "publish_run",
    "read_finished_run",
    "read_json",
    "read_run_record",
    "read_timings",
    "recompute_dir",
    "recover_run",
    "remove_temporaries",
    "run_dir",
    "sha256_text",
    "train_samples",
]
