"""The ``paper`` CIFAR10-Mild profile on a lent GPU, within a wall-clock budget.

Prepare here (once; the data goes into the git-excluded ``.gpudata/``, which the device call carries)::

    python -m flhelpers_lab study gpu-paper-cifar --pack .gpudata

Then on the device (one call; ``$OUT`` comes back; the module needs only ``flhelpers``)::

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 -m flhelpers_lab.investigations.gpu_paper_cifar \\
        --data-root .gpudata --out $OUT --budget-s 480

The first line of output says what will run, on which device, for how long. ``--mode paper``
(default) runs FedAvg without attack first, then LFighter at 40 % attackers; ``--mode
lfighter-variants`` runs LFighter at 40 % in the paper's variant (the same run as the first mode's),
then in the authors' released one (``defense_kwargs={"variant": "released"}``). Both at the
``paper`` profile (100 rounds of 3 local epochs, 20 peers, Dirichlet 1, ResNet18, batch 32, SGD
lr 0.01, momentum 0.9, weight decay 5e-4, ``drop_last``), on the vectorized backend (the
sequential one if the vectorized check fails), each for as many rounds as its share of
``--budget-s`` allows.

Results come back whatever happens: after every round the rounds so far are written to
``<out>/<run-id>/`` and ``<out>/gpu_timings.json``, so a run cut off from outside still returns
them; an error ends only its run. Checkpoints (45 MB for ResNet18, too large to come back) are
written every ``--checkpoint-every`` rounds (default 25) and when a run stops for time, so a
second call on the same warm machine continues the runs from the store. The device call
carries at most 64 MiB with the working tree, so the packed data is ``data_batch_1`` (10,000
training images) and 5,000 test images (the first 500 of each class): the runs say so in their id
(``dataset_kwargs={"train_batches": 1}``) and in ``config.json`` (``train_samples``,
``test_samples``). The results store is ``--store`` (default ``/tmp/flhelpers-gpu``); what comes
back (at most 8 files) is ``<out>/<run-id>/{config.json, metrics.csv, timings.csv}`` of each run and
``<out>/gpu_timings.json``: per run, its summary when finished, the per-round training,
aggregation and evaluation seconds (median over the rounds after the first), peers trained per
second, the GPU's peak memory, the trainer and ``config.json``'s ``runtime`` (device, CUDA and
cuDNN versions, precision flags, deterministic mode, the vectorized chunk).

``--tiny`` runs the same code at a size the CPU finishes in a minute (the test of this module).
The runs are computed by ``run_experiment`` itself, not a grid: each stops when its share of the
budget is spent (``after_round``), which leaves it unfinished, and falls back to the sequential
backend when the vectorized check fails.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from flhelpers.config import benchmark_config
from flhelpers.data.base import resolve_data_root
from flhelpers.data.cifar10 import CIFAR10_FOLDER
from flhelpers.fl.engine import run_experiment
from flhelpers.fl.vectorized import VectorizedUnsupported
from flhelpers.results import atomic_write_text, csv_text, run_dir

__all__ = ["BudgetedRun", "MODES", "configs", "device_name", "label", "main", "pack", "peak_memory", "plan_line",
           "round_stats", "run_within"]


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


#: what each ``--mode`` runs (the first line of output says it again, with the budget)
MODES = {"paper": "FedAvg without attack, then LFighter at 40 %",
         "lfighter-variants": "LFighter at 40 %: the paper's variant, then the authors' released one"}


def configs(device: str, tiny: bool, mode: str = "paper") -> list[Any]:
    """The runs of ``mode`` at the ``paper`` profile of CIFAR10-Mild on the packed data.

    ``paper``: FedAvg without attack, then LFighter at 40 %. ``lfighter-variants``: LFighter at
    40 % in its default (paper) variant (``defense_kwargs={}``: the same run, and id, as the
    ``paper`` mode's), then ``{"variant": "released"}``; both at the paper's 3 local epochs.
    ``tiny`` shrinks every run to a size the CPU finishes in a minute (1 local epoch).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
    common: dict[str, Any] = dict(backend="vectorized", device=device, dataset_kwargs={"train_batches": 1})
    if tiny:
        common.update(num_peers=4, train_subset=320, test_subset=32, rounds=2, local_epochs=1, batch_size=16)
    if mode == "lfighter-variants":
        return [benchmark_config("cifar10-mild", "paper", defense="lfighter", attacker_ratio=0.4, **common),
                benchmark_config("cifar10-mild", "paper", defense="lfighter", attacker_ratio=0.4,
                                 defense_kwargs={"variant": "released"}, **common)]
    return [benchmark_config("cifar10-mild", "paper", defense="fedavg", attacker_ratio=0.0, **common),
            benchmark_config("cifar10-mild", "paper", defense="lfighter", attacker_ratio=0.4, **common)]


def label(cfg: Any) -> str:
    """``lfighter 40% (released)``: a run's rule, attacker share and variant, for the output."""
    variant = cfg.defense_kwargs.get("variant")
    return f"{cfg.defense} {cfg.attacker_ratio:.0%}" + (f" ({variant})" if variant else "")


def plan_line(mode: str, cfgs: list[Any], device: str, budget_s: float) -> str:
    """The first line of output: what will run, where, and for how long."""
    c = cfgs[0]
    runs = ", then ".join(label(cfg) for cfg in cfgs)
    return (f"gpu_paper_cifar --mode {mode} on {device_name(device)}: {runs}; cifar10-mild {c.profile} profile, "
            f"{c.num_peers} peers, {c.local_epochs} local epochs, up to {c.rounds} rounds each, {c.backend} backend "
            f"(sequential if its check fails); as many rounds as fit in {budget_s:.0f} s in all")


def device_name(device: str) -> str:
    """The GPU's name, or ``cpu``."""
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"


def round_stats(timings: pd.DataFrame, num_peers: int) -> dict[str, Any]:
    """Per-round seconds (medians over the rounds after the first, which pays the warm-up)."""
    if timings.empty:
        return {"rounds_done": 0}
    later = timings.iloc[1:] if len(timings) > 1 else timings
    train = float(later["train_time"].median())
    return {"rounds_done": int(len(timings)), "train_s_per_round": train,
            "aggregation_s_per_round": float(later["aggregation_time"].median()),
            "eval_s_per_round": float(later["eval_time"].median()),
            "first_round_s": float(timings.iloc[0][["train_time", "aggregation_time", "eval_time"]].sum()),
            "peers_per_s": num_peers / train if train > 0 else None}


class BudgetedRun:
    """One run for at most ``seconds``: after every round it writes the rounds so far (``metrics.csv``,
    ``timings.csv``, and ``config.json`` once) into ``<out>/<run-id>/`` and the report, then stops
    the run when the next round would not fit (estimated from the last three rounds). At least one
    round runs. A run killed from outside still leaves every finished round behind."""

    #: seconds kept free at the end of a run (the checkpoint written at a stop, the copies)
    RESERVE_S = 5.0

    def __init__(self, cfg: Any, out: Path, store: Path, entry: dict[str, Any], write_report: Any,
                 seconds: float) -> None:
        self.cfg, self.out, self.store, self.entry = cfg, out, store, entry
        self.write_report, self.seconds, self.t0 = write_report, seconds, time.perf_counter()

    def after_round(self, progress: Any) -> bool:
        """The engine's ``after_round``: write what is done, and say whether to stop."""
        rid = self.cfg.run_id()
        dst = self.out / rid
        dst.mkdir(parents=True, exist_ok=True)
        if not (dst / "config.json").is_file() and (run_dir(self.store, rid) / "config.json").is_file():
            shutil.copyfile(run_dir(self.store, rid) / "config.json", dst / "config.json")
        timings = pd.DataFrame(progress.timings)
        if progress.rows:
            atomic_write_text(dst / "metrics.csv", csv_text(pd.DataFrame(progress.rows)))
        atomic_write_text(dst / "timings.csv", csv_text(timings))
        elapsed = time.perf_counter() - self.t0
        self.entry.update(round_stats(timings, self.cfg.num_peers), wall_s=elapsed, **peak_memory())
        self.write_report()
        recent = timings[["train_time", "aggregation_time", "eval_time"]].sum(axis=1).iloc[-3:]
        return elapsed + 1.2 * float(recent.median()) + self.RESERVE_S > self.seconds


def peak_memory() -> dict[str, Any]:
    """The GPU's peak allocated memory so far (GiB; ``None`` without CUDA)."""
    return {"peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}


def run_within(cfg: Any, out: Path, store: Path, data_root: str | None, seconds: float, entry: dict[str, Any],
               write_report: Any, checkpoint_every: int) -> None:
    """Run ``cfg`` for as many rounds as fit in ``seconds`` (:class:`BudgetedRun`), filling ``entry``.

    The vectorized backend is tried first; if its check fails (:class:`VectorizedUnsupported`)
    the run falls back to the sequential backend (another run id), and ``entry["fallback"]``
    says why. Any other error ends this run only: ``entry["error"]`` holds it, and the rounds
    finished before it stay written.
    """
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    budget = BudgetedRun(cfg, out, store, entry, write_report, seconds)
    try:
        try:
            res = run_experiment(cfg, data_root=data_root, results_dir=store, progress=False,
                                 checkpoint_every=checkpoint_every, after_round=budget.after_round)
        except VectorizedUnsupported as exc:
            entry["fallback"] = f"sequential: the vectorized check failed ({str(exc)[:300]})"
            print(f"{label(cfg)}: {entry['fallback']}", flush=True)
            cfg = budget.cfg = cfg.replace(backend="sequential")
            res = run_experiment(cfg, data_root=data_root, results_dir=store, progress=False,
                                 checkpoint_every=checkpoint_every, after_round=budget.after_round)
    except Exception as exc:  # noqa: BLE001 - bring back what was done, whatever failed
        entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        entry["traceback"] = traceback.format_exc()[-3000:]
        print(f"{label(cfg)}: failed: {entry['error']}", flush=True)
        write_report()
        return
    src, dst = run_dir(store, cfg.run_id()), out / cfg.run_id()
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "metrics.csv", "timings.csv"):  # the finished (or reused) run's own files
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    timings = res.timings if res.timings is not None else pd.DataFrame()
    entry.update(round_stats(timings, cfg.num_peers), run_id=cfg.run_id(), finished=bool(res.summary),
                 wall_s=time.perf_counter() - budget.t0, **peak_memory())
    record = json.loads((src / "config.json").read_text()) if (src / "config.json").is_file() else {}
    entry.update(trainer=record.get("trainer"), runtime=record.get("runtime"))
    if res.summary:
        entry["summary"] = res.summary
    write_report()
    print(f"{label(cfg)}: {entry['rounds_done']} of {cfg.rounds} rounds after {entry['wall_s']:.0f} s", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flhelpers_lab study gpu-paper-cifar [--pack DIR | --mode MODE --out DIR --budget-s S]``:
    pack the data, or run the mode's runs within the budget (module docstring)."""
    p = argparse.ArgumentParser(prog="python -m flhelpers_lab.investigations.gpu_paper_cifar", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack", default=None, help="only pack the data into this folder and stop")
    modes = "; ".join(f"{k}: {v}" for k, v in MODES.items()).replace("%", "%%")  # argparse formats help with %
    p.add_argument("--mode", default="paper", choices=tuple(MODES), help=modes)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="results/reference/paper")
    p.add_argument("--store", default="/tmp/flhelpers-gpu", help="the results store (checkpoints stay here)")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock seconds for all runs together")
    p.add_argument("--checkpoint-every", type=int, default=25,
                   help="rounds between checkpoints (45 MB each for ResNet18; 0: none), besides one at a stop")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="a CPU-sized run of the same code (the module's test)")
    args = p.parse_args(argv)
    if args.pack:
        pack(Path(args.pack), args.data_root)
        return 0
    start = time.perf_counter()
    cfgs = configs(args.device, args.tiny, args.mode)
    print(plan_line(args.mode, cfgs, args.device, args.budget_s), flush=True)
    out, store = Path(args.out), Path(args.store)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"mode": args.mode, "device": device_name(args.device), "torch": torch.__version__,
                              "python": platform.python_version(), "budget_s": args.budget_s,
                              "runs": [{"run_id": cfg.run_id(), "defense": cfg.defense,
                                        "defense_kwargs": cfg.defense_kwargs, "attacker_ratio": cfg.attacker_ratio,
                                        "rounds": cfg.rounds, "rounds_done": 0, "finished": False} for cfg in cfgs]}

    def write_report() -> None:
        report["wall_s"] = time.perf_counter() - start
        atomic_write_text(out / "gpu_timings.json", json.dumps(report, indent=2, default=str) + "\n")

    write_report()
    for k, (cfg, entry) in enumerate(zip(cfgs, report["runs"])):
        share = (args.budget_s - (time.perf_counter() - start)) / (len(cfgs) - k)
        run_within(cfg, out, store, args.data_root, share, entry, write_report, args.checkpoint_every)
    write_report()
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
