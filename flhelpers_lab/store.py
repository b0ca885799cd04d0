"""Where the results live: the committed reference store (``results/reference/<profile>``) and the working stores.

The ``medium`` profile's reference runs live in the repository under ``results/reference/medium``
(:func:`reference_dir`): each run's ``config.json``, ``metrics.csv``, ``timings.csv`` and
``summary.json``, the gradient captures the notebooks draw from, the figures and tables the
notebooks write, and the executed notebooks.

Reading them never writes there. ``make reproduce PROFILE=medium`` (and a notebook opened at
``medium``) works in ``results/medium`` (:func:`default_results_dir`), a git-ignored store that
:func:`prepare_results_store` first fills with copies of the committed runs and captures it lacks, so every
run is read back, not recomputed, and the committed files stay as they are. Only an explicit
refresh (``--refresh-reference``) uses the committed folder itself as the store
(:func:`table3_folders` for ``python -m flhelpers_lab table3``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from flhelpers.results import is_finished

#: profiles whose reference results are committed
REFERENCE_PROFILES = ("medium",)


def repository_root() -> Path:
    """The folder that holds ``flhelpers/`` and ``flhelpers_lab/`` (the repository, for an editable install)."""
    return Path(__file__).resolve().parents[1]  # flhelpers_lab/store.py


def reference_dir(profile: str) -> Path:
    """``results/reference/<profile>`` of the repository, the results store of a committed profile.

    Raises:
        ValueError: ``profile`` has no committed results (:data:`REFERENCE_PROFILES`).
    """
    if profile not in REFERENCE_PROFILES:
        raise ValueError(f"No committed reference results for profile {profile!r}; "
                         f"profiles with reference results: {', '.join(REFERENCE_PROFILES)}.")
    return repository_root() / "results" / "reference" / profile


def results_root() -> Path:
    """The project's ``results`` folder: ``<repository>/results`` for a checkout (editable
    install), else ``./results`` of the working directory, as an absolute path.

    Absolute, so that a notebook whose kernel runs in ``notebooks/`` (``make lab``) writes where
    ``make reproduce`` does, not into ``notebooks/results``.
    """
    root = repository_root()
    if (root / "pyproject.toml").is_file():
        return root / "results"
    return Path("results").resolve()


def default_results_dir(profile: str) -> Path:
    """Where a profile's runs, figures and tables go by default (absolute): ``results/<profile>``
    for a profile with committed reference results (``results/medium``, a working copy that
    :func:`prepare_results_store` seeds from ``results/reference/medium``), else ``results``."""
    return results_root() / profile if profile in REFERENCE_PROFILES else results_root()


def seed_from_reference(store: str | Path, profile: str) -> int:
    """Copy into ``store`` the committed finished runs, their LFighter records and the gradient
    captures of ``profile`` that it lacks (a run or capture already there is kept as it is); return
    how many were copied.

    Nothing is copied when ``store`` is the committed folder itself or the profile has none.
    """
    if profile not in REFERENCE_PROFILES:
        return 0
    source, store = reference_dir(profile), Path(store).resolve()
    if not source.is_dir() or store == source.resolve():
        return 0
    copied = 0
    for kind in ("runs", "captures"):
        folder = source / kind
        for item in sorted(folder.iterdir()) if folder.is_dir() else []:
            target = store / kind / item.name
            if target.exists() or not item.is_dir() or (kind == "runs" and not is_finished(item)):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(item, target, ignore=shutil.ignore_patterns("checkpoint.pt", "*.tmp", "*.lock"))
            copied += 1
    # LFighter's per-round records (records/<run-id>.csv) of the finished runs
    for item in sorted((source / "records").glob("*.csv")) if (source / "records").is_dir() else []:
        target = store / "records" / item.name
        if target.exists() or not is_finished(source / "runs" / item.stem):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item, target)
        copied += 1
    return copied


def prepare_results_store(results_dir: str | Path | None, profile: str, force: bool = False) -> str:
    """The results store a notebook or ``reproduce`` uses, as an absolute path.

    ``results_dir`` when given, else :func:`default_results_dir`. At a profile with committed
    reference results the store is first seeded with them (:func:`seed_from_reference`), unless
    ``force`` (everything is recomputed anyway), so their runs are read back, not computed.
    """
    store = Path(results_dir).expanduser().resolve() if results_dir else default_results_dir(profile)
    if not force:
        seed_from_reference(store, profile)
    return str(store)


def table3_folders(profile: str, results_dir: str | Path | None = None,
                   refresh_reference: bool = False) -> tuple[Path, Path]:
    """``(runs read from, tables written to)`` for ``python -m flhelpers_lab table3``.

    ``results_dir`` is both; else, at a committed profile, the committed runs are read and the
    tables go to :func:`default_results_dir` (``results/medium``), or into the committed folder
    itself with ``refresh_reference``; at another profile both are ``results``.

    Raises:
        ValueError: ``refresh_reference`` with ``results_dir``, or at a profile with no committed results.
    """
    if refresh_reference:
        if results_dir is not None:
            raise ValueError("--refresh-reference writes into the committed store: leave out --results-dir.")
        folder = reference_dir(profile)
        return folder, folder
    if results_dir is not None:
        return Path(results_dir), Path(results_dir)
    if profile in REFERENCE_PROFILES:
        return reference_dir(profile), default_results_dir(profile)
    return results_root(), results_root()


__all__ = ["REFERENCE_PROFILES", "default_results_dir", "reference_dir", "repository_root", "results_root",
           "prepare_results_store", "seed_from_reference", "table3_folders"]
