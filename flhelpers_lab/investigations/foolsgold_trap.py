"""FoolsGold's self-locking state: a poisoned-start sweep and per-round weight shares.

The paper's MNIST FoolsGold cell is Src-Acc 0.00 %, ASR 88.52 %; FoolsGold as Fung et al. define it
(and the authors' own pipeline) does not collapse from a clean start. The hypothesis this study tests:
FoolsGold zeroes any group of peers whose update histories point the same way. Once the global model
maps the source class to the target, the honest peers that hold source samples all push the same
"repair" direction on the output layer, so *they* look like the sybils and get weight 0, while the
flippers, who now agree with the model, keep theirs: a state that keeps itself.

The study runs MNIST (``medium`` structure, 40 % attackers) with

* the poisoned-start sweep: ``poisoned_rounds`` k in :data:`SWEEP_K` (the first k rounds the server
  applies the attackers' FedAvg, :attr:`flhelpers.config.ExperimentConfig.poisoned_rounds`) for each
  defense of :data:`SWEEP_DEFENSES` on MNIST-Mild;
* FoolsGold in the arXiv-era setting of the authors' notebooks (lr 0.001, 3 local epochs;
  ``anonymized30/LF-Fighter``, ``Experiments_MNIST_IID`` / ``_MILD_NON_IID``) on MNIST-iid and -Mild,
  from a clean start: a long slow early phase, where the trap could catch by itself.

Every run writes a per-round record of the aggregation weights (:class:`WeightShareRecorder`):
for each round the share of the rule's total weight held by three groups,

    share_G = sum_{i in G} w_i / sum_i w_i,

``G`` one of: attackers; *honest source holders* (honest peers whose share of source-class samples
is at least the iid share 1/C, :func:`source_holders`); the other honest peers. ``w`` is the rule's
own weight vector: FoolsGold's ``alpha`` (``info["alpha"]``, also in poisoned-start rounds, where the
rule still runs and only its aggregate is discarded), else ``AggregationResult.weights`` (FedAvg and
LFighter: the sample counts of the peers they keep). Rounds in which the rule's weights are not known
(a poisoned-start round of a rule other than FoolsGold) have NaN shares.

``python -m flhelpers_lab study foolsgold-trap [--out DIR] [--reverse] [--summarize]`` (:func:`main`)
computes the study's runs through :func:`flhelpers.fl.grid.run_grid` with :class:`WeightShares`
into ``<out>/runs`` (default :func:`study_dir`) and writes ``rounds.csv`` and ``summary.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from flhelpers.config import ExperimentConfig, benchmark_config
from flhelpers.fl.grid import RunRecorder, RunRecording, run_grid
from flhelpers.results import append_csv_row, atomic_write_text, finished_metrics, is_finished, run_dir
from flhelpers.results.tables import to_markdown
from flhelpers_lab.store import reference_dir

__all__ = ["ARXIV_SETTING", "COPYABLE", "SWEEP_DEFENSES", "SWEEP_K", "WeightShareRecorder", "WeightShares",
           "copy_reference_runs", "main", "read_shares", "run_source_holders", "run_study", "share_path",
           "source_holders", "study_configs", "study_dir", "summarize", "trap_rounds", "trap_summary"]

SWEEP_K: tuple[int, ...] = (0, 2, 4, 8)
SWEEP_DEFENSES: tuple[str, ...] = ("foolsgold", "fedavg", "lfighter")
#: FoolsGold in the authors' arXiv-era notebooks' setting (anonymized30/LF-Fighter, Experiments_MNIST_*):
#: LOCAL_LR = 0.001 and 3 local epochs (weight decay 5e-4, as every MNIST preset here).
ARXIV_SETTING: dict[str, Any] = {"lr": 0.001, "local_epochs": 3}
GROUPS = ("attackers", "honest_source_holders", "honest_others")
COLUMNS = ("round", "poisoned", "known", *(f"share_{g}" for g in GROUPS), "weights")


def study_dir(profile: str = "medium") -> Path:
    """The committed study: ``results/reference/<profile>/foolsgold-trap`` (runs, ``shares/``, ``summary.md``),
    written by :func:`main`."""
    return reference_dir(profile) / "foolsgold-trap"


def study_configs(profile: str = "medium", ratio: float = 0.4, seed: int = 0) -> list[ExperimentConfig]:
    """The study's runs: the sweep (MNIST-Mild, :data:`SWEEP_DEFENSES` x :data:`SWEEP_K`) and FoolsGold
    at :data:`ARXIV_SETTING` on MNIST-iid and MNIST-Mild. The k = 0 runs of the sweep are the profile's
    reference runs (same run id)."""
    out = [benchmark_config("mnist-mild", profile, defense=d, attacker_ratio=ratio, seed=seed, poisoned_rounds=k)
           for d in SWEEP_DEFENSES for k in SWEEP_K]
    out += [benchmark_config(b, profile, defense="foolsgold", attacker_ratio=ratio, seed=seed, **ARXIV_SETTING)
            for b in ("mnist-iid", "mnist-mild")]
    return out


def source_holders(histogram: np.ndarray, source: int) -> np.ndarray:
    """Peers whose share of source-class samples is at least the iid share ``1 / C``:
    ``n_{k,s} / n_k >= 1 / C`` (``histogram`` is peers x classes)."""
    hist = np.asarray(histogram, dtype=float)
    totals = hist.sum(axis=1)
    return (hist[:, source] * hist.shape[1] >= totals) & (totals > 0)


def run_source_holders(config_path: str | Path, source: int) -> np.ndarray:
    """:func:`source_holders` of a run, from the partition histogram in its ``config.json``."""
    record = json.loads(Path(config_path).read_text())
    return source_holders(np.asarray(record["partition_histogram"]), source)


def _shares(weights: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, float]:
    total = float(weights.sum())
    if not np.isfinite(total) or total <= 0:
        return {f"share_{g}": float("nan") for g in groups}
    return {f"share_{g}": float(weights[mask].sum() / total) for g, mask in groups.items()}


class WeightShareRecorder(RunRecording):
    """``on_round`` callback of :func:`flhelpers.fl.engine.run_experiment` appending each round's
    weight shares (module docstring) to ``path`` (CSV); a grid run's recording (:class:`WeightShares`).

    Args:
        path: the record's CSV (:func:`share_path`).
        config_path: the run's ``config.json``, read at the first round for the partition
            histogram (``run_experiment`` writes it before round 0).
        source_class: the attack's source class.
    """

    def __init__(self, path: str | Path, config_path: str | Path, source_class: int) -> None:
        self.path = Path(path)
        self.config_path = Path(config_path)
        self.source = int(source_class)
        self._holders: np.ndarray | None = None

    def holders(self) -> np.ndarray:
        if self._holders is None:
            self._holders = run_source_holders(self.config_path, self.source)
        return self._holders

    def __call__(self, rec: Any) -> None:
        ids = np.asarray(rec.peer_ids, dtype=int)
        attackers = np.asarray(rec.is_attacker, dtype=bool)
        holders = self.holders()[ids] & ~attackers
        info = rec.result.info
        poisoned = "poisoned_start" in info
        if "alpha" in info:
            weights = np.asarray(info["alpha"], dtype=float)
        elif not poisoned and rec.result.weights is not None:
            weights = rec.result.weights.detach().cpu().double().numpy()
        else:
            weights = np.full(len(ids), np.nan)
        known = bool(np.isfinite(weights).all())
        groups = {"attackers": attackers, "honest_source_holders": holders,
                  "honest_others": ~attackers & ~holders}
        row = {"round": rec.round, "poisoned": poisoned, "known": known, **_shares(weights, groups),
               "weights": " ".join(f"{i}:{'A' if a else 'S' if h else 'H'}:{w:.4g}"
                                   for i, a, h, w in zip(ids, attackers, holders, weights))}
        append_csv_row(self.path, COLUMNS, row)


def share_path(results_dir: str | Path, run_id: str) -> Path:
    """Where a run's weight-share record lives: ``<results_dir>/shares/<run-id>.csv``."""
    return Path(results_dir) / "shares" / f"{run_id}.csv"


