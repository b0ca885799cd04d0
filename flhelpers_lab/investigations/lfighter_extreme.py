"""Why LFighter rejects honest peers on MNIST-Extreme: Procedure 2 replayed in four variants per round.

    python -m flhelpers_lab study lfighter-extreme --rounds 40 --seed 0 --out results/reference/medium/lfighter-extreme

Runs MNIST-Extreme at the ``medium`` structure (100 peers, one class each, 10 per class; 4 of
the 10 class-7 holders flip 7 -> 1; SGD lr 0.01, weight decay 5e-4, 1 local epoch) with LFighter
in the variant given by ``--features``/``--min-samples`` as the aggregator, and at every round
replays Procedure 2 in all four variants on the same output-layer gradients:

* ``in-place``: each peer's two top-neuron rows kept in place in the zeroed output layer;
* ``concat``: the two rows concatenated (Procedure 2's notation read literally);

each with scikit-learn's HDBSCAN ``min_samples`` = 2 (its default for ``min_cluster_size=2``; the
point counts itself) and 3 (what the ``hdbscan`` package the authors used does by default).

Writes ``rounds.csv`` (one row per round and variant: rejected honest peers and their classes,
rejected attackers, noise points, clusters, TPR, FPR, and the trajectory's Src-Acc) and
``summary.md`` (per variant: mean TPR, FPR, honest peers rejected per round, rounds in which an
honest class-7 holder was rejected). The run is computed through :func:`flhelpers.fl.grid.run_grid`
(``force``: always afresh) with :class:`ExtremeReplay`, whose recording replays each round and
writes both files when the run ends.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from flhelpers.config import ExperimentConfig, benchmark_config
from flhelpers.defenses.lfighter import LFighter, concat_features, extreme_features, filter_extreme, top_two
from flhelpers.fl.engine import build_experiment
from flhelpers.fl.grid import RunRecorder, RunRecording, run_grid
from flhelpers.results import METRICS
from flhelpers.results.tables import to_markdown

__all__ = ["ExtremeRecording", "ExtremeReplay", "VARIANTS", "extreme_config", "main", "replay"]

VARIANTS = {"in-place, min_samples 2": ("in-place", None), "in-place, min_samples 3": ("in-place", 3),
            "concat, min_samples 2": ("concat", None), "concat, min_samples 3": ("concat", 3)}


def replay(rows: np.ndarray, attackers: np.ndarray, classes: np.ndarray, source: int) -> list[dict[str, Any]]:
    """Procedure 2 in every variant on one round's output-layer gradient rows ``(K, C, in+1)``."""
    mags = np.linalg.norm(rows, axis=-1)
    pairs = top_two(mags)
    out = []
    for name, (kind, ms) in VARIANTS.items():
        feats = (extreme_features if kind == "in-place" else concat_features)(rows, pairs)
        bad, info = filter_extreme(feats, rows, ms)
        honest_bad = bad & ~attackers
        labels = np.asarray(info.get("labels", []))
        out.append({
            "variant": name,
            "tpr": float(bad[attackers].mean()) if attackers.any() else np.nan,
            "fpr": float(honest_bad.sum() / max(1, (~attackers).sum())),
            "honest_rejected": int(honest_bad.sum()),
            "honest_rejected_classes": " ".join(str(c) for c in sorted(classes[honest_bad])),
            "source_holders_rejected": int((honest_bad & (classes == source)).sum()),
            "noise": int((labels < 0).sum()) if labels.size else 0,
            "clusters": int(labels.max() + 1) if labels.size else 0,
            "attackers_noise": int(((labels < 0) & attackers).sum()) if labels.size else 0,
        })
    return out


