"""Where a committed reference run's rounds went: training, aggregation, evaluation, checkpointing.

For every finished run of ``--benchmarks`` in ``--results-dir`` (default the committed
``results/reference/medium``), from its ``timings.csv`` (per round: ``train_time``,
``aggregation_time``, ``eval_time``, each measured by the engine): the mean seconds per round and
each part's share of their sum. The checkpoint the engine writes after every round is not in
``timings.csv``, so it is measured here: a state holding the run's model (its parameters and
buffers, the bulk of every checkpoint; a rule's own state, e.g. FoolsGold's histories, comes on top)
saved and loaded ``--repeats`` times the engine's way (:func:`flhelpers.fl.checkpoint.save_checkpoint`,
into a temporary folder), and set beside the round time as its share.

The committed runs were computed with one torch thread each, two runs side by side on the 2 shared
cores, so their absolute seconds are upper bounds; the shares are what carries over.

Examples::

    python speed/round_shares.py --benchmarks cifar10-mild cifar10-iid
    python speed/round_shares.py --benchmarks cifar10-mild --json shares.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from flhelpers.fl.checkpoint import load_checkpoint, save_checkpoint
from flhelpers.models import build_model
from flhelpers.results import is_finished, read_json

PARTS = ("train_time", "aggregation_time", "eval_time")


def run_shares(results_dir: Path, benchmarks: list[str]) -> pd.DataFrame:
    """One row per finished run of ``benchmarks``: mean seconds per round of each part and their shares (%)."""
    rows = []
    for path in sorted((results_dir / "runs").iterdir()):
        if not path.is_dir() or not is_finished(path) or not (path / "timings.csv").is_file():
            continue
        cfg = read_json(path / "config.json")
        cfg = cfg.get("config", cfg)
        if cfg.get("benchmark") not in benchmarks:
            continue
        t = pd.read_csv(path / "timings.csv")
        means = t[list(PARTS)].mean()
        row = {"run_id": path.name, "benchmark": cfg["benchmark"], "defense": cfg["defense"],
               "attacker_ratio": cfg["attacker_ratio"], "rounds": len(t), "model": cfg["model"]}
        row.update({f"{p.removesuffix('_time')}_s": float(means[p]) for p in PARTS})
        total = float(means.sum())
        row.update({f"{p.removesuffix('_time')}_%": 100 * float(means[p]) / total for p in PARTS})
        row["round_s"] = total
        rows.append(row)
    return pd.DataFrame(rows)


def checkpoint_seconds(model_name: str, num_outputs: int, repeats: int) -> dict[str, float]:
    """Median seconds to save and to load a checkpoint holding ``model_name``'s global model."""
    model = build_model(model_name, num_outputs)
    state = {"run_id": "benchmark", "round": 0,
             "global_params": [p.detach().clone() for p in model.parameters()],
             "global_buffers": [b.detach().clone() for b in model.buffers()]}
    saves, loads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            t0 = time.perf_counter()
            save_checkpoint(Path(tmp), state)
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            load_checkpoint(Path(tmp), "benchmark")
            loads.append(time.perf_counter() - t0)
        size = (Path(tmp) / "checkpoint.pt").stat().st_size
    return {"save_s": statistics.median(saves), "load_s": statistics.median(loads), "bytes": float(size)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", default="results/reference/medium")
    p.add_argument("--benchmarks", nargs="+", default=["cifar10-mild", "cifar10-iid"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shares = run_shares(Path(args.results_dir), args.benchmarks)
    if shares.empty:
        raise SystemExit(f"No finished run of {args.benchmarks} in {args.results_dir}.")
    pd.set_option("display.width", 200)
    print(shares.drop(columns=["run_id", "model"]).round(2).to_string(index=False))
    ckpt = {}
    for model in sorted(set(shares["model"])):
        c = checkpoint_seconds(model, 10, args.repeats)
        round_s = float(shares.loc[shares["model"] == model, "round_s"].mean())
        c["share_of_round_%"] = 100 * c["save_s"] / (round_s + c["save_s"])
        ckpt[model] = c
        print(f"checkpoint of {model}: {c['bytes'] / 2**20:.1f} MiB, save {c['save_s']:.3f} s, load "
              f"{c['load_s']:.3f} s; saving is {c['share_of_round_%']:.2f} % of a mean round ({round_s:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": shares.to_dict(orient="records"), "checkpoint": ckpt},
                                              indent=2))


if __name__ == "__main__":
    main()
