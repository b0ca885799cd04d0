"""Why CIFAR10 rounds exploded: the short last batch, its BatchNorm statistics, or the average?

    python -m flhelpers_lab study last-batch --rounds 3 --out results/reference/medium/last-batch

The committed 10,000-image CIFAR10-Mild FedAvg run without attack (run ``b8a7f63bb2e4349b``:
20 peers, Dirichlet 1, ResNet18, batch 32, SGD lr 0.01, momentum 0.9, weight decay 5e-4, 1 local
epoch, the short last batch trained on) had test losses of 93.8, 144 and 134 in rounds 0, 2 and 6.
This study recomputes its first ``--rounds`` rounds (checked against the committed
``metrics.csv``) and, from each round's global model, trains the same round again under
counterfactual variants that change one thing at a time:

* ``short batch``: what the run did (each peer ends its epoch on a batch of ``n_k mod 32``);
* ``drop_last``: the short last batch is dropped (the authors' ``DataLoader(drop_last=True)``);
* ``short step, old stats``: the short batch's SGD step is taken, but BatchNorm's running
  statistics are put back to their values before it (so it cannot move them);
* ``stats only``: the short batch goes through the model in training mode (its statistics enter
  the running averages with BatchNorm's momentum 0.1) but its SGD step is not taken;
* ``short batch, recalibrated``: the ``short batch`` average with its BatchNorm running
  statistics recomputed on 5,000 training images (cumulative mean of batch statistics), the
  weights untouched: whether the averaged weights or only the averaged statistics are broken.

Per peer (``peers.csv``, round 0): the short batch's size and the local model's test loss in
evaluation mode with and without the short batch's statistics. Writes ``rounds.csv``,
``peers.csv`` and ``summary.md``. No run is stored: the variants train outside the engine's
round loop, from the run's own global model of each round (the committed run's metrics are read
from git, commit ``d6b1a5e``, where its folder still was).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from flhelpers.config import benchmark_config
from flhelpers.data.base import FLDataset
from flhelpers.fl.engine import aggregate_round, build_experiment
from flhelpers.fl.guards import apply_update, average_buffers
from flhelpers.fl.training import PeerData, batch_order, batches_per_epoch, make_optimizer, peer_update
from flhelpers.metrics import evaluate
from flhelpers.models import loss_fn
from flhelpers.params import flatten_buffers, flatten_params, load_flat_buffers, load_flat_params
from flhelpers.seeding import derive_seed
from flhelpers.results.tables import to_markdown

__all__ = ["COMMITTED", "VARIANTS", "bn_var_range", "describe", "local_update", "main", "reading", "recalibrate"]

COMMITTED = "b8a7f63bb2e4349b"
VARIANTS = ("short batch", "drop_last", "short step, old stats", "stats only", "short batch, recalibrated")


def local_update(model: nn.Module, cfg: Any, ds: FLDataset, peer: PeerData, gp: torch.Tensor, gb: torch.Tensor,
                 round_: int, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """PEER_UPDATE as :func:`flhelpers.fl.training.peer_update`, with the short batch handled by ``variant``."""
    load_flat_params(model, gp)
    load_flat_buffers(model, gb)
    model.train()
    opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    torch.manual_seed(derive_seed(cfg.seed, "dropout", round_, peer.peer_id))
    use = cfg.replace(drop_last=True) if variant == "drop_last" else cfg
    for epoch in range(cfg.local_epochs):
        order = batch_order(cfg, peer, round_, epoch)
        for step in range(batches_per_epoch(use, len(order))):
            pos = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            xb = ds.prepare(ds.train_x[peer.indices[pos]])
            yb = peer.labels[pos]
            short = len(pos) < cfg.batch_size
            if short and variant == "stats only":
                with torch.no_grad():
                    model(xb)  # running statistics move; no step
                continue
            saved = flatten_buffers(model) if short and variant == "short step, old stats" else None
            opt.zero_grad(set_to_none=True)
            loss_fn(cfg.loss, model(xb), yb).backward()
            opt.step()
            if saved is not None:
                load_flat_buffers(model, saved)
    return flatten_params(model) - gp, flatten_buffers(model)


@torch.no_grad()
def recalibrate(model: nn.Module, ds: FLDataset, n: int = 5000, batch: int = 100) -> None:
    """Recompute every BatchNorm's running statistics as the mean over batches of ``n`` training images."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(ds.train_y), generator=g)[:n]
    for s in range(0, n, batch):
        model(ds.prepare(ds.train_x[idx[s:s + batch]]))
    for m in bns:
        m.momentum = 0.1


