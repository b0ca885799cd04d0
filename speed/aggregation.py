"""Time every aggregation rule per call, and its peak extra memory, at the paper's sizes.

Sizes (random updates with a planted label-flipping signal on the output layer, 30 % of the
peers, so the detection rules take their normal path):

* ``mnist``: 100 updates of the MNIST CNN, ``D = 21,840`` (output layer ``fc2`` 50 -> 10 last);
* ``resnet18``: 20 updates of ResNet18 with a 10-class head, ``D = 11,181,642`` (``fc`` 512 -> 10 last).

Rules are looked up by name in ``flhelpers.registry.DEFENSES`` first, then imported from
their modules; a rule that is missing or fails to build is reported and skipped.

Memory: on the CPU, the peak of the process's resident set size (sampled every
millisecond by a thread while the rule runs) minus the resident size before the call;
freed heap memory is handed back to the OS (``malloc_trim``) before each call so that reused
memory is counted; on CUDA, ``torch.cuda.max_memory_allocated`` minus the memory allocated
before the call. Figures are for one call; the reported time is the median over the calls.

Examples::

    python speed/aggregation.py --sizes mnist
    python speed/aggregation.py --rules median,krum,repeated-median --repeats 5 --json out.json
    python speed/aggregation.py --device cuda --sizes mnist,resnet18
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flhelpers.defenses.base import AggregationContext, Defense  # noqa: E402
from flhelpers.params import ParamLayout  # noqa: E402

#: name -> (module, class names to try), the fallback when the registry lacks the name.
KNOWN_RULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "fedavg": ("flhelpers.defenses.fedavg", ("FedAvg",)),
    "median": ("flhelpers.defenses.median", ("Median",)),
    "trimmed-mean": ("flhelpers.defenses.trimmed_mean", ("TrimmedMean",)),
    "krum": ("flhelpers.defenses.krum", ("Krum",)),
    "multi-krum": ("flhelpers.defenses.krum", ("MultiKrum",)),
    "repeated-median": ("flhelpers.defenses.repeated_median", ("RepeatedMedian",)),
    "foolsgold": ("flhelpers.defenses.foolsgold", ("FoolsGold",)),
    "lfighter": ("flhelpers.defenses.lfighter", ("LFighter",)),
    "tolpegin": ("flhelpers.defenses.tolpegin", ("Tolpegin", "TolpeginPCA")),
    "flame": ("flhelpers.defenses.flame", ("FLAME", "Flame")),
}

#: Registry aliases tried before the canonical name.
ALIASES: dict[str, tuple[str, ...]] = {
    "trimmed-mean": ("trimmed-mean", "tmean", "trimmed"),
    "multi-krum": ("multi-krum", "mkrum", "multikrum"),
    "repeated-median": ("repeated-median", "rmedian", "repeated"),
    "foolsgold": ("foolsgold", "fools-gold", "fg"),
}


def _mnist_layout() -> ParamLayout:
    names = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
             "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
    shapes = ((10, 1, 5, 5), (10,), (20, 10, 5, 5), (20,), (50, 320), (50,), (10, 50), (10,))
    return _layout(names, shapes)


def _resnet18_layout() -> ParamLayout:
    # Everything before the head as one block: 11,181,642 - 5,130 = 11,176,512 values.
    return _layout(("body", "fc.weight", "fc.bias"), ((11_176_512,), (10, 512), (10,)))


def _layout(names: tuple[str, ...], shapes: tuple[tuple[int, ...], ...]) -> ParamLayout:
    offsets, off = [], 0
    for s in shapes:
        offsets.append(off)
        n = 1
        for x in s:
            n *= x
        off += n
    w, b = len(names) - 2, len(names) - 1
    n_w = shapes[w][0] * shapes[w][1]
    return ParamLayout(
        names=names, shapes=shapes, offsets=tuple(offsets),
        output_weight=slice(offsets[w], offsets[w] + n_w),
        output_bias=slice(offsets[b], offsets[b] + shapes[b][0]),
        num_outputs=shapes[w][0],
    )


SIZES: dict[str, tuple[int, Callable[[], ParamLayout]]] = {
    "mnist": (100, _mnist_layout),
    "resnet18": (20, _resnet18_layout),
}


def synthetic_round(num_peers: int, layout: ParamLayout, device: torch.device, seed: int = 0,
                    attacker_ratio: float = 0.3, lr: float = 0.01) -> tuple[torch.Tensor, AggregationContext]:
    """Random updates: a shared direction plus noise; attackers push source 7 down and target 1 up."""
    gen = torch.Generator().manual_seed(seed)
    d = layout.dim
    updates = torch.randn(1, d, generator=gen).mul_(1e-3).expand(num_peers, d).clone()
    updates.add_(torch.randn(num_peers, d, generator=gen).mul_(1e-3))
    f = int(attacker_ratio * num_peers)
    c, width = layout.num_outputs, layout.output_in_features
    w = layout.output_weight
    rows = updates[:, w].view(num_peers, c, width)
    source, target = 7 % c, 1 % c
    rows[:f, source] -= 5e-3
    rows[:f, target] += 5e-3
    updates[:, w] = rows.reshape(num_peers, -1)
    ctx = AggregationContext(
        layout=layout, num_classes=c, round=0,
        peer_ids=torch.arange(num_peers), num_samples=torch.full((num_peers,), 600),
        expected_attackers=f, lr=lr, global_params=torch.zeros(d, device=device), seed=seed,
    )
    return updates.to(device), ctx


def resolve_rule(name: str) -> tuple[Callable[[], Defense] | None, str]:
    """A factory for ``name`` and where it came from, or ``(None, reason)``."""
    try:
        import flhelpers  # noqa: F401  (registers the built-in rules)
        from flhelpers.registry import DEFENSES

        for alias in ALIASES.get(name, (name,)):
            if alias in DEFENSES:
                return DEFENSES.get(alias), f"registry:{alias}"
    except Exception as exc:  # the package may be half-built; fall back to the modules
        registry_error = f"registry unavailable ({type(exc).__name__})"
    else:
        registry_error = "not registered"
    if name not in KNOWN_RULES:
        return None, f"unknown rule ({registry_error})"
    module_name, classes = KNOWN_RULES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return None, f"missing module {module_name} ({exc})"
    for cls in classes:
        if hasattr(module, cls):
            return getattr(module, cls), f"{module_name}.{cls}"
    return None, f"no class {'/'.join(classes)} in {module_name}"


class PeakRSS:
    """Samples the resident set size in a thread; ``peak`` is the largest seen."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def release_free_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc), so that the
    resident size before a call does not hide memory the call will reuse."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class Record:
    rule: str
    size: str
    device: str
    num_peers: int
    dim: int
    seconds_median: float
    seconds_min: float
    calls: int
    peak_extra_mib: float
    accepted: int
    source: str


