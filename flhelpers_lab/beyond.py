"""Beyond the paper: label-flipping attackers that know the defense, and a backdoor.

What the ``Beyond`` notebook runs and reads, in three modules by job, every name importable from
here (``from flhelpers_lab import beyond``):

* :mod:`flhelpers_lab.beyond_plan` - the plan per profile (:func:`beyond_plan`), its runs
  (:func:`planned_runs`, each tagged with its attack's key) and the parts of it to compute
  (:func:`select_runs`, :func:`only_finished_runs`);
* this module - :func:`run_beyond` computes the runs through :func:`flhelpers.fl.grid.run_grid`,
  LFighter's runs with their per-round record (:class:`~flhelpers_lab.lfighter_record.LFighterRecords`,
  in ``<results>/records/``); :func:`main` is ``python -m flhelpers_lab study beyond``;
* :mod:`flhelpers_lab.beyond_analysis` - the tables (each attack's metric beside its no-attack
  value) and :func:`findings`, which writes from the numbers and the records which rules hold and
  which break.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from flhelpers.config import ExperimentConfig
from flhelpers.fl.grid import run_grid
from flhelpers_lab.beyond_analysis import (HOLD_MARGIN, MIN_SWING_ROUNDS, SWING_SHARE, attack_table, camouflage_curve,
                                           clean_value, defense_attack_table, findings, headline_metrics, holds,
                                           lfighter_detection, mend_table, neuron_choices, no_attack_row, swing_kinds,
                                           swing_table, swings, verdicts, write_findings)
from flhelpers_lab.beyond_plan import (ALL_DEFENSES, MEND_KWARGS, SECOND_PAIR, BeyondAttack, BeyondPlan, PlannedRun,
                                       beyond_plan, only_finished_runs, planned_runs, select_runs, study_attacks)
from flhelpers_lab.lfighter_record import LFighterRecords
from flhelpers_lab.lfighter_record import record_path as lfighter_record_path

#: the Beyond study's recorder: each LFighter run's per-round record, also for a finished run without one
RECORDER = LFighterRecords(("lfighter",), recompute_missing=True)


def record_path(results_dir: str | Path, cfg: ExperimentConfig) -> Path:
    """Where an LFighter run's per-round record lies (as :data:`RECORDER` writes it)."""
    return lfighter_record_path(results_dir, cfg.run_id())


def beyond_threads(workers: int) -> int:
    """Torch threads per run: ``cores // workers`` with several processes, else this process's count."""
    import torch

    return max(1, (os.cpu_count() or 1) // workers) if workers > 1 else max(1, torch.get_num_threads())


def run_beyond(runs: Sequence[PlannedRun], data_root: str | Path | None = None, results_dir: str | Path = "results",
               workers: int = 2, force: bool = False) -> pd.DataFrame:
    """Compute the runs still to compute and return one summary row per run (:func:`flhelpers.fl.grid.run_grid`'s
    columns plus ``key``).

    One grid (:func:`flhelpers.fl.grid.run_grid`, ``workers`` processes with
    :func:`beyond_threads` torch threads each) with :data:`RECORDER`: an LFighter run writes its
    per-round record (:class:`~flhelpers_lab.lfighter_record.LFighterRecorder`), afresh when the
    run starts at round 0, appended when it resumes from a checkpoint, so a resumed run's record
    still covers every round. A *finished* LFighter run without a record (e.g. a Table 3 run
    committed before records existed) is recomputed in a temporary folder inside ``results_dir``,
    and only the record moves in, and only if the recomputed ``metrics.csv`` equals the stored one
    (else a warning, and the run stays without one): the finished run's own files are never
    rewritten, so stopping this midway loses nothing. Every configuration still to compute is
    validated once, before the first run trains.
    """
    rows = run_grid([r.config for r in runs], data_root, results_dir, progress=True, workers=workers, force=force,
                    threads=beyond_threads(workers), recorder=RECORDER)
    rows.insert(0, "key", [r.key for r in runs])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flhelpers_lab study beyond --profile medium [--ratios 0.4] [--keys flip pairs]``:
    compute the study's runs of a profile (finished runs are skipped, unfinished ones resume) into
    ``--results-dir`` (default: the profile's working store, ``results/medium`` at medium, git-ignored;
    ``--results-dir results/reference/medium`` computes the committed reference runs).
    ``--ratios``, ``--keys`` and ``--defenses`` compute a part of the plan first (the clean runs
    always come along)."""
    import argparse

    from flhelpers_lab.store import default_results_dir

    p = argparse.ArgumentParser(prog="python -m flhelpers_lab study beyond", description=main.__doc__)
    p.add_argument("--profile", default="medium")
    p.add_argument("--results-dir", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ratios", type=float, nargs="+", default=None, help="attacker ratios to compute (default: all)")
    p.add_argument("--keys", nargs="+", default=None, help="attack keys to compute (default: all)")
    p.add_argument("--defenses", nargs="+", default=None, help="rules to compute (default: all)")
    args = p.parse_args(argv)
    results = args.results_dir or default_results_dir(args.profile)
    try:
        runs = select_runs(planned_runs(beyond_plan(args.profile)), args.ratios, args.keys, args.defenses)
    except ValueError as e:
        p.error(str(e))
    rows = run_beyond(runs, args.data_root, results, workers=args.workers)
    print(f"{len(rows)} runs in {results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["ALL_DEFENSES", "HOLD_MARGIN", "MEND_KWARGS", "MIN_SWING_ROUNDS", "RECORDER", "SECOND_PAIR", "SWING_SHARE",
           "BeyondAttack", "BeyondPlan", "PlannedRun", "attack_table", "beyond_plan", "beyond_threads",
           "camouflage_curve", "clean_value", "defense_attack_table", "findings", "headline_metrics", "holds",
           "lfighter_detection", "mend_table", "neuron_choices", "no_attack_row", "only_finished_runs",
           "planned_runs", "record_path", "run_beyond", "select_runs", "study_attacks", "swing_kinds", "swing_table",
           "swings", "verdicts", "write_findings"]
