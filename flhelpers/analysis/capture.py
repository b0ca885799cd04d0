"""Gradient captures: one run with an :class:`~flhelpers.analysis.gradients.UpdateRecorder`, kept on disk.

:func:`capture_gradients` runs one experiment with the recorder and stores its analyses under
``<results_dir>/captures/<run-id>-r<rounds>/`` so that re-running a notebook reuses them;
:func:`capture_all` does so for several runs. Both compute through
:func:`flhelpers.fl.grid.run_grid` with a :class:`CaptureRecorder` (a grid's per-run recorder),
which any grid can also pass to capture its runs as it computes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import pandas as pd
import torch

from flhelpers.analysis.gradients import UpdateRecorder, compare_updates, good_and_bad_update
from flhelpers.config import ExperimentConfig
from flhelpers.fl.grid import RunRecorder, RunRecording, run_grid
from flhelpers.results import atomic_write_csv, atomic_write_json, read_json

if TYPE_CHECKING:
    from flhelpers.fl.engine import RoundRecord, RunResult


@dataclass
class GradientCapture:
    """The gradient analyses of one run (see :func:`capture_gradients`).

    Attributes:
        run_id: the captured run.
        config: its configuration.
        magnitudes: one row per round, peer and output neuron: ``round, peer_id, is_attacker,
            neuron, magnitude``.
        pca: one row per PCA round, view and peer: ``round, view, peer_id, is_attacker, accepted,
            held_class, pc1, pc2, explained_pc1, explained_pc2``.
        comparison: Table 1 for the first attacker at the last PCA round (``None`` without attackers).
        comparison_peer: that peer's id and the round, ``{"peer_id": .., "round": ..}``.
    """

    run_id: str
    config: ExperimentConfig
    magnitudes: pd.DataFrame
    pca: pd.DataFrame
    comparison: pd.DataFrame | None
    comparison_peer: dict[str, int] | None
    reused: bool = False

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_csv(folder / "magnitudes.csv", self.magnitudes)
        atomic_write_csv(folder / "pca.csv", self.pca)
        if self.comparison is not None:
            atomic_write_csv(folder / "comparison.csv", self.comparison.reset_index(names="measure"))
        atomic_write_json(folder / "capture.json", {"run_id": self.run_id, "config": self.config.to_dict(),
                                                    "comparison_peer": self.comparison_peer})

    @classmethod
    def load(cls, folder: Path) -> "GradientCapture":
        meta = read_json(folder / "capture.json")
        comparison = None
        if (folder / "comparison.csv").is_file():
            comparison = pd.read_csv(folder / "comparison.csv").set_index("measure")
            comparison.index.name = None
        return cls(meta["run_id"], ExperimentConfig.from_dict(meta["config"]),
                   pd.read_csv(folder / "magnitudes.csv"), pd.read_csv(folder / "pca.csv"),
                   comparison, meta["comparison_peer"], reused=True)


def capture_folder(cfg: ExperimentConfig, results_dir: str | Path = "results",
                   pca_rounds: Iterable[int] | None = None) -> Path:
    """Where the capture of ``cfg`` (PCA at ``pca_rounds``, default the last round) is stored:
    ``<results_dir>/captures/<run-id>-r<rounds>/``; it is complete once ``capture.json`` exists."""
    rounds = sorted(set(pca_rounds)) if pca_rounds is not None else [cfg.rounds - 1]
    return Path(results_dir) / "captures" / f"{cfg.run_id()}-r{'_'.join(map(str, rounds))}"


def _pca_rounds(cfg: ExperimentConfig, pca_rounds: Iterable[int] | None) -> tuple[int, ...]:
    """The rounds to project (default the last), each checked to be a round of the run."""
    rounds = tuple(sorted(set(pca_rounds))) if pca_rounds is not None else (cfg.rounds - 1,)
    for r in rounds:
        if not 0 <= r < cfg.rounds:
            raise ValueError(f"pca round {r} is outside the run's rounds 0..{cfg.rounds - 1}.")
    return rounds


class CaptureRecording(RunRecording):
    """One run's capture: an :class:`UpdateRecorder` over every round, and at the end its analyses
    (:class:`GradientCapture`) written to :func:`capture_folder` of the store."""

    def __init__(self, cfg: ExperimentConfig, results_dir: Path, rounds: tuple[int, ...], compare: bool) -> None:
        self.cfg, self.results_dir, self.rounds, self.compare = cfg, results_dir, rounds, compare
        self.recorder: UpdateRecorder | None = None

    def __call__(self, record: RoundRecord) -> None:
        if self.recorder is None:
            cfg = self.cfg
            self.recorder = UpdateRecorder(record.context.layout, cfg.lr, cfg.source_class, cfg.target_class,
                                           pca_rounds=list(self.rounds), keep_for_comparison=self.compare)
        self.recorder(record)

    def finish(self, result: RunResult) -> None:
        rec, cfg = self.recorder, self.cfg
        if rec is None:
            raise RuntimeError(f"Run {result.run_id} ended without a round recorded; its capture needs every round.")
        exp = result.extra.get("experiment")
        pca = pd.DataFrame(rec.pca)
        if exp is not None and len(pca):
            held = exp.partition.histogram.argmax(axis=1)
            pca.insert(5, "held_class", held[pca["peer_id"].to_numpy()])
        comparison, peer = None, None
        if self.compare and rec.kept and exp is not None:
            good, bad = good_and_bad_update(exp, rec.kept["peer_id"], rec.kept["global_params"], rec.kept["round"])
            comparison = compare_updates(good, bad, exp.layout, cfg.lr, cfg.source_class, cfg.target_class)
            peer = {"peer_id": rec.kept["peer_id"], "round": rec.kept["round"]}
        capture = GradientCapture(result.run_id, cfg, pd.DataFrame(rec.magnitudes), pca, comparison, peer)
        capture.save(capture_folder(cfg, self.results_dir, self.rounds))


@dataclass(frozen=True)
class CaptureRecorder(RunRecorder):
    """A grid's recorder (:class:`flhelpers.fl.grid.RunRecorder`) that captures the runs it computes:
    PCA at ``pca_rounds`` (default each run's last round) and, with ``compare``, Table 1.

    A capture is kept in memory over the whole run, so a run is computed from round 0 (never
    resumed), and a finished run without its capture is computed again in its place
    (:meth:`~flhelpers.fl.grid.RunRecorder.whole_run`). ``only``: the run ids to capture (``None``:
    every run of the grid; the others are computed without a record).
    """

    pca_rounds: tuple[int, ...] | None = None
    compare: bool = True
    only: frozenset[str] | None = None

    def _captures(self, cfg: ExperimentConfig) -> bool:
        return self.only is None or cfg.run_id() in self.only

    def outputs(self, cfg: ExperimentConfig) -> tuple[str, ...]:
        """The capture's folder, ``captures/<run-id>-r<rounds>``."""
        if not self._captures(cfg):
            return ()
        return (capture_folder(cfg, "", self.pca_rounds).as_posix(),)

    def needs_computing(self, cfg: ExperimentConfig, results_dir: str | Path) -> bool:
        """A captured run without a complete capture (``capture.json``)."""
        folder = capture_folder(cfg, results_dir, self.pca_rounds)
        return self._captures(cfg) and not (folder / "capture.json").is_file()

    def whole_run(self, cfg: ExperimentConfig) -> bool:
        return self._captures(cfg)

    def start(self, cfg: ExperimentConfig, results_dir: Path) -> RunRecording | None:
        if not self._captures(cfg):
            return None
        return CaptureRecording(cfg, results_dir, _pca_rounds(cfg, self.pca_rounds), self.compare)


def capture_gradients(cfg: ExperimentConfig, data_root: str | Path | None = None,
                      results_dir: str | Path = "results", pca_rounds: Iterable[int] | None = None,
                      compare: bool = True, force: bool = False, progress: bool = True) -> GradientCapture:
    """Run ``cfg`` once with an :class:`UpdateRecorder` and keep its gradient analyses.

    The run itself lands in the results store like any other (a grid with the same config
    reuses it). The analyses are written to ``<results_dir>/captures/<run-id>-r<rounds>/`` and
    read back on the next call unless ``force``. The run is computed by
    :func:`flhelpers.fl.grid.run_grid` with a :class:`CaptureRecorder`, in this process with its
    torch thread count, from round 0: an unfinished run starts over, and a finished one is
    computed again in its place (a capture needs every round).

    Args:
        cfg: the run to capture (e.g. FedAvg with 30 % attackers).
        pca_rounds: rounds whose updates are projected by PCA; default the last round.
        compare: also compute Table 1 (:func:`good_and_bad_update`, :func:`compare_updates`) for
            the first attacker at the last PCA round.
    """
    rounds = _pca_rounds(cfg, pca_rounds)
    folder = capture_folder(cfg, results_dir, rounds)
    if not force and (folder / "capture.json").is_file():
        return GradientCapture.load(folder)
    run_grid([cfg], data_root, results_dir, progress=progress, round_progress=progress, force=force,
             threads=torch.get_num_threads(), recorder=CaptureRecorder(rounds, compare))
    return dataclasses.replace(GradientCapture.load(folder), reused=False)


def capture_all(configs: Sequence[ExperimentConfig], data_root: str | Path | None = None,
                results_dir: str | Path = "results", workers: int = 1, force: bool = False) -> list[GradientCapture]:
    """:func:`capture_gradients` for several runs (last round's PCA, Table 1), in ``configs`` order.

    Captures already stored are read back (unless ``force``); the others are computed by
    :func:`flhelpers.fl.grid.run_grid` with a :class:`CaptureRecorder`, in up to ``workers``
    processes, each with ``T // workers`` torch threads (``T``: this process's count; all ``T``
    when they are computed here, one after another).
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}.")
    folders = [capture_folder(cfg, results_dir) for cfg in configs]
    todo = [cfg for cfg, folder in zip(configs, folders) if force or not (folder / "capture.json").is_file()]
    if todo:
        threads = torch.get_num_threads()
        if workers > 1 and len(todo) > 1:
            threads = max(1, threads // workers)
        run_grid(todo, data_root, results_dir, progress=False, workers=workers, force=force, threads=threads,
                 recorder=CaptureRecorder())
    computed = {cfg.run_id() for cfg in todo}
    return [dataclasses.replace(GradientCapture.load(folder), reused=cfg.run_id() not in computed)
            for cfg, folder in zip(configs, folders)]


__all__ = ["CaptureRecorder", "CaptureRecording", "GradientCapture", "capture_all", "capture_folder",
           "capture_gradients"]
