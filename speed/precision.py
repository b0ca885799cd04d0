"""What ``precision="bfloat16"`` buys and costs: a local training step, float32 against bfloat16.

One peer's local step (forward, loss, backward, SGD step with momentum and weight decay; the
benchmark's model, batch size and optimizer) on real training images, timed ``--repeats`` times
per precision, interleaved (float32, bfloat16, float32, ...) so that other load on the machine
hits both alike; the median per precision and their ratio. Beside the speed, what it changes: the
relative difference ``||g_bf16 - g_fp32|| / ||g_fp32||`` of the first step's gradient from the
same start, and the loss of that step under each.

The option and its definition: :class:`flhelpers.config.ExperimentConfig` (``precision``),
:func:`flhelpers.fl.training.training_autocast`.

Examples::

    python speed/precision.py                          # CIFAR10's ResNet18, batch 32, one thread
    python speed/precision.py --benchmark mnist-mild --repeats 50 --json precision.json
    python speed/precision.py --device cuda --threads 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from flhelpers.config import PRECISIONS, benchmark_config
from flhelpers.data import load_dataset
from flhelpers.fl.training import make_optimizer, training_autocast
from flhelpers.models import build_model, loss_fn
from flhelpers.seeding import seed_everything


def measure(benchmark: str, repeats: int, device: str, data_root: str | None) -> dict:
    """Median step seconds per precision, their ratio, and the first step's gradient difference."""
    base = benchmark_config(benchmark, "medium", device=device)
    ds = load_dataset(base.dataset, data_root, **base.dataset_kwargs)
    dev = torch.device(device)
    x = ds.prepare(ds.train_x[: base.batch_size]).to(dev)
    y = ds.train_y[: base.batch_size].to(dev)
    seed_everything(base.seed)
    model = build_model(base.model, 1 if base.loss == "bce_with_logits" else ds.num_classes, **ds.meta).to(dev)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()

    def step(precision: str, take_step: bool = True) -> tuple[float, torch.Tensor]:
        cfg = base.replace(precision=precision)
        model.load_state_dict(start)
        opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
        opt.zero_grad(set_to_none=True)
        torch.manual_seed(base.seed)  # the same dropout masks under both precisions
        with training_autocast(cfg, dev):
            loss = loss_fn(cfg.loss, model(x), y)
        loss.backward()
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
        if take_step:
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach()), grad

    (l32, g32), (l16, g16) = step("float32", False), step("bfloat16", False)
    for p in PRECISIONS:  # warm-up
        step(p)
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(repeats):
        for p in PRECISIONS:
            t = time.perf_counter()
            step(p)
            times[p].append(time.perf_counter() - t)
    med = {p: statistics.median(v) for p, v in times.items()}
    return {"benchmark": benchmark, "model": base.model, "batch_size": base.batch_size, "device": device,
            "threads": torch.get_num_threads(), "repeats": repeats,
            "float32_step_s": med["float32"], "bfloat16_step_s": med["bfloat16"],
            "bfloat16_speedup": med["float32"] / med["bfloat16"],
            "loss_float32": l32, "loss_bfloat16": l16,
            "grad_rel_diff": float((g16 - g32).norm() / g32.norm())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", default="cifar10-mild")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", default=None, help="also write the row to this JSON file")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    row = measure(args.benchmark, args.repeats, args.device, args.data_root)
    print(f"{row['benchmark']} ({row['model']}, batch {row['batch_size']}, {row['device']}, "
          f"{row['threads']} thread(s), median of {row['repeats']}): float32 {1000 * row['float32_step_s']:.1f} ms, "
          f"bfloat16 {1000 * row['bfloat16_step_s']:.1f} ms a step ({row['bfloat16_speedup']:.2f}x); "
          f"first-step loss {row['loss_float32']:.4f} vs {row['loss_bfloat16']:.4f}, "
          f"gradient moved by {100 * row['grad_rel_diff']:.1f} % of its norm")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
