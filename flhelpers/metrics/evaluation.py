"""The paper's metrics (section 6.1) and detection quality.

* TE (``test_loss``): mean test loss (cross-entropy; BCE for IMDB). A loss, not an error rate.
* All-Acc (``accuracy``): share of test examples predicted correctly.
* Src-Acc (``source_accuracy``): accuracy on the source-class test examples.
* ASR (``attack_success_rate``): share of source-class test examples predicted as the target class.
* CV (``source_accuracy_cv``): std / mean of Src-Acc over the evaluated rounds (population std).
* Detection: a rejected peer is a *positive*; TPR = TP / (TP + FN) over attackers,
  FPR = FP / (FP + TN) over honest peers.

The run summary averages the last :data:`SUMMARY_ROUNDS` (10) evaluated rounds, as the paper
reports (all of them when a run has fewer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from flhelpers.data.base import FLDataset
from flhelpers.metrics.attack_metrics import attack_metric_columns
from flhelpers.models import loss_fn, predict


@dataclass
class Evaluation:
    test_loss: float
    accuracy: float
    source_accuracy: float
    attack_success_rate: float
    class_accuracy: list[float]

    def as_row(self) -> dict[str, float]:
        row = {
            "test_loss": self.test_loss,
            "accuracy": self.accuracy,
            "source_accuracy": self.source_accuracy,
            "attack_success_rate": self.attack_success_rate,
        }
        row.update({f"class_accuracy_{i}": a for i, a in enumerate(self.class_accuracy)})
        return row


def classification_metrics(preds: torch.Tensor, labels: torch.Tensor, num_classes: int,
                           source_class: int, target_class: int) -> tuple[float, float, float, list[float]]:
    """(accuracy, source accuracy, attack success rate, per-class accuracy) from predictions."""
    preds, labels = preds.cpu(), labels.cpu()
    correct = preds == labels
    accuracy = correct.float().mean().item()
    per_class = []
    for c in range(num_classes):
        mask = labels == c
        per_class.append(correct[mask].float().mean().item() if mask.any() else float("nan"))
    src = labels == source_class
    source_accuracy = per_class[source_class] if source_class < num_classes else float("nan")
    asr = (preds[src] == target_class).float().mean().item() if src.any() else float("nan")
    return accuracy, source_accuracy, asr, per_class


@torch.no_grad()
def evaluate(model: nn.Module, dataset: FLDataset, loss_name: str, source_class: int,
             target_class: int, batch_size: int = 1000,
             device: torch.device | str = "cpu") -> Evaluation:
    """Evaluate on the whole test set in batches; the predictions stay on ``device`` until the end."""
    model.eval()
    total_loss, preds = torch.zeros((), dtype=torch.float64, device=device), []
    n = len(dataset.test_y)
    for start in range(0, n, batch_size):
        xb = dataset.prepare(dataset.test_x[start : start + batch_size].to(device))
        yb = dataset.test_y[start : start + batch_size].to(device)
        logits = model(xb)
        total_loss += loss_fn(loss_name, logits, yb).detach().double() * len(yb)  # no sync per batch
        preds.append(predict(loss_name, logits))
    acc, src, asr, per_class = classification_metrics(
        torch.cat(preds), dataset.test_y, dataset.num_classes, source_class, target_class)
    return Evaluation(total_loss.item() / n, acc, src, asr, per_class)


def detection_counts(accepted: np.ndarray, is_attacker: np.ndarray) -> dict[str, int]:
    """TP/FP/TN/FN of rejection against the true attackers (rejected = positive)."""
    rejected = ~accepted.astype(bool)
    att = is_attacker.astype(bool)
    return {
        "tp": int((rejected & att).sum()),
        "fp": int((rejected & ~att).sum()),
        "tn": int((~rejected & ~att).sum()),
        "fn": int((~rejected & att).sum()),
    }


def _rate(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


def coefficient_of_variation(values: np.ndarray) -> float:
    """``std / mean`` (population std); NaN for an empty series or a zero mean."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0 or values.mean() == 0:
        return float("nan")
    return float(values.std() / values.mean())


#: how many of the last evaluated rounds a run's summary averages (the paper's convention)
SUMMARY_ROUNDS = 10


def summarize(metrics: pd.DataFrame, last: int = SUMMARY_ROUNDS, timings: pd.DataFrame | None = None) -> dict[str, float]:
    """The run summary: the mean of the last ``last`` evaluated rounds, plus CV and detection.

    Detection rates sum TP/FP/TN/FN over *all* rounds (every round aggregates, evaluated or not).
    ``train_time_per_round`` and ``aggregation_time_per_round`` are the mean wall times per round
    from ``timings`` (one row per round, as in ``timings.csv``); for metrics frames of the older
    layout that carry ``train_time``/``aggregation_time`` sums since the last evaluation they come
    from those; ``None`` when neither is available. ``non_finite_updates`` and
    ``discarded_rounds`` total the hostile-update counters where the frame has them.
    """
    if metrics.empty:
        raise ValueError("No evaluated rounds to summarise.")
    tail = metrics.tail(last)
    out = {k: float(tail[k].mean()) for k in
           ("test_loss", "accuracy", "source_accuracy", "attack_success_rate")}
    # the attack's own metrics (per-pair Src-Acc/ASR, backdoor ASR) where its runs have them
    out.update({k: float(tail[k].mean()) for k in attack_metric_columns(metrics.columns)})
    out["source_accuracy_cv"] = coefficient_of_variation(metrics["source_accuracy"].to_numpy())
    tp, fp, tn, fn = (float(metrics[f"cum_{k}"].iloc[-1]) for k in ("tp", "fp", "tn", "fn"))
    out["detection_tpr"] = _rate(tp, tp + fn)
    out["detection_fpr"] = _rate(fp, fp + tn)
    for key in ("train_time", "aggregation_time"):
        if timings is not None and len(timings) and key in timings:
            value = float(timings[key].mean())
        elif key in metrics and "rounds_since_eval" in metrics:
            value = float(metrics[key].sum() / metrics["rounds_since_eval"].sum())
        else:
            value = float("nan")
        out[f"{key}_per_round"] = value
    for key in ("non_finite_updates", "discarded_rounds"):
        if key in metrics:
            out[key] = int(metrics[key].sum())
    for key in ("epsilon", "delta"):  # DP: the (epsilon, delta) spent by the whole run
        if key in metrics and metrics[key].notna().any():
            value = float(metrics[key].iloc[-1])
            out[key] = value if math.isfinite(value) else None
    out["rounds"] = int(metrics["round"].iloc[-1]) + 1
    out["evaluated_rounds_averaged"] = int(len(tail))
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
