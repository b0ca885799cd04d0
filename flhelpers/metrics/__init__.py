"""What a run measures: the paper's metrics on the test set, and how well a rule picked attackers.

* :mod:`~flhelpers.metrics.evaluation` - test loss, accuracy, source-class accuracy, attack
  success rate, per-class accuracy, CV, detection TPR/FPR, and a run's summary.
* :mod:`~flhelpers.metrics.attack_metrics` - what only some attacks define: per-pair Src-Acc and
  ASR, backdoor ASR.
* :mod:`~flhelpers.metrics.detection` - detection accuracy / precision / recall / F1 and the rounds
  in which a selection rule kept an attacker (the related systems' measures).
"""

from __future__ import annotations

from flhelpers.metrics.attack_metrics import BACKDOOR_ASR, attack_metric_columns, attack_metrics
from flhelpers.metrics.detection import (attacked_class_recall, attacker_selected_rounds, attacker_selected_share,
                                         detection_scores, detection_table, overall_detection, per_round_detection)
from flhelpers.metrics.evaluation import (Evaluation, classification_metrics, coefficient_of_variation,
                                          detection_counts, evaluate, summarize)

__all__ = ["BACKDOOR_ASR", "Evaluation", "attack_metric_columns", "attack_metrics", "attacked_class_recall", "attacker_selected_rounds", "attacker_selected_share",
           "classification_metrics", "coefficient_of_variation", "detection_counts", "detection_scores",
           "detection_table", "evaluate", "overall_detection", "per_round_detection", "summarize"]
