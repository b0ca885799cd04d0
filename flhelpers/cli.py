"""Command line: ``python -m flhelpers run|grid|list``.

    python -m flhelpers run --benchmark mnist-iid --defense lfighter --attacker-ratio 0.3 \\
        [--profile quick|medium|paper] [--rounds N] [--seed S] [--set FIELD=VALUE ...] \\
        [--data-root DIR] [--results-dir DIR] [--device cpu|cuda] [--backend auto|sequential|vectorized] [--force]
    python -m flhelpers grid --benchmarks mnist-iid mnist-extreme --defenses fedavg lfighter \\
        --ratios 0 0.2 0.4 --seeds 0 1 2 [--profile ...] [--rounds N] [--set FIELD=VALUE ...] \\
        [--results-dir DIR] [--workers N | --executor ray [--address ADDR] [--cpus-per-run C] [--gpus-per-run G]]
    python -m flhelpers list

The paper's notebooks, Table 3 and the studies are the lab's commands (``python -m flhelpers_lab``).

The numbers ``run`` and ``grid`` print are each run's summary: the means of its last 10
evaluated rounds (all of them when it has fewer), as the paper reports; detection TPR / FPR
count every round.

``--set FIELD=VALUE`` (repeatable) sets any field of :class:`flhelpers.config.ExperimentConfig`
(``--set lr=0.01 --set batch_size=32 --set source_class=3 --set target_class=8
--set dirichlet_alpha=0.5 --set train_subset=null``). Values are JSON (a bare word is a string);
an unknown field is answered with the closest valid name, and every value goes through the same
validation as the Python API, before any training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from flhelpers.config import (BENCHMARKS, FIELD_SYNONYMS, PROFILES, ConfigError, ExperimentConfig, benchmark_config,
                              closest_field, validate_config)
from flhelpers.data.download import DataCorruptError
from flhelpers.results import check_output_file, check_results_dir

#: fields chosen by their own option, never by --set
_PRESET_FIELDS = {"benchmark": "--benchmark / --benchmarks", "profile": "--profile"}
#: the grid's axes: one value per run, given by the grid's own options
_GRID_AXES = {"defense": "--defenses", "attacker_ratio": "--ratios", "seed": "--seeds"}
#: the summary columns the grid command prints (the CSV holds every column)
_PRINTED = ("benchmark", "defense", "attacker_ratio", "seed", "accuracy", "source_accuracy",
            "attack_success_rate", "detection_tpr", "detection_fpr", "run_id")


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


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(ExperimentConfig)}


#: names people use for a field (``learning_rate`` for ``lr``), shared with the Python API's
#: unknown-field message (:func:`flhelpers.config.closest_field`)
_SYNONYMS = FIELD_SYNONYMS


def parse_settings(items: Sequence[str] | None, forbidden: dict[str, str] | None = None) -> dict[str, Any]:
    """``--set FIELD=VALUE`` items as config overrides, checked by name.

    ``FIELD`` is an :class:`ExperimentConfig` field (``batch-size`` is read as ``batch_size``);
    an unknown one raises a :class:`ConfigError` naming the closest valid field. ``VALUE`` is
    parsed as JSON, else kept as a string; an integer given for a float field becomes a float
    (so ``lr=1`` and ``lr=1.0`` are the same run). ``forbidden`` maps fields that have their own
    option to that option. The values themselves are checked later by
    :func:`flhelpers.config.validate_config`, as for the Python API.
    """
    types = _field_types()
    forbidden = {**_PRESET_FIELDS, **(forbidden or {})}
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects FIELD=VALUE, got {item!r} (e.g. --set lr=0.01).")
        raw_key, text = item.split("=", 1)
        key = raw_key.strip().replace("-", "_")
        if key not in types:
            raise ConfigError(f"Unknown configuration field {raw_key!r} in --set {item!r}. Did you mean "
                              f"{closest_field(key, list(types))!r}? Valid fields: {', '.join(sorted(types))}.")
        if key in forbidden:
            raise ConfigError(f"--set {key}=... is not allowed here: choose {key} with {forbidden[key]}.")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if types[key].startswith("float") and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if key in out and out[key] != value:
            raise ConfigError(f"--set {key} is given twice ({out[key]!r} and {value!r}); keep one.")
        out[key] = value
    return out


def _merge(flags: dict[str, Any], settings: dict[str, Any], options: dict[str, str]) -> dict[str, Any]:
    """Flags (``None`` = not given) and --set values as one dict; a field given by both is an error."""
    both = sorted(k for k, v in flags.items() if v is not None and k in settings)
    if both:
        k = both[0]
        raise ConfigError(f"{k} is given twice: by {options.get(k, k)} and by --set {k}=...; keep one.")
    return {**{k: v for k, v in flags.items() if v is not None}, **settings}


def _warn_unused(settings: dict[str, Any], partition: str) -> None:
    if "dirichlet_alpha" in settings and partition not in ("dirichlet", "mild"):
        print(f"warning: dirichlet_alpha has no effect with partition {partition!r}; add "
              f"--set partition=dirichlet to use it.", file=sys.stderr)


def _add_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", dest="settings",
                   help="any configuration field, JSON value, repeatable (e.g. --set lr=0.01 --set batch_size=32)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flhelpers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one experiment")
    run.add_argument("--benchmark", required=True, help="one of: " + ", ".join(BENCHMARKS))
    run.add_argument("--defense", default=None, help="default: fedavg")
    run.add_argument("--attack", default=None, help="default: label-flip (see `list` for the others)")
    run.add_argument("--attacker-ratio", type=float, default=None, help="default: 0")
    run.add_argument("--profile", default="quick", choices=PROFILES)
    run.add_argument("--rounds", type=int)
    run.add_argument("--peers", type=int, dest="num_peers")
    run.add_argument("--local-epochs", type=int)
    run.add_argument("--fraction", type=float)
    run.add_argument("--eval-every", type=int)
    run.add_argument("--seed", type=int, default=None, help="default: 0")
    run.add_argument("--data-root", default=None)
    run.add_argument("--results-dir", default="results")
    run.add_argument("--device", default=None, help="default: cpu")
    run.add_argument("--backend", default=None, choices=("auto", "sequential", "vectorized"))
    run.add_argument("--defense-arg", action="append", metavar="KEY=VALUE",
                     help="keyword argument of the defense (JSON values), repeatable")
    run.add_argument("--attack-arg", action="append", metavar="KEY=VALUE")
    _add_settings(run)
    run.add_argument("--checkpoint-every", type=int, default=1)
    run.add_argument("--force", action="store_true", help="recompute even if a finished run exists")
    run.add_argument("--no-progress", action="store_true")

    grid = sub.add_parser("grid", help="run a grid: benchmarks x defenses x attacker ratios x seeds",
                          description="Run every combination, skipping finished runs and resuming unfinished "
                                      "ones; print the summary table and write it as CSV.")
    grid.add_argument("--benchmarks", nargs="+", required=True, metavar="B", help="of: " + ", ".join(BENCHMARKS))
    grid.add_argument("--defenses", nargs="+", default=None, metavar="D",
                      help="default: the paper's seven defenses (flhelpers.defenses.PAPER_DEFENSES)")
    grid.add_argument("--ratios", nargs="+", type=float, default=None, metavar="R",
                      help="attacker ratios; default: the paper's 0 0.1 0.2 0.3 0.4 0.5")
    grid.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="S")
    grid.add_argument("--profile", default="quick", choices=PROFILES)
    grid.add_argument("--rounds", type=int)
    grid.add_argument("--peers", type=int, dest="num_peers")
    grid.add_argument("--device", default=None, help="default: cpu")
    _add_settings(grid)
    grid.add_argument("--data-root", default=None, help="on Ray: a path valid on every node (default: each "
                                                        "node's $FLHELPERS_DATA)")
    grid.add_argument("--results-dir", default="results")
    grid.add_argument("--summary-csv", default=None, help="default: <results-dir>/tables/grid_summary.csv")
    grid.add_argument("--workers", type=int, default=None, help="local processes (local executor; default 1)")
    grid.add_argument("--executor", default="local", choices=("local", "ray"))
    grid.add_argument("--address", default=None, help="Ray cluster address, e.g. 10.0.0.1:6379 "
                                                       "(default: a local Ray on this machine)")
    grid.add_argument("--cpus-per-run", type=float, default=None, help="Ray: CPUs per run (default 1)")
    grid.add_argument("--gpus-per-run", type=float, default=None, help="Ray: GPUs per run, fractions pack "
                                                                       "several runs on a GPU (default 0)")
    grid.add_argument("--threads", type=int, default=None,
                      help="torch threads per run (default 1 on every executor; on Ray, one per "
                           "--cpus-per-run CPU): numbers are identical for the same count")
    grid.add_argument("--max-retries", type=int, default=3, help="Ray: retries of a run whose worker died")
    grid.add_argument("--force", action="store_true", help="recompute every run even where a finished one exists")
    grid.add_argument("--no-progress", action="store_true")

    sub.add_parser("list", help="list benchmarks, defenses, attacks, datasets and models")
    return p


def summary_note() -> str:
    """The line printed above a run's or a grid's numbers: what they average."""
    from flhelpers.metrics.evaluation import SUMMARY_ROUNDS

    return (f"means of the last {SUMMARY_ROUNDS} evaluated rounds (all of them when a run has fewer); "
            f"detection TPR / FPR over every round")


def cmd_list() -> int:
    import flhelpers
    from flhelpers.registry import ATTACKS, DATASETS, DEFENSES, MODELS

    del flhelpers
    print("benchmarks:", ", ".join(BENCHMARKS))
    print("profiles:  ", ", ".join(PROFILES))
    print("defenses:  ", ", ".join(DEFENSES.names()))
    print("            lfighter variants: --defense-arg variant=paper (default: the paper's text) or "
          "variant=released (the authors' released code, which produced the published numbers)")
    print("attacks:   ", ", ".join(ATTACKS.names()))
    print("datasets:  ", ", ".join(DATASETS.names()))
    print("models:    ", ", ".join(MODELS.names()))
    return 0


def run_config(args: argparse.Namespace) -> ExperimentConfig:
    """The validated configuration of ``flhelpers run``'s arguments."""
    settings = parse_settings(args.settings)
    flags = dict(defense=args.defense, attack=args.attack, attacker_ratio=args.attacker_ratio, seed=args.seed,
                 device=args.device, rounds=args.rounds, num_peers=args.num_peers, local_epochs=args.local_epochs,
                 fraction=args.fraction, eval_every=args.eval_every, backend=args.backend,
                 defense_kwargs=_parse_kv(args.defense_arg) if args.defense_arg else None,
                 attack_kwargs=_parse_kv(args.attack_arg) if args.attack_arg else None)
    options = dict(defense="--defense", attack="--attack", attacker_ratio="--attacker-ratio", seed="--seed",
                   device="--device", rounds="--rounds", num_peers="--peers", local_epochs="--local-epochs",
                   fraction="--fraction", eval_every="--eval-every", backend="--backend",
                   defense_kwargs="--defense-arg", attack_kwargs="--attack-arg")
    values = {"defense": "fedavg", "attacker_ratio": 0.0, "seed": 0, "device": "cpu",
              **_merge(flags, settings, options)}
    cfg = benchmark_config(args.benchmark, args.profile).replace(**values)
    validate_config(cfg)
    _warn_unused(settings, cfg.partition)
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    from flhelpers.fl.engine import run_experiment

    cfg = run_config(args)
    check_results_dir(args.results_dir, writable=False, option="--results-dir")
    result = run_experiment(cfg, data_root=args.data_root, results_dir=args.results_dir,
                            force=args.force, progress=not args.no_progress,
                            checkpoint_every=args.checkpoint_every)
    s = result.summary
    print(f"run {result.run_id}{' (reused)' if result.reused else ''}: {cfg.benchmark} "
          f"{cfg.defense} attackers {cfg.attacker_ratio:.0%} ({cfg.profile} profile, {cfg.rounds} rounds)")
    print(f"  {summary_note()}")
    for key in ("test_loss", "accuracy", "source_accuracy", "attack_success_rate",
                "source_accuracy_cv", "detection_tpr", "detection_fpr", "train_time_per_round",
                "aggregation_time_per_round"):
        v = s.get(key)
        print(f"  {key:28s} {'n/a' if v is None else f'{v:.4f}'}")
    hostile = hostile_update_lines(s, cfg.rounds)
    for line in hostile:
        print(line)
    print(f"results: {result.path}")
    return 0


