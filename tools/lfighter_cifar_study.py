"""Why LFighter fails on CIFAR10-Mild at the ``medium`` budget (issue 11): a per-round record.

    python tools/lfighter_cifar_study.py --rounds 6 --out results/reference/medium/lfighter-cifar

Recomputes the first ``--rounds`` rounds of the committed reference run (CIFAR10-Mild, LFighter,
40 % attackers flipping dog (5) -> cat (3), seed 0; the trajectory of the first rounds does not
depend on the number of rounds) and, at every round, replays Procedure 1 on the same output-layer
gradients twice:

* ``picked``: the two neurons of largest summed magnitude ``M_i = sum_k ||g_{k,i}||`` (what
  LFighter does, and what the run's aggregator did);
* ``source/target``: the true source and target neurons (an oracle no defense has): whether the
  flippers' updates are separable at all once the right two neurons are looked at.

Writes ``rounds.csv`` (one row per round and variant: the two neurons, the ranks of the source and
target neurons in ``M``, k-means cluster sizes, TPR, FPR, and the round's accuracy, Src-Acc and
test loss) and ``summary.md``; checks the recomputed rounds against the committed ``metrics.csv``.
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
from flhelpers.defenses.lfighter import filter_mild, neuron_magnitudes, top_two
from flhelpers.fl.engine import run_experiment
from flhelpers.studies.reference import reference_dir
from flhelpers.studies.tables import to_markdown


def replay(rows: torch.Tensor, attackers: np.ndarray, source: int, target: int, seed: int) -> list[dict[str, Any]]:
    """Procedure 1 on one round's output-layer gradient rows ``(K, C, in+1)`` with the picked
    neurons and with the true source/target neurons."""
    mags = neuron_magnitudes(rows).numpy().sum(axis=0)
    order = list(np.argsort(-mags, kind="stable"))
    picked = [int(i) for i in top_two(mags)]
    out = []
    for name, pair in (("picked", picked), ("source/target", [source, target])):
        feats = rows.numpy()[:, pair, :].reshape(rows.shape[0], -1)
        bad, info = filter_mild(feats, seed=seed)
        out.append({"variant": name, "neurons": f"{pair[0]} {pair[1]}",
                    "source_rank": order.index(source) + 1, "target_rank": order.index(target) + 1,
                    "cluster_sizes": " ".join(map(str, info.get("cluster_sizes", []))),
                    "tpr": float(bad[attackers].mean()),
                    "fpr": float((bad & ~attackers).sum() / max(1, (~attackers).sum()))})
    return out


def summary_text(frame: pd.DataFrame, header: str) -> str:
    """``summary.md``: the per-round table and the means over the rounds per variant."""
    means = frame.groupby("variant").agg(tpr=("tpr", "mean"), fpr=("fpr", "mean"),
                                         source_rank=("source_rank", "mean"))
    return (header + "\n\nPer round (`rounds.csv`): the neurons Procedure 1 clusters on, the rank of the source "
            "(dog, 5) and target (cat, 3) neurons by summed gradient magnitude (1 = largest of 10), k-means' "
            "cluster sizes and the detection rates.\n\n"
            + to_markdown(frame.set_index("round")[["variant", "neurons", "source_rank", "target_rank",
                                                     "cluster_sizes", "tpr", "fpr", "accuracy",
                                                     "source_accuracy"]], digits=3)
            + "\n\nMeans over the rounds:\n\n" + to_markdown(means, digits=3) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/lfighter-cifar")
    p.add_argument("--data-root", default=os.environ.get("FLHELPERS_DATA"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    full = benchmark_config("cifar10-mild", "medium", defense="lfighter", attacker_ratio=0.4, seed=0)
    cfg = full.replace(rounds=args.rounds)
    records: list[dict[str, Any]] = []

    def on_round(rec: Any) -> None:
        ctx = rec.context
        rows = ctx.gradients(ctx.layout.output_rows(rec.updates.detach()).to(dtype=torch.float64))
        attackers = np.asarray(rec.is_attacker, dtype=bool)
        actual = ~rec.result.accepted.cpu().numpy()
        for row in replay(rows, attackers, cfg.source_class, cfg.target_class, ctx.seed):
            records.append({"round": rec.round, **row})
        records.append({"round": rec.round, "variant": "aggregator (actual)",
                        "neurons": " ".join(map(str, rec.result.info.get("source_target", []))),
                        "tpr": float(actual[attackers].mean()),
                        "fpr": float((actual & ~attackers).sum() / (~attackers).sum())})

    out = Path(args.out)
    res = run_experiment(cfg, data_root=args.data_root, results_dir=out / "runs", force=True,
                         progress=True, on_round=on_round, checkpoint_every=0)
    metrics = pd.read_csv(Path(res.path) / "metrics.csv")
    committed = pd.read_csv(reference_dir("medium") / "runs" / full.run_id() / "metrics.csv")
    cols = ["accuracy", "source_accuracy", "attack_success_rate", "test_loss"]
    diff = (metrics[cols] - committed[cols].iloc[:len(metrics)].to_numpy()).abs().to_numpy().max()
    frame = pd.DataFrame(records).merge(metrics[["round"] + cols], on="round", how="left")
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "rounds.csv", index=False)
    header = (f"CIFAR10-Mild at `medium`, LFighter at 40 %, seed 0: the first {cfg.rounds} rounds of the committed "
              f"run {full.run_id()} recomputed (largest difference from its committed metrics.csv: {diff:.2e}).")
    text = summary_text(frame, header)
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
