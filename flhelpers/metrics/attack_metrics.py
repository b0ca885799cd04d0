"""Metrics that only some attacks define, added to a run's rows only for those attacks.

* Per pair ``s -> t`` of a several-pairs attack (:meth:`Attack.evaluation_pairs`):
  ``source_accuracy_s_t`` (accuracy on the class-``s`` test examples) and
  ``attack_success_rate_s_t`` (their share predicted as ``t``).
* Backdoor (:meth:`Attack.stamp_trigger`): ``backdoor_attack_success_rate``, the share of test
  examples whose class is not the target that the model predicts as the target once the trigger
  is stamped on them (Gu et al. 2017; Bagdasaryan et al. 2020).

An attack that defines neither adds no column, so the files of every other run are unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from flhelpers.models import predict

BACKDOOR_ASR = "backdoor_attack_success_rate"
_PAIR_COLUMN = re.compile(r"(source_accuracy|attack_success_rate)_\d+_\d+")


def pair_metrics(preds: torch.Tensor, labels: torch.Tensor, pairs: Any) -> dict[str, float]:
    """``source_accuracy_s_t`` and ``attack_success_rate_s_t`` of each pair (NaN without class ``s``)."""
    preds, labels = preds.cpu(), labels.cpu()
    out: dict[str, float] = {}
    for s, t in pairs:
        mask = labels == s
        n = int(mask.sum())
        out[f"source_accuracy_{s}_{t}"] = float((preds[mask] == s).float().mean()) if n else float("nan")
        out[f"attack_success_rate_{s}_{t}"] = float((preds[mask] == t).float().mean()) if n else float("nan")
    return out


def backdoor_success(triggered_preds: torch.Tensor, labels: torch.Tensor, target: int) -> float:
    """The share of examples not of class ``target`` predicted as ``target`` (NaN when none)."""
    keep = labels.cpu() != target
    if not bool(keep.any()):
        return float("nan")
    return float((triggered_preds.cpu()[keep] == target).float().mean())


@torch.no_grad()
def _predictions(model: nn.Module, dataset: Any, loss_name: str, batch_size: int, device: Any,
                 transform: Any = None) -> torch.Tensor:
    model.eval()
    preds = []
    for start in range(0, len(dataset.test_y), batch_size):
        x = dataset.test_x[start:start + batch_size]
        if transform is not None:
            x = transform(x)
        preds.append(predict(loss_name, model(dataset.prepare(x.to(device)))))
    return torch.cat(preds)


def attack_metrics(model: nn.Module, dataset: Any, attack: Any, loss_name: str, batch_size: int = 1000,
                   device: torch.device | str = "cpu") -> dict[str, float]:
    """The columns ``attack`` defines for the current model (an empty dict for most attacks)."""
    out: dict[str, float] = {}
    pairs = attack.evaluation_pairs()
    if pairs:
        out.update(pair_metrics(_predictions(model, dataset, loss_name, batch_size, device),
                                dataset.test_y, pairs))
    target = attack.backdoor_target
    if target is not None:
        triggered = _predictions(model, dataset, loss_name, batch_size, device, attack.stamp_trigger)
        out[BACKDOOR_ASR] = backdoor_success(triggered, dataset.test_y, target)
    return out


def attack_metric_columns(columns: Any) -> list[str]:
    """The columns of a metrics frame that :func:`attack_metrics` wrote, in their order."""
    return [c for c in columns if c == BACKDOOR_ASR or _PAIR_COLUMN.fullmatch(str(c))]


__all__ = ["BACKDOOR_ASR", "attack_metric_columns", "attack_metrics", "backdoor_success", "pair_metrics"]