def hostile_update_lines(summary: dict[str, Any], rounds: int) -> list[str]:
    """The lines ``run`` prints when updates were non-finite or steps discarded (none otherwise).

    ``non_finite_updates`` counts the NaN/Inf updates the guard rejected over the run (a
    rejection counts as a detection, so a diverging run shows a detection rate that is no
    detection) and ``discarded_rounds`` the rounds whose aggregate was dropped as non-finite
    (:mod:`flhelpers.fl.guards`); in both cases the global model did not take those steps.
    """
    bad, discarded = int(summary.get("non_finite_updates") or 0), int(summary.get("discarded_rounds") or 0)
    if not bad and not discarded:
        return []
    lines = [f"  {'non_finite_updates':28s} {bad}", f"  {'discarded_rounds':28s} {discarded}"]
    lines.append(f"warning: {bad} update(s) were NaN/Inf (rejected before the rule and counted as detections, so "
                 f"detection_tpr/fpr above do not measure the defense) and {discarded} of {rounds} round(s) had "
                 f"their non-finite aggregate discarded (the model did not move): training diverged (lr too "
                 f"large?) or peers sent hostile updates.")
    return lines


def grid_configs(args: argparse.Namespace) -> list[ExperimentConfig]:
    """The validated configurations of ``flhelpers grid``'s arguments, in grid order."""
    from flhelpers.fl.grid import make_grid

    settings = parse_settings(args.settings, forbidden=_GRID_AXES)
    values = _merge(dict(rounds=args.rounds, num_peers=args.num_peers, device=args.device), settings,
                    dict(rounds="--rounds", num_peers="--peers", device="--device"))
    device = str(values.pop("device", "cpu"))
    cleared = {k for k, v in values.items() if v is None}  # e.g. --set train_subset=null
    if args.executor == "ray" and device.startswith("cuda"):
        build_device = "cpu"  # the driver may have no GPU: the nodes check it
    else:
        build_device = device
    configs: list[ExperimentConfig] = []
    for benchmark in dict.fromkeys(args.benchmarks):
        part = make_grid(benchmark, args.profile, defenses=args.defenses, attacker_ratios=args.ratios,
                         seeds=args.seeds, device=build_device, **values)
        if cleared:
            part = [c.replace(**{k: None for k in cleared}) for c in part]
            for c in part:
                validate_config(c)
        configs.extend(c.replace(device=device) if device != build_device else c for c in part)
        if part:
            _warn_unused(settings, part[0].partition)
    if not configs:
        raise ConfigError("The grid is empty: every combination was skipped (see the warnings above).")
    return configs


