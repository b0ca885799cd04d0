"""LFighter on MNIST-Extreme across seeds: when Procedure 2 misses the attackers, and with whom.

Whom the missed attackers were clustered with, and a remedy that is not the paper's rule.

The study runs, at the ``medium`` structure (100 peers, one class each, 40 % of the 10 class-7
holders flipping 7 -> 1), LFighter as the paper defines it and LFighter with
``split_by_own_top=True`` (:class:`flhelpers.defenses.lfighter.LFighter`) for each seed of
:data:`SEEDS`, every run with its per-round record
(:class:`flhelpers_lab.lfighter_record.LFighterRecorder`). FedAvg at 0 % and 40 % of the same
seeds are the reference store's runs (``python -m flhelpers_lab study compute --seeds``).
``python -m flhelpers_lab study lfighter-seeds`` (:func:`main`) computes the study through
:func:`flhelpers.fl.grid.run_grid` and writes ``rounds.csv`` and ``summary.md``.

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

import argparse
import os
import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from flhelpers.config import ExperimentConfig, benchmark_config
from flhelpers.fl.grid import run_grid
from flhelpers.results import atomic_write_text, finished_metrics, is_finished, read_json, run_dir
from flhelpers.results.tables import to_markdown
from flhelpers_lab.lfighter_record import LFighterRecords, read_record, record_path
from flhelpers_lab.store import reference_dir

__all__ = ["BENCHMARK", "COPYABLE", "MISS_KINDS", "RECORDER", "SEEDS", "copy_reference_runs", "main", "miss_kind",
           "run_study", "study_configs", "study_dir", "study_rounds", "study_summary", "summarize"]

BENCHMARK = "mnist-extreme"
SEEDS = (0, 1, 2, 3)
REMEDY = {"split_by_own_top": True}
MISS_KINDS = ("source", "many", "target", "own")
#: one cluster of a record's ``attacker_company``: ``label:nA+nH[tops]`` (tops space-separated)
_COMPANY = re.compile(r"(-?\d+):(\d+)A\+(\d+)H\[([^\]]*)\]")


def study_dir(profile: str = "medium") -> Path:
    """The committed study: ``results/reference/<profile>/lfighter-seeds`` (runs, ``records/``,
    ``rounds.csv``, ``summary.md``), written by :func:`main`."""
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


#: the files of a finished run that :func:`copy_reference_runs` copies (with its record)
COPYABLE = ("config.json", "metrics.csv", "summary.json", "timings.csv")
#: the study's recorder: every LFighter run computed gets its record (finished runs are read back)
RECORDER = LFighterRecords(("lfighter",), recompute_missing=False)


def copy_reference_runs(configs: Sequence[ExperimentConfig], out: str | Path,
                        reference: str | Path) -> list[ExperimentConfig]:
    """The runs of ``configs`` to compute or read back in ``out``. A run the store ``reference``
    finished *with* its record is copied in, record included; the paper rule's run of a seed that
    ``reference`` has not finished is left out with a note (it is the reference store's own run:
    ``python -m flhelpers_lab study compute --seeds`` computes it there, not twice)."""
    kept = []
    for cfg in configs:
        rid = cfg.run_id()
        target, ref, ref_record = run_dir(out, rid), run_dir(reference, rid), record_path(reference, rid)
        if not is_finished(target) and is_finished(ref) and ref_record.is_file():
            target.mkdir(parents=True, exist_ok=True)
            for name in COPYABLE:
                if (ref / name).is_file():
                    shutil.copy2(ref / name, target / name)
            record_path(out, rid).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ref_record, record_path(out, rid))
            print(f"seed {cfg.seed} {cfg.defense_kwargs or 'paper'} {rid}: copied from {reference}", flush=True)
        elif not is_finished(target) and not cfg.defense_kwargs and not is_finished(ref):
            print(f"seed {cfg.seed} paper {rid}: not in {reference} yet; compute it with python -m flhelpers_lab "
                  f"study compute --benchmarks {cfg.benchmark} --seeds {cfg.seed}, then rerun", flush=True)
            continue
        kept.append(cfg)
    return kept


def run_study(profile: str, out: str | Path, reference: str | Path, data_root: str | None = None,
              rules: Sequence[str] = ("paper", "split"), threads: int = 1, workers: int = 1,
              reverse: bool = False) -> pd.DataFrame:
    """Compute the study's runs of ``rules`` (:func:`study_configs`) into ``out``: the copies and
    notes of :func:`copy_reference_runs`, then one grid (:func:`flhelpers.fl.grid.run_grid`, finished runs
    read back, unfinished ones resumed) with :data:`RECORDER`, ``threads`` torch threads per run. A
    run being computed holds ``runs/<run-id>.lock``, so a second process (``reverse``: the plan last
    run first) can share the plan: it waits for that run, then reads it back."""
    configs = [c for c in study_configs(profile) if ("split" if c.defense_kwargs else "paper") in rules]
    todo = copy_reference_runs(list(reversed(configs)) if reverse else configs, out, reference)
    return run_grid(todo, data_root, out, threads=threads, workers=workers, recorder=RECORDER)


def _same_as_reference(out: Path, reference: Path, rid: str) -> str:
    """Whether a recomputed run's metrics equal the reference store's (determinism check)."""
    mine, ref = run_dir(out, rid) / "metrics.csv", run_dir(reference, rid) / "metrics.csv"
    if not (mine.is_file() and ref.is_file()):
        return "n/a"
    return "identical" if mine.read_bytes() == ref.read_bytes() else "DIFFERENT"


def _fedavg_src_acc(reference: Path, profile: str, seed: int, ratio: float) -> float:
    """Src-Acc (%, last-10 mean) of the reference store's FedAvg run of ``seed`` at ``ratio``; NaN if absent."""
    cfg = benchmark_config(BENCHMARK, profile, defense="fedavg", attacker_ratio=ratio, seed=seed)
    path = run_dir(reference, cfg.run_id())
    return 100 * read_json(path / "summary.json")["source_accuracy"] if is_finished(path) else float("nan")


