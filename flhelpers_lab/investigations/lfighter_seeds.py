"""LFighter on MNIST-Extreme across seeds: when Procedure 2 misses the
attackers, whom they were clustered with, and a remedy that is not the paper's rule.

The study runs, at the ``medium`` structure (100 peers, one class each, 40 % of the 10 class-7
holders flipping 7 -> 1), LFighter as the paper defines it and LFighter with
``split_by_own_top=True`` (:class:`flhelpers.defenses.lfighter.LFighter`) for each seed of
:data:`SEEDS`, every run with its per-round record
(:class:`flhelpers_lab.lfighter_record.LFighterRecorder`). FedAvg at 0 % and 40 % of the same
seeds are the reference store's runs (``tools/run_reference.py --seeds``).

A round's miss is read from the record's ``attacker_company`` (each cluster holding attackers:
its attackers, its honest members and the honest members' own largest neurons, which in an
extreme split are their classes), by :func:`miss_kind`:

* ``source``: the attackers sat in a cluster with honest source-class peers only (the cluster's
  mean then points at the source neuron, and no cluster shares it with them);
* ``many``: in one cluster of honest peers of several classes (HDBSCAN found few, large clusters);
* ``target``: with the target-class peers (Procedure 2 cannot separate them);
* ``own``: in a cluster of attackers only that no other cluster shares a top neuron with;
* ``""``: nothing missed (TPR 1, or no attacker).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from flhelpers.config import ExperimentConfig, benchmark_config
from flhelpers.results import finished_metrics
from flhelpers_lab.lfighter_record import read_record, record_path
from flhelpers_lab.reference import reference_dir

__all__ = ["BENCHMARK", "MISS_KINDS", "SEEDS", "miss_kind", "study_configs", "study_dir", "study_rounds",
           "study_summary"]

BENCHMARK = "mnist-extreme"
SEEDS = (0, 1, 2, 3)
REMEDY = {"split_by_own_top": True}
MISS_KINDS = ("source", "many", "target", "own")
#: one cluster of a record's ``attacker_company``: ``label:nA+nH[tops]`` (tops space-separated)
_COMPANY = re.compile(r"(-?\d+):(\d+)A\+(\d+)H\[([^\]]*)\]")


def study_dir(profile: str = "medium") -> Path:
    """The committed study: ``results/reference/<profile>/lfighter-seeds`` (runs, ``records/``,
    ``rounds.csv``, ``summary.md``), written by ``tools/lfighter_seeds_study.py``."""
    return reference_dir(profile) / "lfighter-seeds"


def study_configs(profile: str = "medium", ratio: float = 0.4,
                  seeds: Sequence[int] = SEEDS) -> list[ExperimentConfig]:
    """Per seed: LFighter (the paper's rule; the reference store's run of that seed, same run id)
    and LFighter with :data:`REMEDY`, both at ``ratio`` on :data:`BENCHMARK`."""
    out = []
    for seed in seeds:
        plain = benchmark_config(BENCHMARK, profile, defense="lfighter", attacker_ratio=ratio, seed=seed)
        out += [plain, plain.replace(defense_kwargs=dict(REMEDY))]
    return out


def miss_kind(company: str, tpr: float, source: int, target: int) -> str:
    """Whom a round's missed attackers were clustered with (module docstring), from a record's
    ``attacker_company`` (``label:nA+nH[tops]`` per cluster holding attackers) and its TPR.

    Noise is always rejected, and a cluster of attackers alone is rejected whenever another
    cluster shares its top neuron, so the missed attackers are looked for first among clusters
    that also hold honest peers: the one of those holding most attackers decides; only without
    such a cluster the kind is ``own``."""
    if not isinstance(company, str) or not company.strip() or not tpr < 1.0:
        return ""
    best: tuple[int, int, set[int], int] | None = None
    for label, n_att, n_hon, held in _COMPANY.findall(company):
        tops = {int(t) for t in held.replace(",", " ").split()}
        key = (int(n_hon) > 0, int(n_att))
        if int(label) >= 0 and (best is None or key > best[:2]):
            best = (*key, tops, int(n_hon))
    if best is None:
        return ""
    _, _, tops, n_hon = best
    if n_hon == 0:
        return "own"
    if len(tops) > 1:
        return "many"
    return "source" if tops == {source} else "target" if tops == {target} else "many"


def study_rounds(results_dir: str | Path, configs: Sequence[ExperimentConfig]) -> pd.DataFrame:
    """One row per finished run of ``configs`` and round: ``seed``, ``rule`` (``paper`` or
    ``split``), the round's metrics, ``src_acc_before`` (the Src-Acc of the model the peers
    trained from, the previous round's; NaN in round 0), and from the record ``tpr``, ``fpr``,
    ``clusters``, ``attacker_company`` and :func:`miss_kind` as ``missed_with``."""
    frames = []
    for cfg, rid, metrics in finished_metrics(results_dir, configs):
        m = metrics[["round", "accuracy", "source_accuracy", "attack_success_rate"]].copy()
        m["src_acc_before"] = m["source_accuracy"].shift(1)
        rec_path = record_path(results_dir, rid)
        if rec_path.is_file():
            rec = read_record(rec_path)
            cols = [c for c in ("round", "tpr", "fpr", "clusters", "attacker_company") if c in rec]
            m = m.merge(rec[cols], on="round", how="left")
        for col in ("tpr", "fpr", "clusters", "attacker_company"):
            if col not in m:
                m[col] = np.nan
        m["missed_with"] = [miss_kind(c, t, cfg.source_class, cfg.target_class)
                            for c, t in zip(m["attacker_company"], m["tpr"])]
        m.insert(0, "rule", "split" if cfg.defense_kwargs.get("split_by_own_top") else "paper")
        m.insert(0, "seed", cfg.seed)
        m.insert(0, "run_id", rid)
        frames.append(m)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def study_summary(rounds: pd.DataFrame, last: int = 10, learnt: float = 0.5) -> pd.DataFrame:
    """One row per run of :func:`study_rounds`: last-``last`` Src-Acc, ASR and All-Acc (%), TPR and
    FPR over all rounds (%), the rounds in which attackers were missed (TPR < 1) and how many of
    those fell before the source class was learnt (``src_acc_before`` below ``learnt``), and the
    count of each :data:`MISS_KINDS`."""
    rows = []
    for rid, g in rounds.groupby("run_id", sort=False):
        g = g.sort_values("round")
        tail = g.tail(last)
        missed = g[pd.to_numeric(g["tpr"], errors="coerce") < 1.0]
        before = missed["src_acc_before"].fillna(0.0) < learnt
        row = {"seed": int(g["seed"].iloc[0]), "rule": g["rule"].iloc[0], "run_id": rid, "rounds": int(len(g)),
               "src_acc": 100 * tail["source_accuracy"].mean(), "asr": 100 * tail["attack_success_rate"].mean(),
               "all_acc": 100 * tail["accuracy"].mean(),
               "tpr": 100 * pd.to_numeric(g["tpr"], errors="coerce").mean(),
               "fpr": 100 * pd.to_numeric(g["fpr"], errors="coerce").mean(),
               "missed_rounds": int(len(missed)), "missed_before_learnt": int(before.sum())}
        for kind in MISS_KINDS:
            row[f"missed_with_{kind}"] = int((missed["missed_with"] == kind).sum())
        rows.append(row)
    return pd.DataFrame(rows)
