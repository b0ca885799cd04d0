"""The ``paper`` CIFAR10-Mild profile on a lent GPU, within a wall-clock budget (issue 18, section 3).

Prepare here (once; the data goes into the git-excluded ``.gpudata/``, which the device call carries)::

    python tools/gpu_paper_cifar.py --pack .gpudata

Then on the device (one call; ``$OUT`` comes back)::

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 tools/gpu_paper_cifar.py --data-root .gpudata \\
        --out $OUT --budget-s 480

Runs, on the vectorized backend, FedAvg without attack first, then LFighter at 40 % attackers,
at the ``paper`` profile (100 rounds of 3 local epochs, 20 peers, Dirichlet 1, ResNet18, batch 32,
SGD lr 0.01, momentum 0.9, weight decay 5e-4, ``drop_last``), each for as many rounds as its share
of ``--budget-s`` allows (stopped runs keep their per-round metrics; their checkpoints, 45 MB,
are too large to come back from the device, so a later lease starts them again). The device call
carries at most 64 MiB with the working tree, so the packed data is ``data_batch_1`` (10,000
training images) and 5,000 test images (the first 500 of each class): the runs say so in their id
(``dataset_kwargs={"train_batches": 1}``) and in ``config.json`` (``train_samples``,
``test_samples``). The results store is ``--store`` (default ``/tmp/flhelpers-gpu``); what comes
back (at most 8 files) is ``<out>/<run-id>/{config.json, metrics.csv, timings.csv}`` of each run and
``<out>/gpu_timings.json``: per run, its summary when finished, the per-round training,
aggregation and evaluation seconds (median over the rounds after the first), peers trained per
second, and the GPU's peak memory.

``--tiny`` runs the same code at a size the CPU finishes in a minute (the test of this script).
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from flhelpers.config import benchmark_config
from flhelpers.data.base import resolve_data_root
from flhelpers.data.cifar10 import CIFAR10_FOLDER
from flhelpers.fl.engine import run_experiment
from flhelpers.results import is_finished, run_dir


def pack(dest: Path, data_root: str | None, test_per_class: int = 500) -> None:
    """Copy ``data_batch_1`` and a ``test_batch`` of ``test_per_class`` images a class into ``dest``."""
    src = resolve_data_root(data_root) / CIFAR10_FOLDER
    out = dest / CIFAR10_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "data_batch_1", out / "data_batch_1")
    with open(src / "test_batch", "rb") as f:
        test = pickle.load(f, encoding="latin1")
    labels = np.asarray(test["labels"])
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:test_per_class] for c in range(10)]))
    with open(out / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "test subset", "labels": labels[keep].tolist(),
                     "data": np.asarray(test["data"])[keep]}, f)
    print(f"packed {out}: data_batch_1 and {len(keep)} test images")


def configs(device: str, tiny: bool) -> list[Any]:
    """FedAvg without attack, then LFighter at 40 %: the paper profile on the packed data."""
    common: dict[str, Any] = dict(backend="vectorized", device=device, dataset_kwargs={"train_batches": 1})
    if tiny:
        common.update(num_peers=4, train_subset=320, test_subset=32, rounds=2, local_epochs=1, batch_size=16)
    return [benchmark_config("cifar10-mild", "paper", defense="fedavg", attacker_ratio=0.0, **common),
            benchmark_config("cifar10-mild", "paper", defense="lfighter", attacker_ratio=0.4, **common)]


def rounds_done(out: Path, run_id: str) -> int:
    path = run_dir(out, run_id) / "timings.csv"
    return len(pd.read_csv(path)) if path.is_file() else 0


def run_within(cfg: Any, out: Path, data_root: str, budget_s: float) -> dict[str, Any]:
    """Run ``cfg`` for as many rounds as fit in ``budget_s`` (estimated from the rounds so far)."""
    t0 = time.perf_counter()
    rid = cfg.run_id()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    while not is_finished(run_dir(out, rid)):
        done = rounds_done(out, rid)
        left = budget_s - (time.perf_counter() - t0)
        if done == 0:
            step = 1  # the first round measures the cost of a round (and pays the warm-up)
        else:
            t = pd.read_csv(run_dir(out, rid) / "timings.csv")
            per_round = float(t[["train_time", "aggregation_time", "eval_time"]].sum(axis=1).iloc[-3:].median())
            step = int((left - 20) // max(per_round, 1e-3))  # 20 s for building the experiment again
        if step < 1:
            break
        stop = None if done + step >= cfg.rounds else done + step
        run_experiment(cfg, data_root=data_root, results_dir=out, progress=False, stop_after=stop)
        print(f"{cfg.defense} {cfg.attacker_ratio:.0%}: {rounds_done(out, rid)} of {cfg.rounds} rounds after "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    t = pd.read_csv(run_dir(out, rid) / "timings.csv")
    later = t.iloc[1:] if len(t) > 1 else t
    train = float(later["train_time"].median())
    return {"run_id": rid, "defense": cfg.defense, "attacker_ratio": cfg.attacker_ratio, "rounds_done": len(t),
            "rounds": cfg.rounds, "finished": is_finished(run_dir(out, rid)),
            "train_s_per_round": train, "aggregation_s_per_round": float(later["aggregation_time"].median()),
            "eval_s_per_round": float(later["eval_time"].median()),
            "first_round_s": float(t.iloc[0][["train_time", "aggregation_time", "eval_time"]].sum()),
            "peers_per_s": cfg.num_peers / train if train > 0 else None,
            "peak_gpu_memory_gib": (torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None),
            "wall_s": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack", default=None, help="only pack the data into this folder and stop")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="results/reference/paper")
    p.add_argument("--store", default="/tmp/flhelpers-gpu", help="the results store (checkpoints stay here)")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock seconds for both runs together")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="a CPU-sized run of the same code (the script's test)")
    args = p.parse_args()
    if args.pack:
        pack(Path(args.pack), args.data_root)
        return
    out, store = Path(args.out), Path(args.store)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
                              "torch": torch.__version__, "python": platform.python_version(), "runs": []}
    cfgs = configs(args.device, args.tiny)
    for k, cfg in enumerate(cfgs):
        share = (args.budget_s - (time.perf_counter() - start)) / (len(cfgs) - k)
        entry = run_within(cfg, store, args.data_root, share)
        src, dst = run_dir(store, cfg.run_id()), out / cfg.run_id()
        dst.mkdir(exist_ok=True)
        for name in ("config.json", "metrics.csv", "timings.csv"):
            if (src / name).is_file():
                shutil.copyfile(src / name, dst / name)
        if (src / "summary.json").is_file():
            entry["summary"] = json.loads((src / "summary.json").read_text())
        report["runs"].append(entry)
        (out / "gpu_timings.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