@dataclass(frozen=True)
class WeightShares(RunRecorder):
    """The grid's recorder of the study: each run computed gets its weight-share record
    (:class:`WeightShareRecorder`, :func:`share_path`). A finished run without one (a k = 0 run
    copied from the reference store) is read back as it is, not computed again."""

    def outputs(self, cfg: ExperimentConfig) -> tuple[str, ...]:
        """``shares/<run-id>.csv``."""
        return (share_path("", cfg.run_id()).as_posix(),)

    def needs_computing(self, cfg: ExperimentConfig, results_dir: str | Path) -> bool:
        return False

    def start(self, cfg: ExperimentConfig, results_dir: Path) -> RunRecording:
        rid = cfg.run_id()
        return WeightShareRecorder(share_path(results_dir, rid), run_dir(results_dir, rid) / "config.json",
                                   cfg.source_class)


def read_shares(path: str | Path) -> pd.DataFrame:
    """A weight-share record, one row per round (the last written wins after a resume), by round."""
    frame = pd.read_csv(path, dtype={"weights": str})
    return frame.drop_duplicates("round", keep="last").sort_values("round").reset_index(drop=True)


def _label(cfg: ExperimentConfig) -> str:
    setting = (f"lr {cfg.lr:g}, {cfg.local_epochs} epochs" if cfg.local_epochs != 1 or cfg.lr != 0.01
               else f"k={cfg.poisoned_rounds}")
    return f"{cfg.benchmark} {cfg.defense} {setting}"


