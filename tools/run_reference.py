"""Compute the committed reference runs of a profile (issue 11) into ``results/reference/<profile>``.

    python tools/run_reference.py --profile medium --benchmarks mnist-mild mnist-iid [--threads 1]

Runs the :func:`flhelpers_lab.paper.plan_grid` plan of each benchmark one after another, one torch
thread per process by default (the tests also run on one thread, so a test can recompute a
reference run's first rounds exactly). The FedAvg run at the capture ratio is computed through
:func:`flhelpers.analysis.gradients.capture_gradients`, so the notebooks find its gradient analyses too.
Finished runs are skipped and unfinished ones resume, so the script can be stopped and started
again. ``--only`` keeps the configurations whose defense is listed. A run being computed holds
``runs/<run-id>.lock``, so two processes can work through the same plan (one with
``--reverse``); a stopped process (Ctrl-C, SIGTERM) removes its lock, remove it by hand only
after a hard kill. LFighter runs write their per-round record
(:class:`flhelpers_lab.lfighter_record.LFighterRecorder`) to ``records/<run-id>.csv``.
``--set KEY=JSON`` overrides a field in every configuration and ``--ratios`` the attacker ratios,
e.g. the released LFighter: ``--benchmarks cifar10-mild --only lfighter --ratios 0.4 0
--set 'defense_kwargs={"variant": "released"}'``. ``--seeds`` runs the plan at other seeds, e.g. MNIST-Extreme's FedAvg and LFighter over seeds 1-3
(issue 19, section 3): ``--benchmarks mnist-extreme --seeds 1 2 3 --skip median``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

from flhelpers.analysis.capture import capture_gradients
from flhelpers_lab.lfighter_record import LFighterRecorder, record_path
from flhelpers.fl.engine import run_experiment
from flhelpers_lab.paper import capture_config, plan_grid
from flhelpers.results import claim_run, is_finished, run_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="medium")
    p.add_argument("--benchmarks", nargs="+", required=True)
    p.add_argument("--only", nargs="*", default=None, help="defenses to run (default: the whole plan)")
    p.add_argument("--skip", nargs="*", default=(), help="defenses to leave out")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the plan (default: 0; the "
                   "gradient capture is seed 0's, so other seeds are plain runs)")
    p.add_argument("--reverse", action="store_true", help="run each benchmark's plan last run first "
                   "(a second process on the same benchmarks then meets the first in the middle)")
    p.add_argument("--ratios", type=float, nargs="+", default=None,
                   help="attacker ratios (default: the plan's); with --only, the listed defenses run at each")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=JSON",
                   help="a configuration override applied to every run, e.g. "
                        "'defense_kwargs={\"variant\": \"released\"}' or local_epochs=3 (repeatable)")
    p.add_argument("--results-dir", default=None, help="default: results/reference/<profile>")
    p.add_argument("--data-root", default=os.environ.get("FLHELPERS_DATA"))
    args = p.parse_args()
    # SIGTERM (kill, a session's end) unwinds like Ctrl-C, so the lock of the run being computed goes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    torch.set_num_threads(args.threads)
    out = Path(args.results_dir or f"results/reference/{args.profile}")
    overrides = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    for b in args.benchmarks:
        capture_id = capture_config(b, args.profile).run_id()
        configs = plan_grid(b, args.profile, defenses=args.only or None, attacker_ratios=args.ratios,
                            seeds=tuple(args.seeds), **overrides)
        for cfg in reversed(configs) if args.reverse else configs:
            if (args.only is not None and cfg.defense not in args.only) or cfg.defense in args.skip:
                continue
            rid = cfg.run_id()
            tag = f"{b} {cfg.defense} {cfg.attacker_ratio:.0%} {rid}"
            if is_finished(run_dir(out, rid)):
                if rid == capture_id:  # the run is reused; only a missing capture is computed
                    capture_gradients(cfg, args.data_root, out, progress=False)
                print(f"{time.strftime('%H:%M:%S')} {tag} reused", flush=True)
                continue
            t0 = time.time()
            # the lock goes also when stopped (Ctrl-C, SIGTERM): the run resumes from its checkpoint later
            with claim_run(out, rid) as mine:
                if not mine:
                    print(f"{tag}: locked by another process", flush=True)
                    continue
                if rid == capture_id:
                    capture_gradients(cfg, args.data_root, out, progress=False)
                else:
                    record = (LFighterRecorder(record_path(out, rid), cfg.source_class, cfg.target_class)
                              if cfg.defense in ("lfighter", "lfighter-released") else None)
                    run_experiment(cfg, data_root=args.data_root, results_dir=out, progress=False,
                                   on_round=record)
            print(f"{time.strftime('%H:%M:%S')} {tag} {time.time() - t0:.0f} s", flush=True)

if __name__ == "__main__":
    main()
