"""Gradient captures: one run with an :class:`~flhelpers.analysis.gradients.UpdateRecorder`, kept on disk.

:func:`capture_gradients` runs one experiment with the recorder and stores its analyses under
``<results_dir>/captures/<run-id>-r<rounds>/`` so that re-running a notebook reuses them;
:func:`capture_all` does so for several runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import torch

from flhelpers.analysis.gradients import UpdateRecorder, compare_updates, good_and_bad_update
from flhelpers.config import ExperimentConfig
from flhelpers.results import atomic_write_csv, atomic_write_json, read_json


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


def capture_gradients(cfg: ExperimentConfig, data_root: str | Path | None = None,
                      results_dir: str | Path = "results", pca_rounds: Iterable[int] | None = None,
                      compare: bool = True, force: bool = False, progress: bool = True) -> GradientCapture:
    """Run ``cfg`` once with an :class:`UpdateRecorder` and keep its gradient analyses.

    The run itself lands in the results store like any other (a grid with the same config
    reuses it). The analyses are written to ``<results_dir>/captures/<run-id>/`` and read back
    on the next call unless ``force`` (a run with ``on_round`` always recomputes, so this is what
    makes re-running a notebook cheap).

    Args:
        cfg: the run to capture (e.g. FedAvg with 30 % attackers).
        pca_rounds: rounds whose updates are projected by PCA; default the last round.
        compare: also compute Table 1 (:func:`good_and_bad_update`, :func:`compare_updates`) for
            the first attacker at the last PCA round.
    """
    from flhelpers.fl.engine import run_experiment

    rounds = sorted(set(pca_rounds)) if pca_rounds is not None else [cfg.rounds - 1]
    for r in rounds:
        if not 0 <= r < cfg.rounds:
            raise ValueError(f"pca round {r} is outside the run's rounds 0..{cfg.rounds - 1}.")
    folder = capture_folder(cfg, results_dir, rounds)
    if not force and (folder / "capture.json").is_file():
        return GradientCapture.load(folder)
    holder: dict[str, UpdateRecorder] = {}

    def on_round(record: Any) -> None:
        if "rec" not in holder:
            holder["rec"] = UpdateRecorder(record.context.layout, cfg.lr, cfg.source_class, cfg.target_class,
                                           pca_rounds=rounds, keep_for_comparison=compare)
        holder["rec"](record)

    result = run_experiment(cfg, data_root=data_root, results_dir=results_dir, force=True,
                            progress=progress, on_round=on_round)
    rec = holder["rec"]
    exp = result.extra.get("experiment")
    pca = pd.DataFrame(rec.pca)
    if exp is not None and len(pca):
        held = exp.partition.histogram.argmax(axis=1)
        pca.insert(5, "held_class", held[pca["peer_id"].to_numpy()])
    comparison, peer = None, None
    if compare and rec.kept and exp is not None:
        good, bad = good_and_bad_update(exp, rec.kept["peer_id"], rec.kept["global_params"], rec.kept["round"])
        comparison = compare_updates(good, bad, exp.layout, cfg.lr, cfg.source_class, cfg.target_class)
        peer = {"peer_id": rec.kept["peer_id"], "round": rec.kept["round"]}
    capture = GradientCapture(result.run_id, cfg, pd.DataFrame(rec.magnitudes), pca, comparison, peer)
    capture.save(folder)
    return capture


def _capture_in_worker(cfg: ExperimentConfig, data_root: str | Path | None, results_dir: str | Path,
                       threads: int) -> GradientCapture:
    torch.set_num_threads(threads)
    return capture_gradients(cfg, data_root, results_dir, progress=False)


def capture_all(configs: Sequence[ExperimentConfig], data_root: str | Path | None = None,
                results_dir: str | Path = "results", workers: int = 1, force: bool = False) -> list[GradientCapture]:
    """:func:`capture_gradients` for several runs (last round's PCA, Table 1), in ``configs`` order.

    Captures already stored are read back (unless ``force``); the others run in up to ``workers``
    processes (each with ``cores // workers`` torch threads), as :func:`flhelpers.fl.grid.run_grid` does.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}.")
    out: list[GradientCapture | None] = [None] * len(configs)
    todo = []
    for i, cfg in enumerate(configs):
        folder = capture_folder(cfg, results_dir)
        if not force and (folder / "capture.json").is_file():
            out[i] = GradientCapture.load(folder)
        else:
            todo.append(i)
    if workers == 1 or len(todo) < 2:
        for i in todo:
            out[i] = capture_gradients(configs[i], data_root, results_dir, progress=False)
    else:
        threads = max(1, torch.get_num_threads() // workers)
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {i: pool.submit(_capture_in_worker, configs[i], data_root, results_dir, threads)
                       for i in todo}
            for i, future in futures.items():
                out[i] = future.result()
    return [c for c in out if c is not None]


__all__ = ["GradientCapture", "capture_all", "capture_folder", "capture_gradients"]