def trap_rounds(results_dir: str | Path, configs: Sequence[ExperimentConfig]) -> pd.DataFrame:
    """One row per finished run and round: the run's metrics joined with its weight shares (NaN
    where the run has no record), with ``label``, ``defense``, ``poisoned_rounds``, ``lr``,
    ``local_epochs`` and ``benchmark``."""
    frames = []
    for cfg, rid, metrics in finished_metrics(results_dir, configs):
        shares = share_path(results_dir, rid)
        if shares.is_file():
            metrics = metrics.merge(read_shares(shares).drop(columns=["weights"]), on="round", how="left")
        metrics.insert(0, "label", _label(cfg))
        for i, (k, v) in enumerate({"run_id": rid, "benchmark": cfg.benchmark, "defense": cfg.defense,
                                    "poisoned_rounds": cfg.poisoned_rounds, "lr": cfg.lr,
                                    "local_epochs": cfg.local_epochs}.items()):
            metrics.insert(1 + i, k, v)
        frames.append(metrics)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def trap_summary(rounds: pd.DataFrame, last: int = 10) -> pd.DataFrame:
    """One row per run of :func:`trap_rounds`: last-``last`` mean Src-Acc, ASR and All-Acc (%), the
    first round from which Src-Acc stays above 50 % (``escaped_at``; NaN if never), and the mean
    weight shares of attackers and honest source holders over the rounds after the poisoned start
    (``t >= k``; NaN without a record)."""
    rows = []
    for rid, g in rounds.groupby("run_id", sort=False):
        g = g.sort_values("round")
        k = int(g["poisoned_rounds"].iloc[0])
        tail = g.tail(last)
        above = (g["source_accuracy"] > 0.5).to_numpy()
        escaped = next((int(r) for i, r in enumerate(g["round"]) if above[i:].all()), None)
        after = g[g["round"] >= k]
        row = {key: g[key].iloc[0] for key in ("label", "benchmark", "defense", "poisoned_rounds", "lr",
                                               "local_epochs", "run_id")}
        row.update({"rounds": int(len(g)), "src_acc": 100 * tail["source_accuracy"].mean(),
                    "asr": 100 * tail["attack_success_rate"].mean(), "all_acc": 100 * tail["accuracy"].mean(),
                    "min_src_acc_after_k": 100 * after["source_accuracy"].min(),
                    "escaped_at": escaped})
        for grp in ("attackers", "honest_source_holders"):
            col = f"share_{grp}"
            row[f"mean_{col}"] = float(after[col].mean()) if col in after else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


#: the files of a finished run that :func:`copy_reference_runs` copies
COPYABLE = ("config.json", "metrics.csv", "summary.json", "timings.csv")


