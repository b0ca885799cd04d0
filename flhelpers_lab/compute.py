"""Compute the reference plan's missing runs of a profile into ``results/reference/<profile>``.

    python -m flhelpers_lab study compute --profile medium --benchmarks mnist-mild mnist-iid [--threads 1]

Runs the :func:`flhelpers_lab.paper.plan_grid` plan of each benchmark as one grid
(:func:`flhelpers.fl.grid.run_grid`), one torch thread per run by default (the tests also run on
one thread, so a test can recompute a reference run's first rounds exactly), with
:class:`ReferenceRecorder`: the FedAvg run at the capture ratio gets its gradient capture
(:class:`flhelpers.analysis.capture.CaptureRecorder`), so the notebooks find its analyses too, and
LFighter runs write their per-round record (:class:`flhelpers_lab.lfighter_record.LFighterRecords`)
to ``records/<run-id>.csv``. Finished runs are read back (a finished capture run without its
capture is computed again for it) and unfinished ones resume, so the command can be stopped and
started again. ``--only`` keeps the configurations whose defense is listed, ``--skip`` leaves
some out. A run being computed holds ``runs/<run-id>.lock``, so two processes can work through the
same plan (one with ``--reverse``: the second waits for a run the first computes, then reads it
back); a stopped process (Ctrl-C, SIGTERM) removes its lock, remove it by hand only after a hard
kill. ``--set KEY=JSON`` overrides a field in every configuration and ``--ratios`` the attacker
ratios, e.g. the released LFighter: ``--benchmarks cifar10-mild --only lfighter --ratios 0.4 0
--set 'defense_kwargs={"variant": "released"}'``. ``--seeds`` runs the plan at other seeds, e.g.
MNIST-Extreme's FedAvg and LFighter over seeds 1-3: ``--benchmarks mnist-extreme --seeds 1 2 3
--skip median``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from flhelpers.analysis.capture import CaptureRecorder
from flhelpers.config import ExperimentConfig
from flhelpers.fl.grid import RunRecorder, RunRecording, run_grid
from flhelpers_lab.lfighter_record import LFighterRecords
from flhelpers_lab.paper import capture_config, plan_grid
from flhelpers_lab.store import reference_dir

__all__ = ["RECORDS", "ReferenceRecorder", "compute_plan", "main", "parse_overrides", "reference_configs"]

#: the records of the reference store's LFighter runs (a finished run without one is read back as it is)
RECORDS = LFighterRecords(("lfighter", "lfighter-released"), recompute_missing=False)


@dataclass(frozen=True)
class ReferenceRecorder(RunRecorder):
    """The reference plan's recorder: the gradient capture of the runs ``capture_ids``
    (:class:`~flhelpers.analysis.capture.CaptureRecorder`), LFighter's per-round record of the others
    (:data:`RECORDS`)."""

    capture_ids: frozenset[str] = frozenset()

    def _part(self, cfg: ExperimentConfig) -> RunRecorder:
        return CaptureRecorder() if cfg.run_id() in self.capture_ids else RECORDS

    def outputs(self, cfg: ExperimentConfig) -> tuple[str, ...]:
        return self._part(cfg).outputs(cfg)

    def needs_computing(self, cfg: ExperimentConfig, results_dir: str | Path) -> bool:
        return self._part(cfg).needs_computing(cfg, results_dir)

    def whole_run(self, cfg: ExperimentConfig) -> bool:
        return self._part(cfg).whole_run(cfg)

    def start(self, cfg: ExperimentConfig, results_dir: Path) -> RunRecording | None:
        return self._part(cfg).start(cfg, results_dir)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=JSON`` items as a dict (a value that is not JSON stays a string)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def reference_configs(benchmarks: Sequence[str], profile: str = "medium", only: Sequence[str] | None = None,
                      skip: Sequence[str] = (), ratios: Sequence[float] | None = None, seeds: Sequence[int] = (0,),
                      **overrides: Any) -> tuple[list[ExperimentConfig], frozenset[str]]:
    """The plan's configurations of ``benchmarks`` (:func:`~flhelpers_lab.paper.plan_grid`, the defenses
    ``only`` at ``ratios``, without ``skip``), benchmark after benchmark, and the run ids of their
    captured runs (:func:`~flhelpers_lab.paper.capture_config`, seed 0's: other seeds are plain runs)."""
    configs: list[ExperimentConfig] = []
    captures = set()
    for b in benchmarks:
        captures.add(capture_config(b, profile).run_id())
        for cfg in plan_grid(b, profile, defenses=only or None, attacker_ratios=ratios, seeds=tuple(seeds),
                             **overrides):
            if (only is None or cfg.defense in only) and cfg.defense not in skip:
                configs.append(cfg)
    return configs, frozenset(captures)


def compute_plan(configs: Sequence[ExperimentConfig], capture_ids: frozenset[str], results_dir: str | Path,
                 data_root: str | None = None, threads: int = 1, workers: int = 1,
                 reverse: bool = False) -> pd.DataFrame:
    """Compute the runs of ``configs`` still missing in ``results_dir`` (one grid with
    :class:`ReferenceRecorder`, ``threads`` torch threads per run, ``reverse``: last run first)."""
    order = list(reversed(configs)) if reverse else list(configs)
    return run_grid(order, data_root, results_dir, threads=threads, workers=workers,
                    recorder=ReferenceRecorder(capture_ids))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flhelpers_lab study compute --benchmarks NAME ... [options]``: the module docstring."""
    p = argparse.ArgumentParser(prog="python -m flhelpers_lab study compute", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="medium")
    p.add_argument("--benchmarks", nargs="+", required=True)
    p.add_argument("--only", nargs="*", default=None, help="defenses to run (default: the whole plan)")
    p.add_argument("--skip", nargs="*", default=(), help="defenses to leave out")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--workers", type=int, default=1, help="processes computing runs side by side")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the plan (default: 0; the "
                   "gradient capture is seed 0's, so other seeds are plain runs)")
    p.add_argument("--reverse", action="store_true", help="run the plan last run first (a second process on "
                   "the same benchmarks then meets the first in the middle)")
    p.add_argument("--ratios", type=float, nargs="+", default=None,
                   help="attacker ratios (default: the plan's); with --only, the listed defenses run at each")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=JSON",
                   help="a configuration override applied to every run, e.g. "
                        "'defense_kwargs={\"variant\": \"released\"}' or local_epochs=3 (repeatable)")
    p.add_argument("--results-dir", default=None, help="default: results/reference/<profile>")
    p.add_argument("--data-root", default=os.environ.get("FLHELPERS_DATA"))
    args = p.parse_args(argv)
    # SIGTERM (kill, a session's end) unwinds like Ctrl-C, so the lock of the run being computed goes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = Path(args.results_dir) if args.results_dir else reference_dir(args.profile)
    configs, captures = reference_configs(args.benchmarks, args.profile, args.only, args.skip, args.ratios,
                                          args.seeds, **parse_overrides(args.overrides))
    rows = compute_plan(configs, captures, out, args.data_root, args.threads, args.workers, args.reverse)
    print(f"{len(rows)} runs in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
