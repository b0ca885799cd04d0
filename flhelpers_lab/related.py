"""The grids and tables of the Related notebook: each seed's main result, at a profile.

* :func:`ffl_grid`: FL with FedAvg / Median / Trimmed Mean vs FFL, under Gaussian noise and
  label flipping, against the number of attackers (``ffl-readme.md``'s figures).
* :func:`elimination_grid`: FedAvg with and without loss-based user elimination against the
  attacker ratio 10-40 % (``user-elimination-readme.md``'s figures), at two LDP budgets.
* :func:`krum_ipm_grid`: Krum under the inner-product-manipulation attack, 0 to 11 attackers
  of 25 peers per round, epsilon 1, attack from round 10 (``fedavg-krum-dp-readme.md``).
* :func:`ffl_trace` and :func:`elimination_trace`: one run again, round by round, to show what
  FFL's reputation and the elimination test did (reputations, selections, weights; losses,
  ``D`` and its threshold).

``profile="paper"`` uses each benchmark's paper-scale preset; ``profile="quick"`` shrinks
data, peers and rounds so the whole notebook runs in minutes on 2 CPU cores (the numbers
below say how). Tables are tidy frames the plots of :mod:`flhelpers_lab.plots.related` draw.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from flhelpers.config import ExperimentConfig, benchmark_config
from flhelpers.metrics.detection import attacker_selected_rounds, overall_detection

FFL_RULES = ("fedavg", "median", "trimmed-mean", "ffl")
#: at ``quick`` the trimmed mean is left out to save time: at this scale it tracks the median
#: (77.9 vs 78.6 % under Gaussian noise, 75.5 vs 72.5 % Src-Acc under label flipping, 6 attackers)
FFL_QUICK_RULES = ("fedavg", "median", "ffl")

# Quick profile: MNIST-iid with 20 peers of 150 samples, 10 rounds, lr 0.1, FFL warm-up 3 rounds.
_FFL_QUICK = dict(num_peers=20, rounds=10, train_subset=3000, test_subset=500, lr=0.1)
_FFL_QUICK_COUNTS = (0, 3, 6)
_FFL_PAPER_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4)
# Quick profile: 20 peers of 160 samples, 14 rounds, lr 0.05 with batches of 16 (10 local steps a
# round). Loss-based detection needs a global model that has learnt the source class: at lr 0.1
# with batches of 64 (the earlier setting) the model oscillated and its loss stayed near 0.5, at
# lr 0.03 it was still at loss 1.0 after 20 rounds; this setting passes 90 % accuracy by round 12.
_UE_QUICK = dict(num_peers=20, rounds=14, train_subset=3200, test_subset=500, lr=0.05, batch_size=16)
UE_RATIOS = (0.1, 0.2, 0.3, 0.4)
#: LDP budgets of the elimination study: a meaningful one, and one that protects little
#: (the original's noise of scale 1e-4 corresponds to epsilon = 2e4 at L = 2)
UE_EPSILONS = (10.0, 1000.0)
#: at ``quick``, the more private budget runs at these ratios only (it eliminates nobody at any)
_UE_QUICK_PRIVATE_RATIOS = (0.4,)
# Krum / IPM: 25 peers every round (fraction 1) so that "k of 25 per round" is exact. Krum keeps
# one peer's update per round, so the global model follows a single peer's local steps: with 100
# samples, batches of 10, lr 0.05 and momentum 0.9 (the earlier setting) clean Krum climbed to
# 63 % and fell back to 9.8 % in its last round. 200 samples, batches of 20 and lr 0.03 (10 local
# steps a round) keep it stable: the mean of its last 5 of 20 rounds is about 84 % (seeds 0 and 1).
_KRUM_QUICK = dict(num_peers=25, rounds=20, train_subset=5000, test_subset=500, lr=0.03, batch_size=20)
KRUM_QUICK_COUNTS = (0, 1, 3, 5, 7, 11)
KRUM_PAPER_COUNTS = tuple(range(0, 12))


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated with the ``overrides`` that are not None (None means: keep the default)."""
    return {**base, **{k: v for k, v in overrides.items() if v is not None}}


def with_seeds(configs: list[ExperimentConfig], seeds: Sequence[int] = (0,)) -> list[ExperimentConfig]:
    """Every configuration once per seed (seed-major order)."""
    if not seeds:
        raise ValueError("Give at least one seed.")
    return [c.replace(seed=int(s)) for s in seeds for c in configs]