def grid_table(results_dir: str | Path, run_ids: Sequence[str]) -> Any:
    """The grid's runs as :func:`flhelpers.results.load_results` returns them, in grid order."""
    from flhelpers.results import load_results

    with warnings.catch_warnings():  # other runs of the store (unfinished, damaged) are not this grid's
        warnings.simplefilter("ignore")
        frame = load_results(results_dir)
    order = {rid: k for k, rid in enumerate(run_ids)}
    frame = frame[frame["run_id"].isin(order)] if len(frame) else frame
    return frame.sort_values("run_id", key=lambda s: s.map(order)).reset_index(drop=True)


def cmd_grid(args: argparse.Namespace) -> int:
    from flhelpers.fl.grid import run_grid

    ray = args.executor == "ray"
    if ray:
        from flhelpers.fl.ray_executor import require_ray

        require_ray()  # at once, before any configuration is built
        if args.workers is not None:
            raise ConfigError("--workers is for the local executor; with --executor ray use --cpus-per-run "
                              "and --gpus-per-run.")
    else:
        given = [o for o, v in (("--address", args.address), ("--cpus-per-run", args.cpus_per_run),
                                ("--gpus-per-run", args.gpus_per_run)) if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only with "
                              f"--executor ray (e.g. --executor ray {given[0]} ...).")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1 (local processes running the runs), got {args.workers}.")
    csv = Path(args.summary_csv) if args.summary_csv else Path(args.results_dir) / "tables" / "grid_summary.csv"
    check_output_file(csv, "--summary-csv")  # before any run is computed
    check_results_dir(args.results_dir, writable=False, option="--results-dir")
    configs = grid_configs(args)
    ray_kwargs = dict(executor="ray", address=args.address, cpus_per_run=args.cpus_per_run or 1.0,
                      gpus_per_run=args.gpus_per_run or 0.0, max_retries=args.max_retries) if ray else {}
    t0 = time.perf_counter()
    rows = run_grid(configs, data_root=args.data_root, results_dir=args.results_dir,
                    progress=not args.no_progress, workers=1 if args.workers is None else args.workers,
                    force=args.force,
                    threads=args.threads, **ray_kwargs)
    seconds = time.perf_counter() - t0
    table = grid_table(args.results_dir, list(rows["run_id"]))
    from flhelpers.results import atomic_write_csv

    atomic_write_csv(csv, table)
    computed = int((~rows["reused"]).sum())
    print(f"grid: {len(rows)} run{'' if len(rows) == 1 else 's'} ({computed} computed, {len(rows) - computed} reused) "
          f"in {seconds:.1f} s "
          f"on the {args.executor} executor")
    shown = table[[c for c in _PRINTED if c in table.columns]]
    print(summary_note())
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"summary: {csv}")
    return 0


def exit_code(command: Callable[[], int]) -> int:
    """Run ``command`` and return its exit status; bad input (a config, value, missing or damaged
    file) prints one ``error: ...`` line and gives 2, a failed run gives 1 (the runs finished before
    it are kept). The library's and the lab's command lines both answer this way."""
    try:
        return command()
    except (ConfigError, ValueError, FileNotFoundError, DataCorruptError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


#: the commands of the lab (``python -m flhelpers_lab``), which this library's command line does not have
LAB_COMMANDS = ("reproduce", "table3", "study")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LAB_COMMANDS:
        print(f"error: `{argv[0]}` is a command of the lab, not of the library: run "
              f"`python -m flhelpers_lab {' '.join(argv)}` (the `flhelpers-lab` script).", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    commands = {"list": lambda: cmd_list(), "grid": lambda: cmd_grid(args)}
    return exit_code(commands.get(args.command, lambda: cmd_run(args)))


if __name__ == "__main__":
    sys.exit(main())
