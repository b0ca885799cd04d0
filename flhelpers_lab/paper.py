"""The paper's study: what each benchmark notebook runs, and what it prints beside the paper.

:func:`default_plan` is the grid each benchmark notebook runs at a profile: the paper's full
grid (paper section 6.1) at ``paper``, Table 3's structure at ``medium``, a smaller one at
``quick`` (section comments say why); :func:`plan_grid` turns a plan into configurations, and
:func:`capture_config` names the run whose gradients a notebook analyses.
the paper's figures in words are :data:`flhelpers_lab.published.PAPER_FIGURE_READINGS`; :func:`paper_comparison` and
:func:`check_findings` set a grid's summaries beside the paper's Table 3 and findings;
:func:`write_benchmark_tables` writes a benchmark's tables. The paper's Table 3 itself, its rows
and the cells of a grid are :mod:`flhelpers_lab.table3`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from flhelpers.config import ExperimentConfig, benchmark_config
from flhelpers.defenses import PAPER_DEFENSES
from flhelpers.fl.grid import make_grid
from flhelpers.presets import PAPER_RATIOS
from flhelpers.results import is_finished, run_dir
from flhelpers.analysis.capture import capture_folder
from flhelpers.results.tables import metric_table, paper_order, pair_table, write_table
# PAPER_FIGURE_READINGS and TABLE3_BENCHMARKS are imported here for the notebooks too
from flhelpers_lab.published import (PAPER_FIGURE_READINGS, PAPER_TABLE3, RELEASED_LFIGHTER, ROW_TITLES,
                                     TABLE3_BENCHMARKS, TABLE3_ROWS)
from flhelpers_lab.table3 import cell_mean


@dataclass(frozen=True)
class GridPlan:
    """The defenses and attacker ratios a notebook runs for one benchmark at one profile.

    ``clean_defenses``: the defenses run at ratio 0 (``None``: all of ``defenses``); the quick
    profile runs only a few rules without attackers to save time.
    """

    defenses: tuple[str, ...]
    ratios: tuple[float, ...]
    note: str = ""
    clean_defenses: tuple[str, ...] | None = None


# Quick grids: without attackers only the rules whose clean behaviour the paper discusses. The
# attacked ratio is the capture ratio (so the gradient analyses reuse a grid run), except on
# MNIST-iid and MNIST-Mild: their grids attack at 40 % (Table 3's ratio, at which the notebooks
# check that LFighter holds) while their captures stay at 30 % (Figs 1 and 4), one
# extra FedAvg run each. MNIST-Mild's FedAvg and median at 40 % are also the Beyond notebook's
# flip runs, which it reuses.
_QUICK_PLANS: dict[str, GridPlan] = {
    "mnist-iid": GridPlan(tuple(PAPER_DEFENSES), (0.0, 0.4), "all 7 paper defenses at 40 %; FedAvg, "
                          "FoolsGold and LFighter also at 0 %", ("fedavg", "foolsgold", "lfighter")),
    "mnist-mild": GridPlan(("fedavg", "median", "foolsgold", "lfighter"), (0.0, 0.4),
                           "FedAvg, median, FoolsGold and LFighter at 40 %; FedAvg at 0 %", ("fedavg",)),
    "mnist-extreme": GridPlan(("fedavg", "median", "multi-krum", "foolsgold", "lfighter"), (0.0, 0.4),
                              "FedAvg, median, Multi-Krum, FoolsGold and LFighter at 40 % (2 of the 5 "
                              "source-class holders); FedAvg and LFighter also at 0 %", ("fedavg", "lfighter")),
    "cifar10-iid": GridPlan(("fedavg", "lfighter"), (0.3,), "FedAvg and LFighter at 30 %"),
    "cifar10-mild": GridPlan(("fedavg", "lfighter"), (0.0, 0.3), "FedAvg and LFighter at 30 %; FedAvg at 0 %",
                             ("fedavg",)),
    # Multi-Krum needs n > 2f + 2: with 10 peers it cannot run at 40 % (f = 4)
    "imdb": GridPlan(("fedavg", "median", "foolsgold", "lfighter"), (0.0, 0.4),
                     "FedAvg, median, FoolsGold and LFighter at 40 %; FedAvg at 0 %", ("fedavg",)),
}


# Medium grids: the committed reference results (results/reference/medium). The
# journal's Table 3 on its three benchmarks (FedAvg without attack, every Table 3 rule at 40 %),
# and FedAvg, the median and LFighter on MNIST-iid and MNIST-Extreme. CIFAR10-iid has no medium
# grid (Table 3 uses the Dirichlet split).
# Both LFighters run at 0 % too: what each costs without attackers (FPR, Src-Acc against FedAvg).
_CLEAN = ("fedavg", "lfighter", RELEASED_LFIGHTER)
_TABLE3_PLAN = GridPlan(TABLE3_ROWS, (0.0, 0.4), "the journal's Table 3: FedAvg and both LFighters at 0 %, "
                        "its six rules and the released LFighter at 40 %", _CLEAN)
_MEDIUM_PLANS: dict[str, GridPlan] = {
    "mnist-mild": _TABLE3_PLAN,
    "cifar10-mild": _TABLE3_PLAN,
    "imdb": _TABLE3_PLAN,
    "mnist-iid": GridPlan(("fedavg", "median", "lfighter", RELEASED_LFIGHTER), (0.0, 0.4), "FedAvg and both "
                          "LFighters at 0 %; FedAvg, median and both LFighters at 40 %", _CLEAN),
    "mnist-extreme": GridPlan(("fedavg", "median", "lfighter", RELEASED_LFIGHTER), (0.0, 0.4), "FedAvg at 0 %; "
                              "FedAvg, median and both LFighters at 40 % (4 of the 10 source-class holders)",
                              ("fedavg",)),
    # the iid CIFAR10 split beside Table 3's Dirichlet row, at the same 50,000-image budget
    "cifar10-iid": GridPlan(("fedavg", "lfighter", RELEASED_LFIGHTER), (0.0, 0.4), "FedAvg and the released "
                            "LFighter at 0 %; FedAvg and both LFighters at 40 %", ("fedavg", RELEASED_LFIGHTER)),
}


def has_plan(benchmark: str, profile: str) -> bool:
    """Whether ``benchmark`` has a grid at ``profile``."""
    key = benchmark.strip().lower()
    return profile == "paper" or key in {"quick": _QUICK_PLANS, "medium": _MEDIUM_PLANS}.get(profile, {})


def default_plan(benchmark: str, profile: str = "quick") -> GridPlan:
    """The grid of ``benchmark`` at ``profile``: every paper defense and ratio 0-50 % at ``paper``;
    Table 3's structure at ``medium``; a subset at ``quick`` that keeps the three notebooks within
    minutes on 2 CPU cores."""
    key = benchmark.strip().lower()
    if profile == "paper":
        return GridPlan(tuple(PAPER_DEFENSES), PAPER_RATIOS, "all paper defenses; ratios 0-50 %")
    if profile == "medium":
        if key not in _MEDIUM_PLANS:
            raise ValueError(f"No medium plan for benchmark {benchmark!r}; known: {', '.join(_MEDIUM_PLANS)}.")
        return _MEDIUM_PLANS[key]
    if profile != "quick":
        raise ValueError(f"Unknown profile {profile!r}; valid profiles: paper, medium, quick.")
    if key not in _QUICK_PLANS:
        raise ValueError(f"No quick plan for benchmark {benchmark!r}; known: {', '.join(_QUICK_PLANS)}.")
    return _QUICK_PLANS[key]


def plan_grid(benchmark: str, profile: str = "quick", defenses: Sequence[str] | None = None,
              attacker_ratios: Sequence[float] | None = None, seeds: Sequence[int] = (0,),
              **overrides: Any) -> list[ExperimentConfig]:
    """:func:`flhelpers.fl.grid.make_grid` over the plan of ``benchmark`` at ``profile``.

    ``defenses`` and ``attacker_ratios`` default to :func:`default_plan` (whose
    ``clean_defenses`` alone run at ratio 0 when ``defenses`` is not given).
    """
    plan = default_plan(benchmark, profile)
    return make_grid(benchmark, profile, defenses=plan.defenses if defenses is None else defenses,
                     attacker_ratios=plan.ratios if attacker_ratios is None else attacker_ratios, seeds=seeds,
                     clean_defenses=plan.clean_defenses if defenses is None else None, **overrides)


# ------------------------------------------------------------------ the paper's figures, and the comparisons

def paper_comparison(summaries: pd.DataFrame, paper_key: str, ratio: float | None = None) -> pd.DataFrame:
    """'This project vs the paper': Src-Acc and ASR (%) per defense, ours at ``ratio`` (default:
    the grid's highest) beside journal Table 3 at 40 % (``paper_key`` in ``mnist``, ``cifar10``,
    ``imdb``). The row ``fedavg-no-attack`` is FedAvg at 0 % where the grid has it."""
    if paper_key not in PAPER_TABLE3:
        raise ValueError(f"Unknown paper_key {paper_key!r}; valid: {', '.join(PAPER_TABLE3)}.")
    ratios = sorted(summaries["attacker_ratio"].unique())
    ratio = ratios[-1] if ratio is None else ratio
    rows = []
    paper = PAPER_TABLE3[paper_key]
    for d in paper_order(summaries["defense"]):
        sel = summaries[(summaries["defense"] == d) & np.isclose(summaries["attacker_ratio"], ratio)]
        rows.append((d, sel))
    clean = summaries[(summaries["defense"] == "fedavg") & np.isclose(summaries["attacker_ratio"], 0.0)]
    if len(clean):
        rows.insert(0, ("fedavg-no-attack", clean))
    out = []
    for key, sel in rows:
        name = ROW_TITLES.get(key, key)
        ours_src = 100 * pd.to_numeric(sel["source_accuracy"]).mean() if len(sel) else np.nan
        ours_asr = 100 * pd.to_numeric(sel["attack_success_rate"]).mean() if len(sel) else np.nan
        p_src, p_asr = paper.get(key, (np.nan, np.nan))
        out.append({"defense": name, f"Src-Acc % (ours, {ratio:.0%})": ours_src, "Src-Acc % (paper, 40%)": p_src,
                    f"ASR % (ours, {ratio:.0%})": ours_asr, "ASR % (paper, 40%)": p_asr})
    return pd.DataFrame(out).set_index("defense")


def scale_note(summaries: pd.DataFrame, benchmark: str, profile: str) -> str:
    """A line to print next to a benchmark's numbers where its profile is too small to show the paper's
    finding (LFighter holding the source class): CIFAR10 at ``quick``, where ResNet18 barely leaves its
    random start. The accuracy it quotes is FedAvg's without attack in ``summaries`` (last-10 mean).
    Empty where the profile can show it."""
    if profile != "quick" or not benchmark.startswith("cifar10"):
        return ""
    part = summaries[(summaries["benchmark"] == benchmark) & (summaries["defense"] == "fedavg")]
    clean = part[np.isclose(part["attacker_ratio"].astype(float), 0.0)]
    acc = (f" (FedAvg without attack: All-Acc {100 * pd.to_numeric(clean['accuracy']).mean():.1f} %)"
           if len(clean) else "")
    return (f"**At this scale the numbers above cannot show the paper's finding.** After 4 rounds on 2,000 "
            f"images ResNet18 barely leaves its random start{acc}, so the source class is hardly learnt and "
            f"LFighter's and FedAvg's Src-Acc differ by noise. The finding is shown at `profile=\"medium\"` "
            f"(the paper's structure, 25 rounds), drawn from the committed runs.")


def check_findings(summaries: pd.DataFrame, margin: float = 0.10) -> pd.DataFrame:
    """The paper's qualitative findings, checked on a grid's summaries (values are fractions).

    Per benchmark, with ``hi`` the grid's highest attacker ratio and ``margin`` 10 points:

    * *the attack hurts FedAvg's source class*: FedAvg's Src-Acc at ``hi`` is at least
      ``margin`` below FedAvg's at 0 %;
    * *LFighter holds the source class*: LFighter's Src-Acc at ``hi`` is within ``margin`` of
      FedAvg's at 0 % (and not below FedAvg's at ``hi``);
    * *the median collapses on MNIST-Extreme*: the median's All-Acc below 30 % (paper: ~11 %);
    * *FoolsGold fails on MNIST-iid*: FoolsGold's Src-Acc at ``hi`` is at least ``2 * margin``
      below FedAvg's at 0 %.

    A finding whose runs are not in the grid is listed with ``holds = "not run"``.
    """
    _require_columns(summaries, ("benchmark", "defense", "attacker_ratio", "source_accuracy", "accuracy"))
    rows = []
    for b in sorted(summaries["benchmark"].unique()):
        part = summaries[summaries["benchmark"] == b]
        hi = float(part["attacker_ratio"].max())
        clean = cell_mean(summaries, b, "fedavg", 0.0, "source_accuracy")
        fed = cell_mean(summaries, b, "fedavg", hi, "source_accuracy")
        lf = cell_mean(summaries, b, "lfighter", hi, "source_accuracy")
        checks = [("the attack hurts FedAvg's source class", f"FedAvg Src-Acc {_pct(clean)} at 0 % -> "
                   f"{_pct(fed)} at {hi:.0%}", hi > 0 and clean - fed >= margin, (clean, fed)),
                  ("LFighter holds the source class", f"LFighter Src-Acc {_pct(lf)} at {hi:.0%} vs FedAvg "
                   f"{_pct(clean)} without attack", hi > 0 and lf >= clean - margin and lf >= fed, (clean, lf, fed))]
        if b == "mnist-extreme":
            acc = cell_mean(summaries, b, "median", hi, "accuracy")
            checks.append(("the median collapses on MNIST-Extreme", f"median All-Acc {_pct(acc)} at {hi:.0%}",
                           acc < 0.30, (acc,)))
        if b == "mnist-iid":
            fg = cell_mean(summaries, b, "foolsgold", hi, "source_accuracy")
            checks.append(("FoolsGold fails on MNIST-iid", f"FoolsGold Src-Acc {_pct(fg)} at {hi:.0%} vs FedAvg "
                           f"{_pct(clean)} without attack", clean - fg >= 2 * margin, (clean, fg)))
        for finding, ours, ok, needed in checks:
            ran = all(np.isfinite(v) for v in needed) and hi > 0
            rows.append({"benchmark": b, "finding": finding, "this project": ours if ran else "n/a",
                         "holds": ("yes" if ok else "no") if ran else "not run"})
    return pd.DataFrame(rows)


def _pct(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{100 * v:.1f} %"


def _require_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"Missing columns {missing}; pass the summaries returned by run_grid.")


def capture_ratio(benchmark: str, profile: str = "quick") -> float:
    """The attacker ratio of the gradient analyses (sections 1-3): 30 % as in the paper's Figs
    1-5; 40 % on MNIST-Extreme (Fig 6: 4 of the 10 source-class peers) and on IMDB (the ratio
    of the journal's Table 3; the paper shows no IMDB gradients). At ``medium`` always 40 %, the
    ratio of its grid, so the captured run is the grid's FedAvg run."""
    if profile == "medium":
        return 0.4
    return 0.4 if benchmark.strip().lower() in ("mnist-extreme", "imdb") else 0.3


def capture_config(benchmark: str, profile: str = "quick", seed: int = 0, **overrides: Any) -> ExperimentConfig:
    """The run whose gradients sections 1-3 analyse: FedAvg at :func:`capture_ratio`.

    It is also a member of the benchmark's grid when the grid has that ratio, so capturing it
    costs no extra run.
    """
    return benchmark_config(benchmark, profile, defense="fedavg", attacker_ratio=capture_ratio(benchmark, profile),
                            seed=seed, **overrides)


def capture_configs(benchmarks: Sequence[str], profile: str = "quick", seed: int = 0,
                    results_dir: str | Path = "results", only_finished: bool = False,
                    **overrides: Any) -> list[ExperimentConfig]:
    """The captured run (:func:`capture_config`) of each benchmark; with ``only_finished``, only
    those whose capture is already stored in ``results_dir`` (a capture is its run plus the analyses)."""
    configs = [capture_config(b, profile, seed=seed, **overrides) for b in benchmarks]
    if only_finished:
        configs = [c for c in configs if (capture_folder(c, results_dir) / "capture.json").is_file()]
    return configs


def notebook_plan(benchmarks: Sequence[str], profile: str = "quick", defenses: Sequence[str] | None = None,
                  attacker_ratios: Sequence[float] | None = None, seeds: Sequence[int] = (0,),
                  results_dir: str | Path = "results", only_finished: bool = False,
                  **overrides: Any) -> dict[str, list[ExperimentConfig]]:
    """The runs a benchmark notebook draws, by benchmark: :func:`plan_grid` of each of ``benchmarks``.

    With ``only_finished`` the runs not finished in ``results_dir`` are left out (each is
    printed), and so is a benchmark left with no run: this is how the committed ``medium``
    notebooks were executed while some runs were still computing.
    """
    plan = {b: plan_grid(b, profile, defenses, attacker_ratios, seeds, **overrides) for b in benchmarks}
    if not only_finished:
        return plan
    missing = [c for cs in plan.values() for c in cs if not is_finished(run_dir(results_dir, c.run_id()))]
    for c in missing:
        print(f"not finished yet, left out: {c.benchmark} {c.defense} at {c.attacker_ratio:.0%} ({c.run_id()})")
    kept = {b: [c for c in cs if c not in missing] for b, cs in plan.items()}
    return {b: cs for b, cs in kept.items() if cs}


def stability_ratio(summaries: pd.DataFrame) -> float:
    """The ratio of the stability figure: 30 % (the paper's Fig 13) when the grid has it, else its highest."""
    ratios = sorted(float(r) for r in summaries["attacker_ratio"].unique())
    return next((r for r in ratios if np.isclose(r, 0.3)), ratios[-1])


def plan_table(plan: dict[str, list[ExperimentConfig]]) -> pd.DataFrame:
    """What each benchmark's grid runs: peers, rounds, epochs, data, defenses, ratios, seeds, runs."""
    rows = []
    for b, configs in plan.items():
        c = configs[0]
        rows.append({"benchmark": b, "profile": c.profile, "peers": c.num_peers, "rounds": c.rounds,
                     "local epochs": c.local_epochs, "train samples": c.train_subset or "all",
                     "test samples": c.test_subset or "all",
                     "defenses": ", ".join(dict.fromkeys(x.defense for x in configs)),
                     "attacker ratios": ", ".join(f"{r:.0%}" for r in sorted({x.attacker_ratio for x in configs})),
                     "seeds": ", ".join(str(s) for s in sorted({x.seed for x in configs})),
                     "runs": len(configs)})
    return pd.DataFrame(rows).set_index("benchmark")


def write_benchmark_tables(summaries: pd.DataFrame, results_dir: str | Path, benchmark: str) -> dict[str, pd.DataFrame]:
    """Write one benchmark's tables (defenses x ratios) to ``<results_dir>/tables/<benchmark>_<metric>``.

    Metrics: test loss, All-Acc %, Src-Acc %, ASR %, Src-Acc CV (Table 3 of the paper), detection
    TPR % and FPR %, aggregation ms per round, and ``src_acc_asr`` ("Src-Acc % / ASR %" strings).
    Returns the tables by name.
    """
    part = summaries[summaries["benchmark"] == benchmark]
    if part.empty:
        raise ValueError(f"No runs of benchmark {benchmark!r} in the summaries.")
    spec = {"test_loss": 1.0, "accuracy": 100.0, "source_accuracy": 100.0, "attack_success_rate": 100.0,
            "source_accuracy_cv": 1.0, "detection_tpr": 100.0, "detection_fpr": 100.0,
            "aggregation_time_per_round": 1000.0}
    tables = {}
    for metric, scale in spec.items():
        table = metric_table(part, metric, scale=scale)
        digits = 3 if metric in ("source_accuracy_cv", "test_loss") else 1
        write_table(table, results_dir, f"{benchmark}_{metric}", digits=digits)
        tables[metric] = table
    pair = pair_table(tables["source_accuracy"], tables["attack_success_rate"])
    write_table(pair, results_dir, f"{benchmark}_src_acc_asr")
    tables["src_acc_asr"] = pair
    return tables


__all__ = ["GridPlan", "PAPER_FIGURE_READINGS", "PAPER_RATIOS", "TABLE3_BENCHMARKS", "capture_config",
           "capture_configs", "capture_ratio", "check_findings", "default_plan", "has_plan", "notebook_plan",
           "paper_comparison", "plan_grid", "plan_table", "scale_note", "stability_ratio", "write_benchmark_tables"]
