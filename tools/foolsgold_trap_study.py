"""FoolsGold's self-locking state (issue 19, section 1): run the study and write its summary.

    python tools/foolsgold_trap_study.py [--out results/reference/medium/foolsgold-trap] [--reverse]

Runs :func:`flhelpers_lab.investigations.foolsgold_trap.study_configs` (the poisoned-start sweep k = 0, 2, 4, 8
for FoolsGold, FedAvg and LFighter on MNIST-Mild, and FoolsGold at lr 0.001 with 3 local epochs on
MNIST-iid and -Mild) into ``<out>/runs`` with a :class:`~flhelpers_lab.investigations.foolsgold_trap.WeightShareRecorder`
on every run (``<out>/shares/<run-id>.csv``). A finished k = 0 FedAvg or LFighter run of the reference
store (``--reference``, same run id) is copied instead of recomputed (it then has no weight record:
FedAvg's weights are the sample counts, LFighter's are in its own record). Runs resume; a run being
computed holds ``runs/<run-id>.lock``, so a second process with ``--reverse`` can share the plan.
``--summarize`` only writes ``rounds.csv`` (metrics and shares per run and round) and ``summary.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import torch

from flhelpers.fl.engine import run_experiment
from flhelpers.results import claim_run, is_finished, run_dir
from flhelpers_lab.investigations.foolsgold_trap import (WeightShareRecorder, share_path, study_configs, trap_rounds,
                                              trap_summary)
from flhelpers.results.tables import to_markdown

COPYABLE = ("config.json", "metrics.csv", "summary.json", "timings.csv")


def run_all(args: argparse.Namespace, out: Path) -> None:
    configs = study_configs(args.profile)
    for cfg in reversed(configs) if args.reverse else configs:
        rid = cfg.run_id()
        target = run_dir(out, rid)
        if is_finished(target):
            continue
        ref = run_dir(args.reference, rid)
        if cfg.defense != "foolsgold" and cfg.poisoned_rounds == 0 and is_finished(ref):
            target.mkdir(parents=True, exist_ok=True)
            for name in COPYABLE:
                if (ref / name).is_file():
                    shutil.copy2(ref / name, target / name)
            print(f"{cfg.defense} k={cfg.poisoned_rounds} {rid}: copied from {args.reference}", flush=True)
            continue
        t0 = time.time()
        with claim_run(out, rid) as mine:
            if not mine:
                print(f"{rid}: locked by another process", flush=True)
                continue
            recorder = WeightShareRecorder(share_path(out, rid), target / "config.json", cfg.source_class)
            run_experiment(cfg, data_root=args.data_root, results_dir=out, progress=False, on_round=recorder)
        print(f"{time.strftime('%H:%M:%S')} {cfg.benchmark} {cfg.defense} k={cfg.poisoned_rounds} lr={cfg.lr:g} "
              f"E={cfg.local_epochs} {rid}: {time.time() - t0:.0f} s", flush=True)


def summarize(args: argparse.Namespace, out: Path) -> str:
    rounds = trap_rounds(out, study_configs(args.profile))
    if rounds.empty:
        return "no finished run yet\n"
    rounds.to_csv(out / "rounds.csv", index=False)
    summary = trap_summary(rounds)
    text = ("# FoolsGold's self-locking state: poisoned-start sweep and weight shares\n\n"
            "Written by `tools/foolsgold_trap_study.py` (module `flhelpers_lab.investigations.foolsgold_trap`). "
            "MNIST at the `medium` structure, 40 % attackers (7 -> 1), seed 0. `k`: poisoned-start rounds "
            "(the server applies the attackers' FedAvg). Src-Acc, ASR, All-Acc: last-10 means (%). "
            "`escaped_at`: first round from which Src-Acc stays above 50 %. Shares: mean share of the "
            "rule's weight held by the attackers and by the honest source holders (>= 1/C of their "
            "samples are 7s) over rounds t >= k.\n\n"
            + to_markdown(summary.drop(columns=["run_id"]).set_index("label"), digits=3) + "\n")
    (out / "summary.md").write_text(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="medium")
    p.add_argument("--out", default="results/reference/medium/foolsgold-trap")
    p.add_argument("--reference", default="results/reference/medium", help="store whose k = 0 runs are copied")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reverse", action="store_true")
    p.add_argument("--summarize", action="store_true", help="only write rounds.csv and summary.md")
    p.add_argument("--data-root", default=os.environ.get("FLHELPERS_DATA"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if not args.summarize:
        run_all(args, out)
    print(summarize(args, out))


if __name__ == "__main__":
    main()
