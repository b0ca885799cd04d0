"""Command line: ``python -m flhelpers run|list|grid``.

    python -m flhelpers run --benchmark mnist-iid --defense lfighter --attacker-ratio 0.3 \\
        [--profile quick|paper] [--rounds N] [--seed S] [--data-root DIR] [--results-dir DIR] \\
        [--device cpu|cuda] [--backend auto|sequential|vectorized] [--force]
    python -m flhelpers list
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from flhelpers.config import BENCHMARKS, PROFILES, ConfigError, benchmark_config
from flhelpers.data.download import DataCorruptError


def _parse_kv(items: Sequence[str] | None) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"Expected KEY=VALUE, got {item!r} (e.g. --defense-arg distribution=extreme).")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flhelpers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one experiment")
    run.add_argument("--benchmark", required=True, help="one of: " + ", ".join(BENCHMARKS))
    run.add_argument("--defense", default="fedavg")
    run.add_argument("--attack", default=None, help="default: label_flip")
    run.add_argument("--attacker-ratio", type=float, default=0.0)
    run.add_argument("--profile", default="quick", choices=PROFILES)
    run.add_argument("--rounds", type=int)
    run.add_argument("--peers", type=int, dest="num_peers")
    run.add_argument("--local-epochs", type=int)
    run.add_argument("--fraction", type=float)
    run.add_argument("--eval-every", type=int)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--data-root", default=None)
    run.add_argument("--results-dir", default="results")
    run.add_argument("--device", default="cpu")
    run.add_argument("--backend", default=None, choices=("auto", "sequential", "vectorized"))
    run.add_argument("--defense-arg", action="append", metavar="KEY=VALUE",
                     help="keyword argument of the defense (JSON values), repeatable")
    run.add_argument("--attack-arg", action="append", metavar="KEY=VALUE")
    run.add_argument("--checkpoint-every", type=int, default=1)
    run.add_argument("--force", action="store_true", help="recompute even if a finished run exists")
    run.add_argument("--no-progress", action="store_true")
    sub.add_parser("list", help="list benchmarks, defenses, attacks, datasets and models")
    rep = sub.add_parser("reproduce", help="run the benchmark notebooks headless with papermill")
    rep.add_argument("--profile", default="quick", choices=PROFILES)
    rep.add_argument("--notebooks", nargs="*", default=None, help="names, e.g. MNIST IMDB (default: all)")
    rep.add_argument("--results-dir", default=None,
                     help="default: results, or results/reference/medium (the committed runs) at medium")
    rep.add_argument("--force", action="store_true", help="recompute every run even where a finished one exists")
    rep.add_argument("--data-root", default=None)
    rep.add_argument("--device", default="cpu")
    return p


def cmd_list() -> int:
    import flhelpers
    from flhelpers.registry import ATTACKS, DATASETS, DEFENSES, MODELS

    del flhelpers
    print("benchmarks:", ", ".join(BENCHMARKS))
    print("profiles:  ", ", ".join(PROFILES))
    print("defenses:  ", ", ".join(DEFENSES.names()))
    print("attacks:   ", ", ".join(ATTACKS.names()))
    print("datasets:  ", ", ".join(DATASETS.names()))
    print("models:    ", ", ".join(MODELS.names()))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from flhelpers.engine import run_experiment

    overrides = dict(rounds=args.rounds, num_peers=args.num_peers, local_epochs=args.local_epochs,
                     fraction=args.fraction, eval_every=args.eval_every, attack=args.attack,
                     backend=args.backend)
    cfg = benchmark_config(args.benchmark, args.profile, defense=args.defense,
                           attacker_ratio=args.attacker_ratio, seed=args.seed, device=args.device,
                           defense_kwargs=_parse_kv(args.defense_arg),
                           attack_kwargs=_parse_kv(args.attack_arg), **overrides)
    result = run_experiment(cfg, data_root=args.data_root, results_dir=args.results_dir,
                            force=args.force, progress=not args.no_progress,
                            checkpoint_every=args.checkpoint_every)
    s = result.summary
    print(f"run {result.run_id}{' (reused)' if result.reused else ''}: {cfg.benchmark} "
          f"{cfg.defense} attackers {cfg.attacker_ratio:.0%} ({cfg.profile} profile, {cfg.rounds} rounds)")
    for key in ("test_loss", "accuracy", "source_accuracy", "attack_success_rate",
                "source_accuracy_cv", "detection_tpr", "detection_fpr", "train_time_per_round",
                "aggregation_time_per_round"):
        v = s.get(key)
        print(f"  {key:28s} {'n/a' if v is None else f'{v:.4f}'}")
    print(f"results: {result.path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            return cmd_list()
        if args.command == "reproduce":
            from flhelpers.reproduce import reproduce

            return reproduce(profile=args.profile, notebooks=args.notebooks,
                             results_dir=args.results_dir, data_root=args.data_root,
                             device=args.device, force=args.force)
        return cmd_run(args)
    except (ConfigError, ValueError, FileNotFoundError, DataCorruptError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
