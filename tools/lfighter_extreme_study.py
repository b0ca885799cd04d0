"""Why LFighter rejects honest peers on MNIST-Extreme (issue 11, section 4): a per-round record.

    python tools/lfighter_extreme_study.py --rounds 40 --seed 0 --out results/reference/medium/lfighter-extreme

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
honest class-7 holder was rejected).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from flhelpers.config import benchmark_config
from flhelpers.defenses.lfighter import LFighter, concat_features, extreme_features, filter_extreme, top_two
from flhelpers.fl.engine import build_experiment, run_experiment
from flhelpers.results.tables import to_markdown

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    defaults = LFighter()
    kwargs = ({} if (args.features, args.min_samples) == (defaults.extreme_features, defaults.min_samples)
              else {"extreme_features": args.features, "min_samples": args.min_samples})
    cfg = benchmark_config("mnist-extreme", "medium", defense="lfighter", attacker_ratio=args.ratio,
                           seed=args.seed, rounds=args.rounds, defense_kwargs=kwargs)
    exp = build_experiment(cfg, args.data_root)
    classes_all = exp.partition.histogram.argmax(axis=1)
    records: list[dict[str, Any]] = []

    def on_round(rec: Any) -> None:
        ctx = rec.context
        rows = ctx.gradients(ctx.layout.output_rows(rec.updates.detach()).double()).cpu().numpy()
        attackers = np.asarray(rec.is_attacker, dtype=bool)
        classes = classes_all[np.asarray(rec.peer_ids)]
        actual = ~rec.result.accepted.cpu().numpy()
        for row in replay(rows, attackers, classes, cfg.source_class):
            records.append({"round": rec.round, **row})
        records.append({"round": rec.round, "variant": "aggregator (actual)",
                        "honest_rejected": int((actual & ~attackers).sum()),
                        "honest_rejected_classes": " ".join(str(c) for c in sorted(classes[actual & ~attackers])),
                        "source_holders_rejected": int((actual & ~attackers & (classes == cfg.source_class)).sum()),
                        "tpr": float(actual[attackers].mean()), "fpr": float((actual & ~attackers).sum() / (~attackers).sum())})

    out = Path(args.out)
    res = run_experiment(cfg, data_root=args.data_root, results_dir=args.runs_dir or out / "runs",
                         dataset=exp.dataset, force=True,
                         progress=True, on_round=on_round, checkpoint_every=0)
    metrics = pd.read_csv(Path(res.path) / "metrics.csv")
    frame = pd.DataFrame(records).merge(metrics[["round", "accuracy", "source_accuracy", "attack_success_rate"]],
                                         on="round", how="left")
    frame.insert(1, "aggregator", f"{args.features}, min_samples {args.min_samples or 2}")
    frame.insert(2, "run_id", res.run_id)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.features}-ms{args.min_samples or 2}-seed{args.seed}"
    frame.to_csv(out / f"rounds-{tag}.csv", index=False)
    summary = frame.groupby("variant").agg(tpr=("tpr", "mean"), fpr=("fpr", "mean"),
                                           honest_rejected=("honest_rejected", "mean"),
                                           max_honest_rejected=("honest_rejected", "max"),
                                           rounds_source_holder_rejected=("source_holders_rejected",
                                                                          lambda s: int((s > 0).sum())))
    last = metrics.tail(10)
    text = (f"aggregator: LFighter {args.features}, min_samples {args.min_samples or 2}; {cfg.rounds} rounds, "
            f"seed {cfg.seed}\n\nlast-10 Src-Acc {last['source_accuracy'].mean():.3f} "
            f"(min {last['source_accuracy'].min():.3f}, max {last['source_accuracy'].max():.3f}), "
            f"All-Acc {last['accuracy'].mean():.3f}, ASR {last['attack_success_rate'].mean():.3f}\n\n"
            + to_markdown(summary.reset_index(), digits=3) + "\n")
    (out / f"summary-{tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