def measure(factory: Callable[[], Defense], updates: torch.Tensor, ctx: AggregationContext,
            repeats: int, warmup: int) -> tuple[list[float], float, int]:
    """Per-call seconds, peak extra memory (MiB) over the calls, and the accepted count.

    ``warmup`` untimed calls come first, except for a slow rule (first call over 5 s), whose
    first call is kept as a measurement; a rule whose first call takes over 30 s is called once.
    """
    rule = factory()
    cuda = updates.is_cuda
    times: list[float] = []
    peak_extra = 0.0
    accepted = -1
    calls = warmup + repeats
    i = 0
    while i < calls:
        release_free_memory()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            res = rule(updates, ctx)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            extra = torch.cuda.max_memory_allocated() - base
        else:
            with PeakRSS() as mem:
                base = mem.peak
                t0 = time.perf_counter()
                res = rule(updates, ctx)
                times.append(time.perf_counter() - t0)
            extra = mem.peak - base
        peak_extra = max(peak_extra, extra / 2**20)
        accepted = int(res.accepted.sum())
        del res
        if i == 0 and times[0] > 5:
            warmup = 0
            calls = 1 if times[0] > 30 else repeats
        i += 1
    return times[warmup:] if len(times) > warmup else times, peak_extra, accepted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", default=",".join(KNOWN_RULES), help="comma-separated rule names")
    parser.add_argument("--sizes", default="mnist,resnet18", help=f"comma-separated: {', '.join(SIZES)}")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cpu,cuda or auto (the CPU, plus CUDA if available)")
    parser.add_argument("--repeats", type=int, default=3, help="calls per rule; the median is reported")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed calls first (none for a rule whose first call takes over 5 s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's); 1 avoids OpenMP stalls "
                             "on a busy machine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the records to this file")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    devices = ["cpu", "cuda"] if args.device == "auto" else [d.strip() for d in args.device.split(",")]
    devices = [d for d in devices if d == "cpu" or (d == "cuda" and torch.cuda.is_available())]
    if args.device not in ("auto", "cpu") and "cuda" not in devices:
        print("CUDA is not available; timing on the CPU only.", file=sys.stderr)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        if s not in SIZES:
            parser.error(f"unknown size {s!r}; choose from {', '.join(SIZES)}")
    rules = [r.strip().lower() for r in args.rules.split(",") if r.strip()]

    factories: dict[str, tuple[Callable[[], Defense], str]] = {}
    for name in rules:
        factory, source = resolve_rule(name)
        if factory is None:
            print(f"skip {name}: {source}", file=sys.stderr)
        else:
            factories[name] = (factory, source)

    records: list[Record] = []
    header = (f"{'rule':<16} {'size':<9} {'device':<6} {'K':>4} {'D':>11} {'s/call':>9} {'min s':>9} "
              f"{'calls':>5} {'peak MiB':>9} {'acc':>4}")
    print(header)
    print("-" * len(header))
    for device in devices:
        for size in sizes:
            k, make_layout = SIZES[size]
            layout = make_layout()
            updates, ctx = synthetic_round(k, layout, torch.device(device), seed=args.seed)
            for name, (factory, source) in factories.items():
                try:
                    times, peak, accepted = measure(factory, updates, ctx, max(1, args.repeats),
                                                    max(0, args.warmup))
                except Exception as exc:  # report and go on with the other rules
                    print(f"{name:<16} {size:<9} {device:<6} failed: {type(exc).__name__}: {exc}",
                          file=sys.stderr)
                    continue
                rec = Record(name, size, device, k, layout.dim, statistics.median(times), min(times),
                             len(times), peak, accepted, source)
                records.append(rec)
                print(f"{rec.rule:<16} {rec.size:<9} {rec.device:<6} {rec.num_peers:>4} {rec.dim:>11,} "
                      f"{rec.seconds_median:>9.4f} {rec.seconds_min:>9.4f} {rec.calls:>5} "
                      f"{rec.peak_extra_mib:>9.1f} {rec.accepted:>4}", flush=True)
            del updates, ctx
            gc.collect()
    if args.json is not None:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
        args.json.write_text(json.dumps({"meta": meta, "records": [asdict(r) for r in records]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