def summarize(profile: str, out: str | Path, reference: str | Path) -> str:
    """Write ``rounds.csv`` (:func:`study_rounds`) and ``summary.md`` (:func:`study_summary` per run, whether
    its metrics equal the reference store's, FedAvg's Src-Acc of the same seed, and the means over the
    seeds) into ``out``; returns the summary's text."""
    out, reference = Path(out), Path(reference)
    configs = study_configs(profile)
    rounds = study_rounds(out, configs)
    if rounds.empty:
        return "no finished run yet\n"
    rounds.to_csv(out / "rounds.csv", index=False)
    summary = study_summary(rounds)
    summary["metrics_vs_reference"] = [_same_as_reference(out, reference, rid) for rid in summary["run_id"]]
    for ratio, name in ((0.0, "fedavg_0_src_acc"), (0.4, "fedavg_40_src_acc")):
        summary[name] = [_fedavg_src_acc(reference, profile, int(seed), ratio) for seed in summary["seed"]]
    means = summary.groupby("rule", sort=False)[["src_acc", "asr", "all_acc", "tpr", "fpr", "fedavg_0_src_acc",
                                                  "fedavg_40_src_acc"]].agg(["mean", "std"])
    means.columns = [f"{a} {'sd' if b == 'std' else b}" for a, b in means.columns]
    means.insert(0, "seeds", summary.groupby("rule", sort=False)["seed"].apply(lambda x: " ".join(map(str, sorted(x)))))
    summary = summary.sort_values(["rule", "seed"], key=lambda c: c.map({"paper": 0, "split": 1}) if c.name == "rule" else c)
    text = ("# LFighter on MNIST-Extreme across seeds: when Procedure 2 misses the attackers\n\n"
            "Written by `python -m flhelpers_lab study lfighter-seeds` (module "
            "`flhelpers_lab.investigations.lfighter_seeds`). "
            "MNIST-Extreme at the `medium` structure (100 peers, one class each, 80 rounds), 40 % attackers "
            "(4 of the 10 class-7 holders flip 7 -> 1). `rule`: `paper` is LFighter's Procedure 2, `split` "
            "the option `split_by_own_top` (clusters split by their members' own largest neuron; not the "
            "paper's rule). Src-Acc, ASR, All-Acc: last-10 means (%); TPR, FPR: means over all rounds (%). "
            "`missed_rounds`: rounds with TPR < 1; `missed_before_learnt`: of those, rounds whose starting "
            "model had Src-Acc below 50 %; `missed_with_*`: whom the missed attackers were clustered with "
            "(`source`: the honest class-7 peers; `many`: a cluster of several classes; `target`: the "
            "class-1 peers; `own`: attackers only); `fedavg_0_src_acc` / `fedavg_40_src_acc`: FedAvg's Src-Acc "
            "at 0 % and 40 % attackers for the same seed (the reference store's runs). `rounds.csv` has every round.\n\n"
            + to_markdown(summary.drop(columns=["run_id"]).set_index("rule"), digits=1)
            + "\n\nOver the seeds (sample sd):\n\n" + to_markdown(means, digits=1) + "\n")
    atomic_write_text(out / "summary.md", text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flhelpers_lab study lfighter-seeds [--out DIR] [--reverse] [--summarize]``: compute the
    study (:func:`run_study`) and write its summary (:func:`summarize`); ``--summarize`` only writes
    ``rounds.csv`` and ``summary.md``."""
    p = argparse.ArgumentParser(prog="python -m flhelpers_lab study lfighter-seeds", description=main.__doc__)
    p.add_argument("--profile", default="medium")
    p.add_argument("--out", default=None, help="default: results/reference/<profile>/lfighter-seeds")
    p.add_argument("--reference", default=None, help="default: results/reference/<profile>")
    p.add_argument("--data-root", default=os.environ.get("FLHELPERS_DATA"))
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--workers", type=int, default=1, help="processes computing runs side by side")
    p.add_argument("--reverse", action="store_true",
                   help="the plan last run first (a second process meets the first in the middle)")
    p.add_argument("--rules", nargs="+", choices=("paper", "split"), default=["paper", "split"],
                   help="run only these (e.g. split while `study compute --seeds` computes the paper's)")
    p.add_argument("--summarize", action="store_true", help="only write rounds.csv and summary.md")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else study_dir(args.profile)
    reference = Path(args.reference) if args.reference else reference_dir(args.profile)
    if not args.summarize:
        run_study(args.profile, out, reference, args.data_root, args.rules, args.threads, args.workers, args.reverse)
    pd.set_option("display.width", 200)
    print(summarize(args.profile, out, reference))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