def describe(model: nn.Module, ds: FLDataset, cfg: Any) -> dict[str, Any]:
    ev = evaluate(model, ds, cfg.loss, cfg.source_class, cfg.target_class, cfg.eval_batch_size)
    per_class = np.asarray(ev.class_accuracy, dtype=float)
    return {"test_loss": ev.test_loss, "accuracy": ev.accuracy, "source_accuracy": ev.source_accuracy,
            "classes_predicted": int((per_class > 0).sum()), "max_class_accuracy": float(per_class.max())}


def bn_var_range(model: nn.Module) -> tuple[float, float]:
    """Smallest and largest running variance over every BatchNorm channel."""
    v = torch.cat([m.running_var.flatten() for m in model.modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm)])
    return float(v.min()), float(v.max())


def reading(frame: pd.DataFrame, peers: pd.DataFrame) -> str:
    """What the table shows, with its numbers: which variant reproduces the collapsed rounds."""
    loss = frame.pivot(index="round", columns="variant", values="test_loss")
    fmt = lambda col: " / ".join(f"{v:.3g}" for v in loss[col])  # noqa: E731
    own = peers[peers.variant == "short batch"].sort_values("local_test_loss")
    worst, rest = own.tail(3), own.iloc[:-3]["local_test_loss"]
    return ("\n## What it shows\n\n"
            f"Test loss in rounds {', '.join(map(str, loss.index))}: `short batch` (the run) {fmt('short batch')}; "
            f"`short step, old stats` {fmt('short step, old stats')}; `stats only` {fmt('stats only')}; "
            f"`drop_last` {fmt('drop_last')}; `short batch, recalibrated` {fmt('short batch, recalibrated')}.\n\n"
            "* **The short batch's SGD step is the mechanism.** Taking that step with BatchNorm's running "
            "statistics put back reproduces every collapsed round; letting the short batch move the "
            "statistics without taking its step does not, and neither does dropping it.\n"
            "* **A tiny batch wrecks its peer's model.** The peers whose last batch holds "
            f"{', '.join(str(int(n)) for n in worst['short_batch'])} images end round 0 with local test losses of "
            f"{', '.join(f'{v:.2g}' for v in worst['local_test_loss'])} (the others {rest.min():.0f}-{rest.max():.0f}): "
            "BatchNorm normalises "
            "such a batch by the statistics of two images, and the step it takes is huge; the sample-weighted "
            "average carries it into the global model.\n"
            "* **The averaged weights are not lost, their statistics are.** Recomputing the averaged model's "
            "BatchNorm statistics on training images (weights untouched) brings every collapsed round back to "
            "a normal loss: after the step the running averages no longer describe the model's activations "
            "(largest recalibrated variance "
            f"{frame[frame.variant == 'short batch, recalibrated']['bn_var_max'].max():.0f} against at most "
            f"{frame[frame.variant == 'short batch']['bn_var_max'].max():.0f} stored).\n"
            "* So `drop_last` (the authors' `DataLoader(..., drop_last=True)`) is the fix, and every CIFAR10 "
            "profile uses it; a batch of one, which BatchNorm cannot train on at all, is refused before training.\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flhelpers_lab study last-batch [--rounds 3] [--out DIR]``: the study (module docstring)."""
    p = argparse.ArgumentParser(prog="python -m flhelpers_lab study last-batch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/reference/medium/last-batch")
    p.add_argument("--data-root", default=os.environ.get("FLHELPERS_DATA"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = benchmark_config("cifar10-mild", "medium", rounds=20, drop_last=False,
                           dataset_kwargs={"train_batches": 1})
    exp = build_experiment(cfg, args.data_root)
    ds, model = exp.dataset, exp.model
    # the committed run's metrics (its folder was replaced by the 50,000-image runs; read it from git)
    committed = pd.read_csv(io.StringIO(subprocess.run(
        ["git", "show", f"d6b1a5e:results/reference/medium/runs/{COMMITTED}/metrics.csv"],
        capture_output=True, text=True, check=True).stdout))
    eval_ds = ds.subset(None, 1000, seed=0)  # per-peer local models: 1,000 test images
    gp, gb = flatten_params(model), flatten_buffers(model)
    peer_ids = np.arange(cfg.num_peers)
    rows, peer_rows = [], []
    # the variant of peer_update must be peer_update itself for the run's own setting
    u_ref, _ = peer_update(model, cfg, ds, exp.peers[0], gp, gb, 0, exp.device)
    u_own, _ = local_update(model, cfg, ds, exp.peers[0], gp, gb, 0, "short batch")
    same = bool(torch.equal(u_ref, u_own))
    for r in range(args.rounds):
        next_state = None
        for variant in VARIANTS:
            if variant == "short batch, recalibrated":
                continue
            outs = [local_update(model, cfg, ds, peer, gp, gb, r, variant) for peer in exp.peers]
            if r == 0 and variant in ("short batch", "short step, old stats"):
                for peer, (u, b) in zip(exp.peers, outs):
                    load_flat_params(model, gp + u)
                    load_flat_buffers(model, b)
                    ev = evaluate(model, eval_ds, cfg.loss, cfg.source_class, cfg.target_class, 1000)
                    peer_rows.append({"peer": peer.peer_id, "variant": variant, "samples": peer.num_samples,
                                      "short_batch": peer.num_samples % cfg.batch_size,
                                      "local_test_loss": ev.test_loss, "local_accuracy": ev.accuracy})
            updates = torch.stack([u for u, _ in outs])
            buffers = torch.stack([b for _, b in outs])
            result, ctx = aggregate_round(exp, updates, peer_ids, gp, r)
            new_p, _ = apply_update(gp, result)
            new_b = average_buffers(gb, buffers, ctx.num_samples, result.accepted)
            load_flat_params(model, new_p)
            load_flat_buffers(model, new_b)
            lo, hi = bn_var_range(model)
            rows.append({"round": r, "variant": variant, **describe(model, ds, cfg), "bn_var_min": lo, "bn_var_max": hi})
            if variant == "short batch":
                next_state = (new_p, new_b)
                recalibrate(model, ds)
                lo, hi = bn_var_range(model)
                rows.append({"round": r, "variant": "short batch, recalibrated", **describe(model, ds, cfg),
                             "bn_var_min": lo, "bn_var_max": hi})
            print(r, variant, rows[-1], flush=True)
        gp, gb = next_state  # the run's own trajectory
    frame = pd.DataFrame(rows)
    peers = pd.DataFrame(peer_rows)
    ref = frame[frame.variant == "short batch"].set_index("round")
    diff = float((ref["test_loss"] - committed.set_index("round")["test_loss"].loc[ref.index]).abs().max())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "rounds.csv", index=False)
    peers.to_csv(out / "peers.csv", index=False)
    wide = peers.pivot(index="peer", columns="variant", values="local_test_loss")
    wide.insert(0, "short_batch", peers.groupby("peer")["short_batch"].first())
    text = (f"# The exploding CIFAR10 rounds: what the short last batch does\n\n"
            f"The committed 10,000-image CIFAR10-Mild FedAvg run without attack ({COMMITTED}), first "
            f"{args.rounds} rounds recomputed: largest difference of the `short batch` test loss from the "
            f"committed metrics.csv {diff:.2e}; this script's local loop equals `peer_update`: {same}.\n\n"
            f"Per round and variant (each from the run's own global model of that round; `rounds.csv`):\n\n"
            + to_markdown(frame.set_index("round"), digits=4)
            + "\n\nPer peer, round 0 (`peers.csv`): the short batch's size and the local model's test loss "
              "(1,000 test images, evaluation mode) with the short batch's statistics (`short batch`) and "
              "without them (`short step, old stats`):\n\n" + to_markdown(wide, digits=3) + "\n")
    text += reading(frame, peers)
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