def _ratio(count: int, num_peers: int) -> float:
    """The attacker ratio that selects exactly ``count`` of ``num_peers`` (rounded to nearest)."""
    return round(count / num_peers, 6)


def attacker_count(cfg: ExperimentConfig) -> int:
    """How many attackers ``cfg`` has (as the engine rounds ``attacker_ratio * num_peers``)."""
    return 0 if cfg.attack == "none" else int(round(cfg.attacker_ratio * cfg.num_peers))


def ffl_grid(profile: str = "quick", benchmark: str = "mnist-iid", sigma: float = 1.0,
             rules: tuple[str, ...] | None = None, **overrides: Any) -> list[ExperimentConfig]:
    """FFL's comparison: ``rules`` x (no attack, Gaussian noise, label flipping) x attackers.

    ``rules`` defaults to :data:`FFL_QUICK_RULES` at ``quick`` and :data:`FFL_RULES` otherwise.

    The no-attack point (0 attackers) is shared by both attacks. FFL's warm-up is 20 rounds at
    ``paper`` and 3 at ``quick`` (10 rounds). ``sigma`` is the Gaussian noise's std.
    """
    if profile == "quick":
        base = _merge(_FFL_QUICK, overrides)
        counts = _FFL_QUICK_COUNTS
        warmup = 3
    else:
        base = _merge({}, overrides)
        peers = benchmark_config(benchmark, profile, **base).num_peers
        counts = tuple(int(round(r * peers)) for r in _FFL_PAPER_RATIOS)
        warmup = 20
    out = []
    for rule in rules or (FFL_QUICK_RULES if profile == "quick" else FFL_RULES):
        kw = {"warmup": warmup} if rule == "ffl" else {}
        for attack in ("gaussian-noise", "label_flip"):
            for count in counts:
                if count == 0 and attack == "label_flip":
                    continue  # the shared clean run
                cfg = benchmark_config(benchmark, profile, defense=rule, defense_kwargs=kw, attack=attack,
                                       attack_kwargs={"sigma": sigma} if attack == "gaussian-noise" else {},
                                       **base)
                out.append(cfg.replace(attacker_ratio=_ratio(count, cfg.num_peers)))
    return out


def elimination_grid(profile: str = "quick", benchmark: str = "mnist-iid",
                     epsilons: tuple[float, ...] = UE_EPSILONS, ratios: tuple[float, ...] = UE_RATIOS,
                     clip: float = 2.0, alpha: float | None = None, original: bool = True,
                     **overrides: Any) -> list[ExperimentConfig]:
    """FedAvg without and with user elimination at each attacker ratio: with our separation test
    at each LDP budget ``epsilons`` and, with ``original``, with the original's rule (always drop
    the high-loss cluster) at the largest budget; plus a no-attack run of each rule at the
    largest budget (ours must eliminate nobody; the original eliminates honest peers).

    At ``quick`` the budgets below the largest run at 40 % only, to save time. ``alpha`` is
    the separation test's false-alarm rate (None: the rule's default, 0.001)."""
    base = _merge(_UE_QUICK if profile == "quick" else {}, overrides)
    out = [benchmark_config(benchmark, profile, defense="fedavg", attacker_ratio=r, **base) for r in ratios]
    tested = {} if alpha is None else {"alpha": float(alpha)}
    top = float(max(epsilons))
    for eps in epsilons:
        kw = {"epsilon": float(eps), "clip": float(clip), **tested}
        rs = ratios
        if profile == "quick" and eps < max(epsilons):
            rs = tuple(r for r in ratios if any(np.isclose(r, q) for q in _UE_QUICK_PRIVATE_RATIOS)) or ratios
        out += [benchmark_config(benchmark, profile, defense="user-elimination", defense_kwargs=kw,
                                 attacker_ratio=r, **base) for r in rs]
    seed_rule = {"epsilon": top, "clip": float(clip), "separation_test": False}
    if original:
        out += [benchmark_config(benchmark, profile, defense="user-elimination", defense_kwargs=seed_rule,
                                 attacker_ratio=r, **base) for r in ratios]
    for kw in [{"epsilon": top, "clip": float(clip), **tested}] + ([seed_rule] if original else []):
        out.append(benchmark_config(benchmark, profile, defense="user-elimination", attacker_ratio=0.0,
                                    defense_kwargs=kw, **base))
    return out


