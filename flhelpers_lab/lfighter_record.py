"""LFighter's per-round record: what Procedure 1 looked at, whom it rejected, and their true roles.

A :class:`LFighterRecorder` is an ``on_round`` callback of :func:`flhelpers.fl.engine.run_experiment`.
At every round it takes the peers' output-layer gradient rows ``g_{k,i}`` (``(W^t - W_k^{t+1}) / eta``,
one row of weights and bias per output neuron ``i``) and writes one CSV row with

* ``neurons``: the two neurons the aggregator clustered on (``info["source_target"]``), and
  ``top_neurons``: all neurons ordered by summed magnitude ``M_i = sum_k ||g_{k,i}||``, largest first;
* ``source_rank`` / ``target_rank``: where the true source and target neurons stand in that order
  (1 = largest), so a reader sees whether they are the two largest;
* ``cluster_sizes`` and ``reason`` of the aggregator (k-means, Procedure 1);
* ``rejected``: the rejected peers as ``id:role`` (``A`` attacker, ``H`` honest); ``tpr`` / ``fpr``;
* ``oracle_tpr`` / ``oracle_fpr``: Procedure 1 replayed on the true source and target neurons
  (an oracle no defense has): whether the flippers are separable once the right rows are looked at;
* extreme rounds (Procedure 2) only: ``clusters``, each HDBSCAN cluster as ``label:size:top``
  (``top`` the largest neuron of its mean gradient), and ``attacker_company``, each cluster
  holding attackers as ``label:nA+nH[tops]`` (its attackers, its honest members, and the honest
  members' own largest neurons; label ``-1`` is noise), so a reader sees whom a missed attacker
  was clustered with: the honest source-class peers (their own largest neuron is the source),
  the target-class peers, or only attackers.

Rows are appended as rounds finish, so a run that is stopped and resumed keeps its record
(:func:`read_record` keeps the last row of a round written twice). :class:`LFighterRecords` is the
grid's recorder (:class:`flhelpers.fl.grid.RunRecorder`) that gives each LFighter run of a grid
its record, ``<results>/records/<run-id>.csv``, wherever the run is computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from flhelpers.config import ExperimentConfig
from flhelpers.defenses.lfighter import filter_mild, neuron_magnitudes
from flhelpers.fl.grid import RunRecorder, RunRecording
from flhelpers.results import append_csv_row

__all__ = ["LFighterRecorder", "LFighterRecords", "read_record", "record_path", "record_row", "record_summary",
           "records_table"]

COLUMNS = ("round", "neurons", "top_neurons", "source_rank", "target_rank", "cluster_sizes", "reason",
           "rejected", "tpr", "fpr", "oracle_tpr", "oracle_fpr", "clusters", "attacker_company")


def _rates(bad: np.ndarray, attackers: np.ndarray) -> tuple[float, float]:
    """``TPR = |bad & A| / |A|`` (NaN without attackers) and ``FPR = |bad & H| / |H|``."""
    tpr = float(bad[attackers].mean()) if attackers.any() else float("nan")
    fpr = float(bad[~attackers].mean()) if (~attackers).any() else float("nan")
    return tpr, fpr


def _sizes(sizes: Any) -> list[int]:
    """Cluster sizes as a list: Procedure 1 gives a list, Procedure 2 a ``{label: size}`` dict."""
    return [int(v) for v in (sizes.values() if isinstance(sizes, dict) else sizes)]


def _extreme_columns(info: dict[str, Any], attackers: np.ndarray) -> dict[str, str]:
    """``clusters`` and ``attacker_company`` of a Procedure 2 round (empty strings otherwise)."""
    if "cluster_top_neuron" not in info or "labels" not in info:
        return {"clusters": "", "attacker_company": ""}
    labels = np.asarray(info["labels"], dtype=int)
    tops = {int(c): int(t) for c, t in info["cluster_top_neuron"].items()}
    sizes = {int(c): int(n) for c, n in info["cluster_sizes"].items()}
    own = np.asarray([p[0] for p in info["peer_top_neurons"]], dtype=int)
    company = []
    for c in sorted(set(labels[attackers].tolist())):
        members = labels == c
        honest = members & ~attackers
        held = " ".join(map(str, sorted(set(own[honest].tolist()))))
        company.append(f"{c}:{int((members & attackers).sum())}A+{int(honest.sum())}H[{held}]")
    return {"clusters": " ".join(f"{c}:{sizes[c]}:{tops[c]}" for c in sorted(tops)),
            "attacker_company": " ".join(company)}


def record_row(rows: torch.Tensor, accepted: np.ndarray, attackers: np.ndarray, peer_ids: np.ndarray,
               info: dict[str, Any], source: int, target: int, seed: int) -> dict[str, Any]:
    """One round's record from its gradient rows ``(K, C, in+1)`` and the aggregator's outcome."""
    mags = neuron_magnitudes(rows.to(torch.float64)).sum(dim=0).cpu().numpy()
    order = [int(i) for i in np.argsort(-mags, kind="stable")]
    bad = ~np.asarray(accepted, dtype=bool)
    attackers = np.asarray(attackers, dtype=bool)
    tpr, fpr = _rates(bad, attackers)
    row: dict[str, Any] = {
        "neurons": " ".join(map(str, info.get("source_target", []))),
        "top_neurons": " ".join(map(str, order)),
        "source_rank": order.index(source) + 1 if source < len(order) else None,
        "target_rank": order.index(target) + 1 if target < len(order) else None,
        "cluster_sizes": " ".join(map(str, _sizes(info.get("cluster_sizes", [])))),
        "reason": info.get("reason", ""),
        "rejected": " ".join(f"{int(k)}:{'A' if a else 'H'}" for k, a, b in zip(peer_ids, attackers, bad) if b),
        "tpr": tpr, "fpr": fpr, "oracle_tpr": None, "oracle_fpr": None,
        **_extreme_columns(info, attackers),
    }
    if rows.shape[1] > max(source, target):
        feats = rows[:, [source, target], :].to(torch.float64).reshape(rows.shape[0], -1).cpu().numpy()
        oracle_bad, _ = filter_mild(feats, seed=seed)
        row["oracle_tpr"], row["oracle_fpr"] = _rates(oracle_bad, attackers)
    return row


class LFighterRecorder:
    """``on_round`` callback appending :func:`record_row` of each round to ``path`` (CSV)."""

    def __init__(self, path: str | Path, source_class: int, target_class: int) -> None:
        self.path = Path(path)
        self.source, self.target = int(source_class), int(target_class)

    def __call__(self, rec: Any) -> None:
        ctx = rec.context
        rows = ctx.gradients(ctx.layout.output_rows(rec.updates.detach()))
        row = {"round": rec.round, **record_row(rows, rec.result.accepted.cpu().numpy(), rec.is_attacker,
                                                rec.peer_ids, rec.result.info, self.source, self.target,
                                                ctx.seed)}
        append_csv_row(self.path, COLUMNS, row)


class _LFighterRecording(RunRecording):
    """A grid run's :class:`LFighterRecorder`; a run that starts at round 0 starts its record afresh
    (a resumed run appends to the record of its first rounds)."""

    def __init__(self, path: Path, source_class: int, target_class: int) -> None:
        self.recorder = LFighterRecorder(path, source_class, target_class)
        self.first = True

    def __call__(self, record: Any) -> None:
        if self.first and record.round == 0:
            self.recorder.path.unlink(missing_ok=True)
        self.first = False
        self.recorder(record)


@dataclass(frozen=True)
class LFighterRecords(RunRecorder):
    """The grid's recorder of LFighter's per-round record: every run of a grid whose defense is one
    of ``defenses`` gets :func:`record_path` (``records/<run-id>.csv``) in the grid's store.

    ``recompute_missing``: a finished run without its record is computed again for it (beside
    the stored run, whose files are kept; :func:`flhelpers.fl.executors.compute_recorded`);
    otherwise such a run is read back as it is.
    """

    defenses: tuple[str, ...] = ("lfighter",)
    recompute_missing: bool = True

    def outputs(self, cfg: ExperimentConfig) -> tuple[str, ...]:
        """``records/<run-id>.csv`` for a run of one of ``defenses``."""
        return (record_path("", cfg.run_id()).as_posix(),) if cfg.defense in self.defenses else ()

    def needs_computing(self, cfg: ExperimentConfig, results_dir: str | Path) -> bool:
        return self.recompute_missing and super().needs_computing(cfg, results_dir)

    def start(self, cfg: ExperimentConfig, results_dir: Path) -> RunRecording | None:
        if cfg.defense not in self.defenses:
            return None
        return _LFighterRecording(record_path(results_dir, cfg.run_id()), cfg.source_class, cfg.target_class)


def read_record(path: str | Path) -> pd.DataFrame:
    """The record at ``path``, one row per round (the last one written wins), sorted by round."""
    frame = pd.read_csv(path, keep_default_na=True, dtype={"neurons": str, "top_neurons": str,
                                                           "cluster_sizes": str, "rejected": str})
    return frame.drop_duplicates("round", keep="last").sort_values("round").reset_index(drop=True)


def record_summary(frame: pd.DataFrame, source: int, target: int) -> dict[str, Any]:
    """What a record shows over its rounds: in how many rounds the source and target neurons were
    the two largest (``both_top2``), the mean TPR and FPR of the aggregator and of the oracle, and
    the rounds in which Procedure 1 clustered on other neurons than the true pair."""
    pair = {str(source), str(target)}
    top2 = frame["top_neurons"].astype(str).str.split().str[:2].map(set)
    picked = frame["neurons"].astype(str).str.split().map(set)
    return {"rounds": int(len(frame)),
            "both_top2": int((top2 == pair).sum()),
            "picked_true_pair": int((picked == pair).sum()),
            "other_rounds": [int(r) for r, p in zip(frame["round"], picked) if p != pair],
            "tpr": float(frame["tpr"].mean()), "fpr": float(frame["fpr"].mean()),
            "oracle_tpr": float(pd.to_numeric(frame["oracle_tpr"]).mean()),
            "oracle_fpr": float(pd.to_numeric(frame["oracle_fpr"]).mean())}


def record_path(results_dir: str | Path, run_id: str) -> Path:
    """Where a run's record lives in a results store: ``<results_dir>/records/<run-id>.csv``."""
    return Path(results_dir) / "records" / f"{run_id}.csv"


def records_table(results_dir: str | Path, configs: list[Any]) -> pd.DataFrame:
    """One row per LFighter run of ``configs`` that has a record in ``results_dir``: benchmark,
    attacker ratio and :func:`record_summary` (rounds where source and target are the two largest
    neurons, mean TPR/FPR of the aggregator and of the oracle)."""
    rows = []
    for cfg in configs:
        path = record_path(results_dir, cfg.run_id())
        if cfg.defense not in ("lfighter", "lfighter-released") or not path.is_file():
            continue
        s = record_summary(read_record(path), cfg.source_class, cfg.target_class)
        rows.append({"benchmark": cfg.benchmark, "attacker_ratio": cfg.attacker_ratio, "run_id": cfg.run_id(),
                     **{k: v for k, v in s.items() if k != "other_rounds"},
                     "rounds_on_other_neurons": " ".join(map(str, s["other_rounds"]))})
    return pd.DataFrame(rows)