def copy_reference_runs(configs: Sequence[ExperimentConfig], out: str | Path, reference: str | Path) -> list[str]:
    """Copy the study's k = 0 FedAvg and LFighter runs finished in the store ``reference`` (the same
    run id) into ``out`` instead of computing them; they come without a weight record (FedAvg's
    weights are the sample counts, LFighter's are in its own record). Returns the copied run ids."""
    copied = []
    for cfg in configs:
        rid = cfg.run_id()
        target, ref = run_dir(out, rid), run_dir(reference, rid)
        if cfg.defense == "foolsgold" or cfg.poisoned_rounds != 0 or is_finished(target) or not is_finished(ref):
            continue
        target.mkdir(parents=True, exist_ok=True)
        for name in COPYABLE:
            if (ref / name).is_file():
                shutil.copy2(ref / name, target / name)
        print(f"{cfg.defense} k={cfg.poisoned_rounds} {rid}: copied from {reference}", flush=True)
        copied.append(rid)
    return copied


def run_study(profile: str, out: str | Path, reference: str | Path, data_root: str | None = None,
              threads: int = 1, workers: int = 1, reverse: bool = False) -> pd.DataFrame:
    """Compute the study's runs (:func:`study_configs`) into ``out``: the copies of
    :func:`copy_reference_runs` first, then one grid (:func:`flhelpers.fl.grid.run_grid`: finished runs
    read back, unfinished ones resumed) with :class:`WeightShares`, ``threads`` torch threads per run.
    A run being computed holds ``runs/<run-id>.lock``, so a second process (``reverse``: the plan last
    run first) can share the plan: it waits for that run, then reads it back."""
    configs = study_configs(profile)
    copy_reference_runs(configs, out, reference)
    return run_grid(list(reversed(configs)) if reverse else configs, data_root, out, threads=threads,
                    workers=workers, recorder=WeightShares())


def summarize(profile: str, out: str | Path) -> str:
    """Write ``rounds.csv`` (metrics and shares per run and round, :func:`trap_rounds`) and
    ``summary.md`` (:func:`trap_summary`) into ``out``; returns the summary's text."""
    out = Path(out)
    rounds = trap_rounds(out, study_configs(profile))
    if rounds.empty:
        return "no finished run yet\n"
    rounds.to_csv(out / "rounds.csv", index=False)
    summary = trap_summary(rounds)
    text = ("# FoolsGold's self-locking state: poisoned-start sweep and weight shares\n\n"
            "Written by `python -m flhelpers_lab study foolsgold-trap` (module "
            "`flhelpers_lab.investigations.foolsgold_trap`). "
            "MNIST at the `medium` structure, 40 % attackers (7 -> 1), seed 0. `k`: poisoned-start rounds "
            "(the server applies the attackers' FedAvg). Src-Acc, ASR, All-Acc: last-10 means (%). "
            "`escaped_at`: first round from which Src-Acc stays above 50 %. Shares: mean share of the "
            "rule's weight held by the attackers and by the honest source holders (>= 1/C of their "
            "samples are 7s) over rounds t >= k.\n\n"
            + to_markdown(summary.drop(columns=["run_id"]).set_index("label"), digits=3) + "\n")
    atomic_write_text(out / "summary.md", text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flhelpers_lab study foolsgold-trap [--out DIR] [--reverse] [--summarize]``: compute the
    study (:func:`run_study`) and write its summary (:func:`summarize`); ``--summarize`` only writes
    ``rounds.csv`` and ``summary.md``."""
    p = argparse.ArgumentParser(prog="python -m flhelpers_lab study foolsgold-trap", description=main.__doc__)
    p.add_argument("--profile", default="medium")
    p.add_argument("--out", default=None, help="default: results/reference/<profile>/foolsgold-trap")
    p.add_argument("--reference", default=None,
                   help="store whose k = 0 runs are copied (default: results/reference/<profile>)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--workers", type=int, default=1, help="processes computing runs side by side")
    p.add_argument("--reverse", action="store_true",
                   help="the plan last run first (a second process meets the first in the middle)")
    p.add_argument("--summarize", action="store_true", help="only write rounds.csv and summary.md")
    p.add_argument("--data-root", default=os.environ.get("FLHELPERS_DATA"))
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else study_dir(args.profile)
    if not args.summarize:
        run_study(args.profile, out, args.reference or reference_dir(args.profile), args.data_root, args.threads,
                  args.workers, args.reverse)
    print(summarize(args.profile, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