def krum_ipm_grid(profile: str = "quick", benchmark: str = "mnist-iid", epsilon: float = 1.0,
                  start_round: int = 10, counts: tuple[int, ...] | None = None,
                  **overrides: Any) -> list[ExperimentConfig]:
    """Krum under IPM with ``counts`` attackers of 25 peers per round (0 is the clean run)."""
    base = _merge(_KRUM_QUICK if profile == "quick" else {"num_peers": 25, "rounds": 50, "batch_size": 10},
                  overrides)
    counts = counts if counts is not None else (KRUM_QUICK_COUNTS if profile == "quick" else KRUM_PAPER_COUNTS)
    out = []
    for count in counts:
        cfg = benchmark_config(benchmark, profile, defense="krum", attack="ipm",
                               attack_kwargs={"epsilon": float(epsilon), "start_round": int(start_round)},
                               eval_every=1, **base)
        out.append(cfg.replace(attacker_ratio=_ratio(count, cfg.num_peers)))
    return out


def _label(defense: str, kwargs: dict[str, Any]) -> str:
    if defense == "user-elimination":
        rule = "" if kwargs.get("separation_test", True) else ", original rule"
        return f"user elimination{rule} (eps={kwargs.get('epsilon', 10.0):g})"
    return defense


def run_tables(configs: list[ExperimentConfig], data_root: str | Path | None = None,
               results_dir: str | Path = "results", progress: bool = True, workers: int = 1) -> pd.DataFrame:
    """Run (or read back) every configuration with :func:`flhelpers.fl.grid.run_grid` (in
    ``workers`` processes, one torch thread each), then return :func:`run_table` of them."""
    from flhelpers.fl.grid import run_grid

    run_grid(configs, data_root=data_root, results_dir=results_dir, progress=progress, workers=workers)
    return run_table(configs, results_dir)


