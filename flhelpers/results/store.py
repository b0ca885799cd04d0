"""The run store's layout, ``<results_dir>/runs/<run-id>/``, and reading finished runs back.

Run ids are checked so that no id (``..``, ``/``, an absolute path, a symlink) can place files
outside ``<results_dir>/runs`` (:func:`run_dir`); :func:`check_results_dir` and
:func:`check_output_file` refuse, in one line, a place nothing can be written to. A finished run
(one with ``summary.json``, :func:`is_finished`) is read only if its ``config.json`` still hashes
to the folder's run id and its summary holds the digest of ``metrics.csv``
(:func:`read_finished_run`), so hand edits do not pass for the run; :func:`load_results` reads
every run of a store into one table. A finished run is recomputed in the hidden sibling
:func:`recompute_dir` and swapped in when complete (:func:`publish_run`, :func:`recover_run`).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd

from flhelpers.results.files import _fsync_dir, read_json, sha256_text

__all__ = [
    "CONFIG",
    "METRICS",
    "METRICS_DIGEST",
    "SUMMARY",
    "TIMINGS",
    "check_output_file",
    "check_results_dir",
    "finished_metrics",
    "is_finished",
    "load_results",
    "publish_run",
    "read_finished_run",
    "read_run_record",
    "read_timings",
    "recompute_dir",
    "recover_run",
    "run_dir",
    "train_samples",
]

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

CONFIG = "config.json"
METRICS = "metrics.csv"
TIMINGS = "timings.csv"
SUMMARY = "summary.json"
#: summary.json key holding the SHA-256 of metrics.csv (not a metric; dropped by load_results)
METRICS_DIGEST = "metrics_sha256"


# ----------------------------------------------------------------------------- where things go


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


# ----------------------------------------------------------------------------- recomputing a finished run


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


# ----------------------------------------------------------------------------- reading runs


def finished_metrics(results_dir: str | os.PathLike, configs: Sequence[Any]) -> Iterator[tuple[Any, str, pd.DataFrame]]:
    """``(config, run id, metrics.csv)`` of each run of ``configs`` that is finished in ``results_dir``."""
    for cfg in configs:
        rid = cfg.run_id()
        path = run_dir(results_dir, rid)
        if is_finished(path):
            yield cfg, rid, pd.read_csv(path / "metrics.csv")


def read_run_record(path: Path) -> dict[str, Any]:
    """The run's ``config.json`` record, checked to be the run of its folder.

    The folder's name is the run id, the hash of the config (``ExperimentConfig.run_id``); a
    config whose fields no longer hash to it was edited by hand, and reading it as that run
    would label the run's numbers with settings they were not computed with.

    Raises:
        ValueError: the record is unreadable, holds no ``config``, or hashes to another id.
    """
    from flhelpers.config import ExperimentConfig  # here: the results store is imported without torch

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
