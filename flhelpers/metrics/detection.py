"""Detection quality of eliminated / rejected peers, from the per-round rows of ``metrics.csv``.

A rejected peer is a *positive* (as in :mod:`flhelpers.metrics`): the engine counts per round
``tp`` (attackers rejected), ``fp`` (honest rejected), ``tn`` (honest kept), ``fn`` (attackers
kept); peers a defense drops before training count as rejected. From these counts:

    accuracy  = (TP + TN) / (TP + FP + TN + FN)
    precision = TP / (TP + FP)          (NaN when nobody is rejected)
    recall    = TP / (TP + FN)          (NaN when there is no attacker)
    F1        = 2 TP / (2 TP + FP + FN) (NaN when there is no attacker and nobody is rejected)

per round (the user-elimination README's plots) and overall (summed over every round).
For selection rules (Krum), a round where an attacker's update was selected is a round with
``fn > 0``; :func:`attacker_selected_rounds` counts them. Per-round numbers need
``eval_every = 1``: with larger values each metrics row sums the rounds since the last
evaluation (``rounds_since_eval``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def detection_scores(tp: float, fp: float, tn: float, fn: float) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of rejection from the four counts (NaN where undefined)."""
    for name, v in (("tp", tp), ("fp", fp), ("tn", tn), ("fn", fn)):
        if v < 0:
            raise ValueError(f"Detection counts must be >= 0, got {name}={v}.")
    total = tp + fp + tn + fn

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else math.nan

    return {"detection_accuracy": ratio(tp + tn, total), "detection_precision": ratio(tp, tp + fp),
            "detection_recall": ratio(tp, tp + fn), "detection_f1": ratio(2 * tp, 2 * tp + fp + fn)}


def _check_counts(metrics: pd.DataFrame) -> None:
    missing = [c for c in ("tp", "fp", "tn", "fn") if c not in metrics]
    if missing:
        raise ValueError(f"The metrics have no {missing} column(s); pass the rows of a run's metrics.csv.")


def per_round_detection(metrics: pd.DataFrame) -> pd.DataFrame:
    """``metrics`` with ``detection_accuracy/precision/recall/f1`` added to every row."""
    _check_counts(metrics)
    scores = [detection_scores(*(float(r[c]) for c in ("tp", "fp", "tn", "fn")))
              for _, r in metrics.iterrows()]
    return pd.concat([metrics.reset_index(drop=True), pd.DataFrame(scores)], axis=1)


def overall_detection(metrics: pd.DataFrame) -> dict[str, float]:
    """The four scores over all rounds of one run (the per-row counts summed)."""
    _check_counts(metrics)
    return detection_scores(*(float(metrics[c].sum()) for c in ("tp", "fp", "tn", "fn")))


def _one_round_per_row(metrics: pd.DataFrame) -> None:
    if "rounds_since_eval" in metrics and (metrics["rounds_since_eval"] != 1).any():
        raise ValueError(
            "Some metrics rows cover several rounds (eval_every > 1), so rounds in which an "
            "attacker was selected cannot be told apart; rerun with eval_every=1.")


def attacker_selected_rounds(metrics: pd.DataFrame) -> int:
    """The number of rounds in which the rule kept (selected) at least one attacker's update
    (``fn > 0``). Needs one metrics row per round (``eval_every = 1``)."""
    _check_counts(metrics)
    _one_round_per_row(metrics)
    return int((metrics["fn"] > 0).sum())


def attacker_selected_share(metrics: pd.DataFrame, attacked_only: bool = True) -> float:
    """:func:`attacker_selected_rounds` divided by the number of rounds; with ``attacked_only``,
    only rounds that had an attacker (``tp + fn > 0``) count. NaN when there are none."""
    _check_counts(metrics)
    _one_round_per_row(metrics)
    rows = metrics[(metrics["tp"] + metrics["fn"]) > 0] if attacked_only else metrics
    return float((rows["fn"] > 0).mean()) if len(rows) else math.nan


def attacked_class_recall(metrics: pd.DataFrame, attacked_class: int, last: int = 10) -> float:
    """Recall of the attacked class, ``TP_c / #c`` = its per-class accuracy, averaged over the
    last ``last`` evaluated rounds (the user-elimination README's second metric)."""
    col = f"class_accuracy_{int(attacked_class)}"
    if col not in metrics:
        raise ValueError(f"The metrics have no {col!r} column; is class {attacked_class} in the data set?")
    return float(metrics[col].tail(last).mean())


def detection_table(per_round: pd.DataFrame, by: list[str] | None = None, last: int = 10) -> pd.DataFrame:
    """One row per run of ``load_results(..., per_round=True)``: the config columns ``by``,
    overall detection scores, rounds with a selected attacker, final accuracy (mean of the
    last ``last`` rounds) and recall of the source class."""
    if per_round.empty:
        return pd.DataFrame()
    by = list(by or ["benchmark", "defense", "attack", "attacker_ratio"])
    rows = []
    for run_id, g in per_round.groupby("run_id", sort=False):
        g = g.sort_values("round")
        row = {k: g[k].iloc[0] for k in by if k in g}
        row["run_id"] = run_id
        row.update(overall_detection(g))
        one_per_round = "rounds_since_eval" not in g or bool((g["rounds_since_eval"] == 1).all())
        row["attacker_selected_rounds"] = attacker_selected_rounds(g) if one_per_round else np.nan
        row["rounds"] = int(g["round"].iloc[-1]) + 1
        row["accuracy"] = float(g["accuracy"].tail(last).mean())
        row["source_recall"] = float(g["source_accuracy"].tail(last).mean())
        rows.append(row)
    return pd.DataFrame(rows)