def last_rounds(rounds: int) -> int:
    """How many final rounds a table averages: 10 as the paper (from 40 rounds on), else a
    quarter of the rounds (at least 1), so a 10-round quick run is not averaged from round 0."""
    return 10 if rounds >= 40 else max(1, rounds // 4)


def run_table(configs: list[ExperimentConfig], results_dir: str | Path, last: int | None = None) -> pd.DataFrame:
    """One row per finished run of ``configs``: its setting, final metrics and detection.

    Columns:

    * ``accuracy``, ``source_accuracy``, ``source_recall``, ``attack_success_rate``: the mean
      over the last ``averaged_rounds`` evaluated rounds (``last``, default :func:`last_rounds`);
      ``final_accuracy``: the last round's accuracy alone (one round can be an outlier).
    * ``detection_*``: :func:`overall_detection` over all rounds (rejected = attacker).
    * ``attacking_rounds``: rounds from the attack's ``start_round`` on that had an attacker
      among the round's peers (before ``start_round`` an attacker sends an honest update).
    * ``selected_while_attacking``: those of the ``attacking_rounds`` in which the rule kept at
      least one attacker's update, i.e. a poisoned one (for Krum: selected it).
    * ``selected_before_attack``: rounds before ``start_round`` in which the rule kept an
      attacker's (then still honest) update; harmless.
    * ``attacker_selected_rounds``: the two together, all rounds with an attacker kept
      (:func:`attacker_selected_rounds`); it can exceed ``attacking_rounds``.

    The per-round counts need ``eval_every = 1`` (NaN otherwise).
    """
    from flhelpers.results import read_json, run_dir

    rows = []
    for cfg in configs:
        path = run_dir(results_dir, cfg.run_id())
        metrics = pd.read_csv(path / "metrics.csv")
        summary = read_json(path / "summary.json")
        averaged = last if last is not None else last_rounds(cfg.rounds)
        tail = metrics.tail(averaged)
        one_per_round = bool((metrics.get("rounds_since_eval", pd.Series([1])) == 1).all())
        start = int(cfg.attack_kwargs.get("start_round", 0)) if attacker_count(cfg) else 0
        attacking = metrics[(metrics["round"] >= start) & ((metrics["tp"] + metrics["fn"]) > 0)]
        selected_all = attacker_selected_rounds(metrics) if one_per_round else np.nan
        selected_attacking = int((attacking["fn"] > 0).sum()) if one_per_round else np.nan
        rows.append({
            "run_id": cfg.run_id(), "benchmark": cfg.benchmark, "seed": cfg.seed, "defense": cfg.defense,
            "label": _label(cfg.defense, cfg.defense_kwargs), "attack": cfg.attack if attacker_count(cfg) else "none",
            "attacker_ratio": cfg.attacker_ratio, "attackers": attacker_count(cfg), "rounds": cfg.rounds,
            "averaged_rounds": int(min(averaged, len(metrics))),
            "accuracy": float(tail["accuracy"].mean()), "final_accuracy": float(metrics["accuracy"].iloc[-1]),
            "source_accuracy": float(tail["source_accuracy"].mean()),
            "source_recall": float(tail[f"class_accuracy_{cfg.source_class}"].mean()),
            "attack_success_rate": float(tail["attack_success_rate"].mean()),
            **overall_detection(metrics),
            "attacking_rounds": int(len(attacking)) if one_per_round else np.nan,
            "selected_while_attacking": selected_attacking,
            "selected_before_attack": selected_all - selected_attacking if one_per_round else np.nan,
            "attacker_selected_rounds": selected_all,
            "train_time_per_round": summary.get("train_time_per_round"),
        })
    return pd.DataFrame(rows)


def _small_copy(t: Any) -> Any:
    """A host copy of a small (``(K,)``) tensor, so that it holds no storage it was cut from."""
    return t.detach().cpu().clone() if isinstance(t, torch.Tensor) else t


def light_record(rec: Any) -> Any:
    """What the traces read of a :class:`~flhelpers.fl.engine.RoundRecord` (round, peers, verdict,
    weights, the rule's ``info``), as copies: its update matrix becomes an empty ``(0, D)``
    tensor, the aggregate ``(0,)`` and the context's global parameters ``None``.

    ``rec.updates[:0]`` would be a view holding the whole ``K x D`` storage alive, and the
    aggregate and ``W^t`` are ``D`` values each: about 0.9 GB a round kept for ResNet18.
    """
    res = rec.result
    result = dataclasses.replace(res, update=torch.empty(0, dtype=res.update.dtype), accepted=_small_copy(res.accepted),
                                 weights=_small_copy(res.weights), buffer_weights=_small_copy(res.buffer_weights))
    return rec.__class__(rec.round, np.array(rec.peer_ids, copy=True), np.array(rec.is_attacker, copy=True),
                         torch.empty(0, rec.updates.shape[1], dtype=rec.updates.dtype), result,
                         dataclasses.replace(rec.context, global_params=None), rec.discarded)


def _rerun(cfg: ExperimentConfig, data_root: str | Path | None) -> tuple[list[Any], np.ndarray]:
    """Run ``cfg`` again in a temporary results store, keeping every round's
    :class:`~flhelpers.fl.engine.RoundRecord` (without its update matrix); also return the attackers' ids."""
    import tempfile

    from flhelpers.fl.engine import run_experiment

    records: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        res = run_experiment(cfg, data_root=data_root, results_dir=tmp, progress=False,
                             on_round=lambda rec: records.append(light_record(rec)), checkpoint_every=0)
    return records, np.asarray(res.extra["experiment"].attackers, dtype=np.int64)


def ffl_trace(cfg: ExperimentConfig, data_root: str | Path | None = None) -> pd.DataFrame:
    """FFL's reputation round by round, for one FFL run (computed again, not stored).

    Columns: ``mode`` (``median`` during the warm-up, then ``reputation``), ``selected`` and
    ``selected_attackers`` (peers taking part), ``q1`` (the selection threshold),
    ``attacker_reputation_max`` and ``honest_reputation_min`` (after the round's credit;
    attackers are separated when the first is below the second), ``weight_attacker_rows``
    (share of the aggregate's weight on rows sent by attackers) and
    ``weight_rows_mixed_with_attacker`` (share on honest peers' rows that carry half of an
    attacker's update after mixing).
    """
    if cfg.defense != "ffl":
        raise ValueError(f"ffl_trace needs an FFL run, got defense {cfg.defense!r}.")
    records, attackers = _rerun(cfg, data_root)
    att = set(attackers.tolist())
    rows = []
    for rec in records:
        info = rec.result.info
        ids = [int(i) for i in rec.peer_ids]
        is_att = np.array([i in att for i in ids])
        rep = np.array(info["reputation"], dtype=np.float64)
        mixed_with = {b if a in att else a for a, b in info["pairs"] if (a in att) != (b in att)}
        carries = np.array([(i in mixed_with) and (i not in att) for i in ids])
        w = (np.ones(len(ids)) if rec.result.weights is None or info["mode"] != "reputation"
             else rec.result.weights.detach().cpu().numpy().astype(np.float64))
        total = float(w.sum()) if info["mode"] == "reputation" else np.nan
        rows.append({"round": rec.round, "mode": info["mode"], "selected": len(ids),
                     "selected_attackers": int(is_att.sum()), "q1": float(info["q1"]),
                     "attacker_reputation_max": float(rep[is_att].max()) if is_att.any() else np.nan,
                     "honest_reputation_min": float(rep[~is_att].min()) if (~is_att).any() else np.nan,
                     "weight_attacker_rows": float(w[is_att].sum()) / total if total > 0 else np.nan,
                     "weight_rows_mixed_with_attacker": float(w[carries].sum()) / total if total > 0 else np.nan})
    return pd.DataFrame(rows)


def elimination_trace(cfg: ExperimentConfig, data_root: str | Path | None = None) -> pd.DataFrame:
    """User elimination round by round, for one run (computed again, not stored): the global
    model's loss on honest peers' data (mean, max) and on attackers' (min, mean), the test's
    ``separation`` ``D`` and ``threshold``, and how many attackers and honest peers were
    eliminated."""
    if cfg.defense != "user-elimination":
        raise ValueError(f"elimination_trace needs a user-elimination run, got defense {cfg.defense!r}.")
    records, attackers = _rerun(cfg, data_root)
    rows = []
    for rec in records:
        e = rec.result.info.get("elimination")
        if e is None:
            continue
        cand = np.asarray(e["candidates"], dtype=np.int64)
        loss = np.asarray(e["losses"], dtype=np.float64)
        is_att = np.isin(cand, attackers)
        gone = np.isin(cand, np.asarray(e["eliminated"], dtype=np.int64))
        rows.append({"round": rec.round,
                     "honest_loss_mean": float(loss[~is_att].mean()), "honest_loss_max": float(loss[~is_att].max()),
                     "attacker_loss_min": float(loss[is_att].min()) if is_att.any() else np.nan,
                     "attacker_loss_mean": float(loss[is_att].mean()) if is_att.any() else np.nan,
                     "separation": e["separation"], "threshold": e["threshold"],
                     "attackers_eliminated": int((gone & is_att).sum()),
                     "honest_eliminated": int((gone & ~is_att).sum())})
    return pd.DataFrame(rows)


def round_table(cfg: ExperimentConfig, results_dir: str | Path) -> pd.DataFrame:
    """A finished run's per-round rows (from its ``metrics.csv``): ``round``, the detection counts
    ``tp`` (attackers rejected), ``fp`` (honest peers rejected), ``fn`` (attackers kept),
    ``accuracy`` and ``source_recall`` (per-class accuracy of the source class)."""
    from flhelpers.results import run_dir

    metrics = pd.read_csv(run_dir(results_dir, cfg.run_id()) / "metrics.csv")
    out = metrics[["round", "tp", "fp", "fn", "accuracy"]].copy()
    out["source_recall"] = metrics[f"class_accuracy_{cfg.source_class}"]
    return out


def ffl_curves(table: pd.DataFrame) -> pd.DataFrame:
    """FFL figures' data: per attack (the clean run repeated for both), defense and attacker
    count, overall and source-class accuracy."""
    clean = table[table["attackers"] == 0]
    parts = [table[table["attackers"] > 0]]
    for attack in ("gaussian-noise", "label_flip"):
        parts.append(clean.assign(attack=attack))
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(["attack", "defense", "attackers"]).reset_index(drop=True)


__all__ = ["FFL_QUICK_RULES", "FFL_RULES", "KRUM_PAPER_COUNTS", "KRUM_QUICK_COUNTS", "UE_EPSILONS", "UE_RATIOS", "attacker_count",
           "elimination_grid", "elimination_trace", "ffl_curves", "ffl_grid", "ffl_trace", "krum_ipm_grid",
           "last_rounds", "light_record", "round_table", "run_table", "run_tables", "with_seeds"]