class ExtremeRecording(RunRecording):
    """One run's replay: per round :func:`replay` in every variant and the aggregator's own outcome;
    when the run ends, ``rounds-<tag>.csv`` (joined with the run's metrics) and ``summary-<tag>.md``
    in ``out``."""

    def __init__(self, cfg: ExperimentConfig, classes: np.ndarray, out: Path, features: str,
                 min_samples: int | None) -> None:
        self.cfg, self.classes, self.out = cfg, classes, out
        self.features, self.min_samples = features, min_samples
        self.records: list[dict[str, Any]] = []

    def __call__(self, rec: Any) -> None:
        cfg, ctx = self.cfg, rec.context
        rows = ctx.gradients(ctx.layout.output_rows(rec.updates.detach()).double()).cpu().numpy()
        attackers = np.asarray(rec.is_attacker, dtype=bool)
        classes = self.classes[np.asarray(rec.peer_ids)]
        actual = ~rec.result.accepted.cpu().numpy()
        holders = classes == cfg.source_class
        for row in replay(rows, attackers, classes, cfg.source_class):
            self.records.append({"round": rec.round, **row})
        self.records.append({"round": rec.round, "variant": "aggregator (actual)",
                             "honest_rejected": int((actual & ~attackers).sum()),
                             "honest_rejected_classes": " ".join(str(c) for c in sorted(classes[actual & ~attackers])),
                             "source_holders_rejected": int((actual & ~attackers & holders).sum()),
                             "tpr": float(actual[attackers].mean()),
                             "fpr": float((actual & ~attackers).sum() / (~attackers).sum())})

    def finish(self, result: Any) -> None:
        cfg, ms = self.cfg, self.min_samples
        metrics = pd.read_csv(Path(result.path) / METRICS)
        frame = pd.DataFrame(self.records).merge(
            metrics[["round", "accuracy", "source_accuracy", "attack_success_rate"]], on="round", how="left")
        frame.insert(1, "aggregator", f"{self.features}, min_samples {ms or 2}")
        frame.insert(2, "run_id", result.run_id)
        self.out.mkdir(parents=True, exist_ok=True)
        tag = f"{self.features}-ms{ms or 2}-seed{cfg.seed}"
        frame.to_csv(self.out / f"rounds-{tag}.csv", index=False)
        summary = frame.groupby("variant").agg(tpr=("tpr", "mean"), fpr=("fpr", "mean"),
                                               honest_rejected=("honest_rejected", "mean"),
                                               max_honest_rejected=("honest_rejected", "max"),
                                               rounds_source_holder_rejected=("source_holders_rejected",
                                                                              lambda s: int((s > 0).sum())))
        last = metrics.tail(10)
        text = (f"aggregator: LFighter {self.features}, min_samples {ms or 2}; {cfg.rounds} rounds, "
                f"seed {cfg.seed}\n\nlast-10 Src-Acc {last['source_accuracy'].mean():.3f} "
                f"(min {last['source_accuracy'].min():.3f}, max {last['source_accuracy'].max():.3f}), "
                f"All-Acc {last['accuracy'].mean():.3f}, ASR {last['attack_success_rate'].mean():.3f}\n\n"
                + to_markdown(summary.reset_index(), digits=3) + "\n")
        (self.out / f"summary-{tag}.md").write_text(text)
        print(text)


@dataclass(frozen=True)
class ExtremeReplay(RunRecorder):
    """The grid's recorder of the study: each run computed gets an :class:`ExtremeRecording`, which
    writes its two files into ``out`` on the machine that computes the run (a local grid).

    Args:
        out: the folder of ``rounds-<tag>.csv`` and ``summary-<tag>.md``.
        features, min_samples: the aggregator's variant (for the files' names and headings).
        data_root: where the data sets are (the recording reads each peer's class from the
            run's partition).
    """

    out: str
    features: str = "concat"
    min_samples: int | None = 3
    data_root: str | None = None

    def start(self, cfg: ExperimentConfig, results_dir: Path) -> RunRecording:
        classes = build_experiment(cfg, self.data_root).partition.histogram.argmax(axis=1)
        return ExtremeRecording(cfg, classes, Path(self.out), self.features, self.min_samples)


def extreme_config(rounds: int = 40, seed: int = 0, ratio: float = 0.4, features: str = "concat",
                   min_samples: int | None = 3) -> ExperimentConfig:
    """MNIST-Extreme at ``medium`` with LFighter in the variant ``features`` / ``min_samples``
    (``defense_kwargs`` empty for LFighter's defaults, so the default variant's 80-round run is the
    committed reference run)."""
    defaults = LFighter()
    kwargs = ({} if (features, min_samples) == (defaults.extreme_features, defaults.min_samples)
              else {"extreme_features": features, "min_samples": min_samples})
    return benchmark_config("mnist-extreme", "medium", defense="lfighter", attacker_ratio=ratio,
                            seed=seed, rounds=rounds, defense_kwargs=kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flhelpers_lab study lfighter-extreme --rounds 40 --seed 0 --out DIR``: the study
    (module docstring), its run computed afresh into ``--runs-dir``."""
    p = argparse.ArgumentParser(prog="python -m flhelpers_lab study lfighter-extreme", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ratio", type=float, default=0.4)
    p.add_argument("--features", default="concat", choices=("in-place", "concat"))
    p.add_argument("--min-samples", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/lfighter-extreme")
    p.add_argument("--runs-dir", default=None, help="results store of the run (default: <out>/runs); with the "
                   "default variant and the medium profile's 80 rounds the run is the committed reference run")
    p.add_argument("--data-root", default=os.environ.get("FLHELPERS_DATA"))
    args = p.parse_args(argv)
    cfg = extreme_config(args.rounds, args.seed, args.ratio, args.features, args.min_samples)
    out = Path(args.out)
    recorder = ExtremeReplay(str(out.resolve()), args.features, args.min_samples, args.data_root)
    run_grid([cfg], args.data_root, args.runs_dir or out / "runs", round_progress=True, force=True,
             threads=args.threads, recorder=recorder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
