"""Every aggregation rule, looked up by name in ``flhelpers.registry.DEFENSES``; one base for all.

* the paper's rules: ``fedavg``, ``median``, ``repeated-median``, ``trimmed-mean``, ``krum``,
  ``multi-krum``, ``foolsgold``, ``lfighter``; its journal version adds ``tolpegin`` and ``flame``;
* the related systems (the paper's related systems): ``ffl`` (Fragmented FL's mixing and reputation) and
  ``ffl-mixing`` (the mixing in front of any rule) in :mod:`~flhelpers.defenses.ffl`;
  ``user-elimination`` (LDP loss reports, 1-D k-means, separation test) in
  :mod:`~flhelpers.defenses.user_elimination`;
* ``dp``: DP-FedAvg (McMahan et al. 2018) around any rule, :mod:`~flhelpers.defenses.dp`, with
  its RDP accountant in :mod:`~flhelpers.defenses.accountant`.

Every rule subclasses :class:`~flhelpers.defenses.base.Defense`: it sees the stacked ``K x D``
updates and an :class:`AggregationContext`, and returns an :class:`AggregationResult`.
"""

from __future__ import annotations

from flhelpers.defenses.base import AggregationContext, AggregationResult, Defense, weighted_mean
from flhelpers.defenses.dp import DPFedAvg, clip_updates, planned_epsilon, with_dp
from flhelpers.defenses.fedavg import FedAvg
from flhelpers.defenses.ffl import FFL, MixThenAggregate, ffl_scores, mix_pairs
from flhelpers.defenses.flame import FLAME
from flhelpers.defenses.foolsgold import FoolsGold
from flhelpers.defenses.krum import Krum, MultiKrum
from flhelpers.defenses.lfighter import LFighter, LFighterReleased
from flhelpers.defenses.median import Median
from flhelpers.defenses.repeated_median import RepeatedMedian
from flhelpers.defenses.tolpegin import Tolpegin
from flhelpers.defenses.trimmed_mean import TrimmedMean
from flhelpers.defenses.user_elimination import UserElimination, ldp_report, two_means_1d
from flhelpers.registry import register_defense

#: every built-in rule, in the order ``flhelpers list`` shows them
BUILTIN_DEFENSES = (FedAvg, Median, RepeatedMedian, TrimmedMean, Krum, MultiKrum, FoolsGold,
                    LFighter, LFighterReleased, Tolpegin, FLAME, DPFedAvg, FFL, MixThenAggregate, UserElimination)
for _cls in BUILTIN_DEFENSES:
    register_defense(_cls.name, _cls)
#: the rules of the paper's comparison, in its order
PAPER_DEFENSES = ("fedavg", "median", "repeated-median", "trimmed-mean", "multi-krum", "foolsgold",
                  "lfighter")

__all__ = ["AggregationContext", "AggregationResult", "BUILTIN_DEFENSES", "DPFedAvg", "Defense", "FFL", "FLAME",
           "FedAvg", "FoolsGold", "Krum", "LFighter", "LFighterReleased", "Median", "MixThenAggregate", "MultiKrum", "PAPER_DEFENSES",
           "RepeatedMedian", "Tolpegin", "TrimmedMean", "UserElimination", "clip_updates", "ffl_scores",
           "ldp_report", "mix_pairs", "planned_epsilon", "two_means_1d", "weighted_mean", "with_dp"]
