"""LFighter on MNIST-Extreme across seeds (issue 19, section 3): run the study and write its summary.

    python tools/lfighter_seeds_study.py [--out results/reference/medium/lfighter-seeds] [--reverse]
    python tools/lfighter_seeds_study.py --summarize

Runs :func:`flhelpers_lab.investigations.lfighter_seeds.study_configs` (LFighter, the paper's rule and with
``split_by_own_top``, seeds 0-3, MNIST-Extreme at ``medium``, 40 %) into ``<out>/runs``, each with
its per-round record (``<out>/records/<run-id>.csv``). A run of the reference store (``--reference``)
that has a record is copied with it instead of recomputed (``tools/run_reference.py --seeds 1 2 3``
writes those; one it has not finished is skipped, not computed twice); seed 0's reference run
predates the record and is recomputed here (its metrics must
equal the committed ones: ``--summarize`` says whether they do). Runs resume; a run being computed
holds ``runs/<run-id>.lock``, so a second process with ``--reverse`` can share the plan.
``--summarize`` only writes ``rounds.csv`` and ``summary.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from flhelpers.fl.engine import run_experiment
from flhelpers.config import benchmark_config
from flhelpers.results import claim_run, is_finished, read_json, run_dir
from flhelpers_lab.investigations.lfighter_seeds import BENCHMARK, study_configs, study_dir, study_rounds, study_summary
from flhelpers_lab.lfighter_record import LFighterRecorder, record_path
from flhelpers_lab.reference import reference_dir
from flhelpers.results.tables import to_markdown

COPYABLE = ("config.json", "metrics.csv", "summary.json", "timings.csv")


def run_all(args: argparse.Namespace, out: Path) -> None:
    configs = study_configs(args.profile)
    for cfg in reversed(configs) if args.reverse else configs:
        if ("split" if cfg.defense_kwargs else "paper") not in args.rules:
            continue
        rid = cfg.run_id()
        target = run_dir(out, rid)
        if is_finished(target):
            continue
        ref, ref_record = run_dir(args.reference, rid), record_path(args.reference, rid)
        if is_finished(ref) and ref_record.is_file():
            target.mkdir(parents=True, exist_ok=True)
            for name in COPYABLE:
                if (ref / name).is_file():
                    shutil.copy2(ref / name, target / name)
            record_path(out, rid).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ref_record, record_path(out, rid))
            print(f"seed {cfg.seed} {cfg.defense_kwargs or 'paper'} {rid}: copied from {args.reference}", flush=True)
            continue
        if not cfg.defense_kwargs and not is_finished(ref):  # the reference store's own run: computed there
            print(f"seed {cfg.seed} paper {rid}: not in {args.reference} yet; compute it with "
                  f"tools/run_reference.py --benchmarks {cfg.benchmark} --seeds {cfg.seed}, then rerun", flush=True)
            continue
        t0 = time.time()
        with claim_run(out, rid) as mine:
            if not mine:
                print(f"{rid}: locked by another process", flush=True)
                continue
            recorder = LFighterRecorder(record_path(out, rid), cfg.source_class, cfg.target_class)
            run_experiment(cfg, data_root=args.data_root, results_dir=out, progress=False, on_round=recorder)
        print(f"{time.strftime('%H:%M:%S')} seed {cfg.seed} {cfg.defense_kwargs or 'paper'} {rid}: "
              f"{time.time() - t0:.0f} s", flush=True)


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


def summarize(args: argparse.Namespace, out: Path) -> str:
    configs = study_configs(args.profile)
    rounds = study_rounds(out, configs)
    if rounds.empty:
        return "no finished run yet\n"
    rounds.to_csv(out / "rounds.csv", index=False)
    summary = study_summary(rounds)
    summary["metrics_vs_reference"] = [_same_as_reference(out, args.reference, rid) for rid in summary["run_id"]]
    for ratio, name in ((0.0, "fedavg_0_src_acc"), (0.4, "fedavg_40_src_acc")):
        summary[name] = [_fedavg_src_acc(args.reference, args.profile, int(seed), ratio) for seed in summary["seed"]]
    means = summary.groupby("rule", sort=False)[["src_acc", "asr", "all_acc", "tpr", "fpr", "fedavg_0_src_acc",
                                                  "fedavg_40_src_acc"]].agg(["mean", "std"])
    means.columns = [f"{a} {'sd' if b == 'std' else b}" for a, b in means.columns]
    means.insert(0, "seeds", summary.groupby("rule", sort=False)["seed"].apply(lambda x: " ".join(map(str, sorted(x)))))
    summary = summary.sort_values(["rule", "seed"], key=lambda c: c.map({"paper": 0, "split": 1}) if c.name == "rule" else c)
    text = ("# LFighter on MNIST-Extreme across seeds: when Procedure 2 misses the attackers\n\n"
            "Written by `tools/lfighter_seeds_study.py` (module `flhelpers_lab.investigations.lfighter_seeds`). "
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
    (out / "summary.md").write_text(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="medium")
    p.add_argument("--out", default=None, help="default: results/reference/<profile>/lfighter-seeds")
    p.add_argument("--reference", default=None, help="default: results/reference/<profile>")
    p.add_argument("--data-root", default=os.environ.get("FLHELPERS_DATA"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reverse", action="store_true")
    p.add_argument("--rules", nargs="+", choices=("paper", "split"), default=["paper", "split"],
                   help="run only these (e.g. split while run_reference.py --seeds computes the paper's)")
    p.add_argument("--summarize", action="store_true", help="only write rounds.csv and summary.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else study_dir(args.profile)
    args.reference = Path(args.reference) if args.reference else reference_dir(args.profile)
    if not args.summarize:
        run_all(args, out)
    pd.set_option("display.width", 200)
    print(summarize(args, out))


if __name__ == "__main__":
    main()
