"""The lab's command line: ``python -m flhelpers_lab reproduce|table3|study``.

    python -m flhelpers_lab reproduce --profile quick|medium|paper [--notebooks NAME ...] [--refresh-reference]
    python -m flhelpers_lab table3 [--profile medium] [--results-dir DIR | --refresh-reference]
    python -m flhelpers_lab study NAME [its own options]   (``study --list`` names them)

The library's own commands (``run``, ``grid``, ``list``) are ``python -m flhelpers``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from flhelpers.cli import exit_code
from flhelpers.config import PROFILES, ConfigError

#: ``study NAME``: the module whose ``main(argv)`` runs it
STUDIES: dict[str, str] = {
    "beyond": "flhelpers_lab.beyond",
    "compute": "flhelpers_lab.compute",
    "foolsgold-trap": "flhelpers_lab.investigations.foolsgold_trap",
    "flame-swing": "flhelpers_lab.investigations.flame_swing",
    "lfighter-seeds": "flhelpers_lab.investigations.lfighter_seeds",
    "lfighter-variants": "flhelpers_lab.investigations.lfighter_variants",
    "lfighter-extreme": "flhelpers_lab.investigations.lfighter_extreme",
    "last-batch": "flhelpers_lab.investigations.last_batch",
    "gpu-paper-cifar": "flhelpers_lab.investigations.gpu_paper_cifar",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flhelpers_lab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run the benchmark notebooks headless with papermill")
    rep.add_argument("--profile", default="quick", choices=PROFILES)
    rep.add_argument("--notebooks", nargs="*", default=None, help="names, e.g. MNIST IMDB (default: all)")
    rep.add_argument("--results-dir", default=None,
                     help="default: results/, or results/medium/ at medium (seeded from the committed runs "
                          "of results/reference/medium/, which it never writes)")
    rep.add_argument("--refresh-reference", action="store_true",
                     help="medium only: redraw into the committed store results/reference/medium/ itself "
                          "(rewrites tracked files; for maintainers)")
    rep.add_argument("--force", action="store_true", help="recompute every run even where a finished one exists")
    rep.add_argument("--only-finished", action="store_true",
                     help="draw only the runs the store has finished; list and leave out the others "
                          "instead of computing them (the default at medium)")
    rep.add_argument("--compute-missing", action="store_true",
                     help="medium: compute the runs the store lacks (hours each) instead of leaving them out")
    rep.add_argument("--data-root", default=None)
    rep.add_argument("--device", default="cpu")
    t3 = sub.add_parser("table3", help="write table3.csv/.md: the journal's Table 3 beside this store's runs")
    t3.add_argument("--profile", default="medium", choices=PROFILES)
    t3.add_argument("--results-dir", default=None,
                    help="the store to read and write (default: read results/reference/medium/ at medium "
                         "and write into results/medium/, else results/)")
    t3.add_argument("--refresh-reference", action="store_true",
                    help="write the tables into the committed store results/reference/<profile>/ itself")
    study = sub.add_parser("study", help="run one study or investigation (its own options follow its name)")
    study.add_argument("name", nargs="?", help="one of: " + ", ".join(STUDIES))
    study.add_argument("--list", action="store_true", help="list the studies and exit")
    study.add_argument("rest", nargs=argparse.REMAINDER, help="the study's own options (NAME --help lists them)")
    return p


def cmd_table3(args: argparse.Namespace) -> int:
    """``table3``: write ``table3.csv`` and ``table3.md`` (reasons: ``docs/findings/table3.md``); print the latter."""
    from flhelpers_lab.store import table3_folders
    from flhelpers_lab.table3 import write_table3

    source, folder = table3_folders(args.profile, args.results_dir, args.refresh_reference)
    write_table3(source, args.profile, out_dir=folder)
    print((folder / "table3.md").read_text())
    print(f"written: {folder / 'table3.md'}, {folder / 'table3.csv'} (runs read from {source})")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from flhelpers_lab.reproduce import reproduce

    return reproduce(profile=args.profile, notebooks=args.notebooks, results_dir=args.results_dir,
                     data_root=args.data_root, device=args.device, force=args.force,
                     refresh_reference=args.refresh_reference, compute_missing=args.compute_missing,
                     parameters={"only_finished": True} if args.only_finished else None)


def cmd_study(args: argparse.Namespace) -> int:
    if args.list or not args.name:
        for name, module in STUDIES.items():
            doc = (importlib.import_module(module).__doc__ or "").strip().splitlines()
            print(f"{name:18s} {doc[0] if doc else ''}")
        return 0
    if args.name not in STUDIES:
        raise ConfigError(f"Unknown study {args.name!r}; known: {', '.join(STUDIES)} (study --list).")
    result = importlib.import_module(STUDIES[args.name]).main(args.rest)
    return int(result or 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"reproduce": lambda: cmd_reproduce(args), "table3": lambda: cmd_table3(args)}
    return exit_code(commands.get(args.command, lambda: cmd_study(args)))


if __name__ == "__main__":
    sys.exit(main())
