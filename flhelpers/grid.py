"""Grids of runs (defenses x attacker ratios x seeds), their tables, and the paper's numbers.

:func:`run_grid` runs a list of configurations one after another with a progress bar. A run
whose configuration already finished is read back, not recomputed, and an unfinished one
resumes from its checkpoint (:func:`flhelpers.engine.run_experiment`), so re-running a grid
only computes what is missing.

:func:`default_plan` is the grid each benchmark notebook runs at a profile: the paper's full
grid (PAPER.md section 1) at ``paper``, a smaller one at ``quick`` (section comments say why).
"""

from __future__ import annotations

import json
import multiprocessing
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from flhelpers.config import ConfigError, ExperimentConfig, benchmark_config, validate_config
from flhelpers.defenses import PAPER_DEFENSES
from flhelpers.results import atomic_write_text, is_finished, read_json, run_dir

#: the paper's attacker ratios (section 6.1)
PAPER_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
#: the columns of a run's summary that tables and figures use
SUMMARY_METRICS = ("test_loss", "accuracy", "source_accuracy", "attack_success_rate", "source_accuracy_cv",
                   "detection_tpr", "detection_fpr", "train_time_per_round", "aggregation_time_per_round")


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


# Quick grids: the attacked ratio is the capture ratio (so the gradient analyses reuse a grid
# run); without attackers only the rules whose clean behaviour the paper discusses.
_QUICK_PLANS: dict[str, GridPlan] = {
    "mnist-iid": GridPlan(tuple(PAPER_DEFENSES), (0.0, 0.3), "all 7 paper defenses at 30 %; FedAvg, "
                          "FoolsGold and LFighter also at 0 %", ("fedavg", "foolsgold", "lfighter")),
    "mnist-mild": GridPlan(("fedavg", "median", "foolsgold", "lfighter"), (0.0, 0.3),
                           "FedAvg, median, FoolsGold and LFighter at 30 %; FedAvg at 0 %", ("fedavg",)),
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


#: the rules of the journal's Table 3 (PAPER.md section 5), in its column order
TABLE3_DEFENSES = ("fedavg", "median", "trimmed-mean", "multi-krum", "foolsgold", "lfighter")

# Medium grids: the committed reference results (results/reference/medium, issue 11). The
# journal's Table 3 on its three benchmarks (FedAvg without attack, every Table 3 rule at 40 %),
# and FedAvg, the median and LFighter on MNIST-iid and MNIST-Extreme. CIFAR10-iid has no medium
# grid (Table 3 uses the Dirichlet split).
_TABLE3_PLAN = GridPlan(TABLE3_DEFENSES, (0.0, 0.4), "the journal's Table 3: FedAvg at 0 %, its six rules "
                        "at 40 %", ("fedavg",))
_MEDIUM_PLANS: dict[str, GridPlan] = {
    "mnist-mild": _TABLE3_PLAN,
    "cifar10-mild": _TABLE3_PLAN,
    "imdb": _TABLE3_PLAN,
    "mnist-iid": GridPlan(("fedavg", "median", "lfighter"), (0.0, 0.4), "FedAvg at 0 %; FedAvg, median and "
                          "LFighter at 40 %", ("fedavg",)),
    "mnist-extreme": GridPlan(("fedavg", "median", "lfighter"), (0.0, 0.4), "FedAvg at 0 %; FedAvg, median "
                              "and LFighter at 40 % (4 of the 10 source-class holders)", ("fedavg",)),
}


def has_plan(benchmark: str, profile: str) -> bool:
    """Whether ``benchmark`` has a grid at ``profile`` (the medium profile skips CIFAR10-iid)."""
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


def make_grid(benchmark: str, profile: str = "quick", defenses: Sequence[str] | None = None,
              attacker_ratios: Sequence[float] | None = None, seeds: Sequence[int] = (0,),
              **overrides: Any) -> list[ExperimentConfig]:
    """The configurations ``defenses x attacker_ratios x seeds`` of ``benchmark`` at ``profile``.

    ``defenses`` and ``attacker_ratios`` default to :func:`default_plan` (whose
    ``clean_defenses`` alone run at ratio 0 when ``defenses`` is not given); ``overrides``
    (e.g. ``rounds``, ``num_peers``; ``None`` values are ignored) apply to every configuration.
    A combination the rule cannot run (Multi-Krum needs ``n > 2f + 2``, so not at 50 %
    attackers) is left out with a warning that names it; any other invalid setting raises.
    """
    plan = default_plan(benchmark, profile)
    clean = plan.clean_defenses if defenses is None else None
    defenses = tuple(defenses) if defenses is not None else plan.defenses
    ratios = tuple(attacker_ratios) if attacker_ratios is not None else plan.ratios
    if not defenses or not ratios or not seeds:
        raise ValueError("A grid needs at least one defense, one attacker ratio and one seed.")
    configs, skipped = [], []
    for s in seeds:
        for r in ratios:
            for d in defenses:
                if clean is not None and r == 0 and d not in clean:
                    continue
                cfg = benchmark_config(benchmark, profile, defense=d, attacker_ratio=float(r), seed=int(s),
                                       **overrides)
                try:
                    validate_config(cfg)
                except ConfigError as exc:
                    if "cannot run with" not in str(exc):
                        raise
                    skipped.append(f"{d} at {float(r):.0%}")
                    continue
                configs.append(cfg)
    if skipped:
        warnings.warn(f"{benchmark}: skipped {', '.join(sorted(set(skipped)))}: the rule cannot run with that "
                      f"many expected attackers among the peers of a round (e.g. Krum needs n > 2f + 2).",
                      stacklevel=2)
    return configs


def _config_columns(cfg: ExperimentConfig) -> dict[str, Any]:
    return {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
            for k, v in cfg.to_dict().items()}


def _describe(cfg: ExperimentConfig) -> str:
    return f"{cfg.benchmark}, {cfg.defense}, attackers {cfg.attacker_ratio:.0%}, seed {cfg.seed}"


def _run_one(cfg: ExperimentConfig, data_root: str | Path | None, results_dir: str | Path, progress: bool,
             threads: int | None = None, force: bool = False) -> tuple[dict[str, Any], bool, float]:
    """One run of a grid (also the body of a worker process): (summary, reused, seconds).

    ``threads`` sets torch's thread count for the run and restores it afterwards.
    """
    from flhelpers.engine import run_experiment

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        res = run_experiment(cfg, data_root=data_root, results_dir=results_dir, progress=progress, force=force)
        return res.summary, res.reused, time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)


#: the executors of :func:`run_grid`
EXECUTORS = ("local", "ray")


def run_grid(configs: Iterable[ExperimentConfig], data_root: str | Path | None = None,
             results_dir: str | Path = "results", progress: bool = True,
             round_progress: bool = False, workers: int = 1, force: bool = False,
             executor: str = "local", address: str | None = None, cpus_per_run: float = 1.0,
             gpus_per_run: float = 0.0, threads: int | None = None, max_retries: int = 3,
             relay_every_s: float = 10.0) -> pd.DataFrame:
    """Run every configuration (reusing finished runs) and return one row of summary per run.

    Every configuration still to compute is validated before any training. ``progress`` shows
    the runs done and to do with an ETA (:class:`flhelpers.executors.GridProgress`);
    ``round_progress`` also a bar over each run's rounds (useful at the paper's scale, where one
    run takes hours; sequential only).

    Executors:

    * ``"local"``: this process, one run after another; ``workers > 1`` runs the runs still to
      compute in that many processes, each with ``cores // workers`` torch threads: on a small
      CPU two single-threaded runs side by side finish sooner than one after the other with two
      threads each.
    * ``"ray"``: one Ray task per run on the cluster at ``address`` (``None``: the Ray session
      of this process, else a new local Ray), reserving ``cpus_per_run`` CPUs and
      ``gpus_per_run`` GPUs (fractions pack several runs on one GPU); no shared filesystem is
      needed, a run whose worker dies is retried up to ``max_retries`` times from its last
      checkpoint (sent to the driver at most every ``relay_every_s`` seconds). See
      :mod:`flhelpers.ray_executor`.

    A run's numbers do not depend on the process or machine it ran in, but float sums do depend
    on the torch thread count: ``threads`` fixes it for every run (local or Ray; default: the
    process's count, ``cores // workers``, or ``max(1, int(cpus_per_run))`` on Ray), and runs
    computed with the same count are identical.

    Columns: every config field, every summary field (:func:`flhelpers.metrics.summarize`),
    ``run_id``, ``reused`` (read back rather than computed) and ``wall_time`` (seconds the run
    took). Rows keep the order of ``configs``; an error names the failing configuration, and the
    runs finished before it stay in the store. ``force`` recomputes every run, finished or not.
    """
    from flhelpers.executors import GridProgress, RunFailed

    configs = list(configs)
    ids = [c.run_id() for c in configs]
    if len(set(ids)) != len(ids):
        raise ValueError("The grid lists the same configuration twice; remove the duplicates.")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}.")
    if executor not in EXECUTORS:
        raise ValueError(f"Unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}.")
    if executor == "ray" and workers != 1:
        raise ValueError("workers is for the local executor; on Ray, cpus_per_run and gpus_per_run decide how "
                         "many runs share a node.")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}.")
    pending = [i for i, c in enumerate(configs) if force or not is_finished(run_dir(results_dir, ids[i]))]
    ray_options = None
    if executor == "ray":
        from flhelpers.ray_executor import RayOptions, require_ray

        require_ray()
        ray_options = RayOptions(address, cpus_per_run, gpus_per_run, threads, max_retries, relay_every_s)
    else:
        for i in pending:  # every run still to compute is checked before the first one trains
            validate_config(configs[i])
    done: dict[int, tuple[dict[str, Any], bool, float]] = {}
    for i, cfg in enumerate(configs):  # finished runs: read back, no training
        if i not in pending:
            done[i] = _run_one(cfg, data_root, results_dir, False)
    bar = GridProgress(len(configs), len(configs) - len(pending), enabled=progress)

    def failed(i: int, exc: BaseException | str) -> RuntimeError:
        return RuntimeError(f"Run {ids[i]} ({_describe(configs[i])}) failed: {exc}")

    try:
        if ray_options is not None:
            from flhelpers.ray_executor import run_on_ray

            try:
                for i, summary, seconds in run_on_ray(configs, pending, data_root, results_dir, ray_options, force):
                    done[i] = (summary, False, seconds)
                    bar.update(_describe(configs[i]), seconds)
            except RunFailed as exc:
                raise failed(exc.index, exc.cause) from exc
        elif workers == 1 or len(pending) < 2:
            for i in pending:
                try:
                    done[i] = _run_one(configs[i], data_root, results_dir, progress and round_progress, threads,
                                       force=force)
                except Exception as exc:
                    raise failed(i, exc) from exc
                bar.update(_describe(configs[i]), done[i][2])
        else:
            per_process = threads if threads is not None else max(1, torch.get_num_threads() // workers)
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=context) as pool:
                futures = {pool.submit(_run_one, configs[i], data_root, results_dir, False, per_process, force): i
                           for i in pending}
                for future in as_completed(futures):
                    i = futures[future]
                    try:
                        done[i] = future.result()
                    except Exception as exc:
                        for f in futures:
                            f.cancel()
                        raise failed(i, exc) from exc
                    bar.update(_describe(configs[i]), done[i][2])
    finally:
        bar.close()
    rows = [{**_config_columns(cfg), **done[i][0], "run_id": ids[i], "reused": done[i][1],
             "wall_time": done[i][2]} for i, cfg in enumerate(configs)]
    if progress:
        print(f"grid: {len(rows)} runs, {len(pending)} computed, {len(rows) - len(pending)} reused")
    return pd.DataFrame(rows)


def grid_rounds(summaries: pd.DataFrame, results_dir: str | Path = "results") -> pd.DataFrame:
    """The per-round metrics (``metrics.csv``) of every run in ``summaries``, with its config columns."""
    frames = []
    config_cols = [c for c in summaries.columns if c in ExperimentConfig.__dataclass_fields__]
    for _, row in summaries.iterrows():
        frame = pd.read_csv(run_dir(results_dir, row["run_id"]) / "metrics.csv")
        for col in (*config_cols, "run_id"):
            frame[col] = row[col]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _ordered(values: Iterable[str]) -> list[str]:
    order = {d: i for i, d in enumerate((*PAPER_DEFENSES, "krum", "tolpegin", "flame"))}
    return sorted(set(values), key=lambda d: (order.get(d, len(order)), d))


def metric_table(summaries: pd.DataFrame, metric: str, index: str = "defense",
                 columns: str = "attacker_ratio", scale: float = 1.0) -> pd.DataFrame:
    """``metric`` as a defenses x attacker ratios table, the mean over seeds, times ``scale``
    (100 for percentages). Defenses in the paper's order."""
    for col in (metric, index, columns):
        if col not in summaries.columns:
            raise ValueError(f"No column {col!r} in the summaries; columns: {list(summaries.columns)}.")
    values = pd.to_numeric(summaries[metric], errors="coerce") * scale
    table = summaries.assign(_v=values).pivot_table(index=index, columns=columns, values="_v",
                                                    aggfunc="mean", dropna=False)
    if index == "defense":
        table = table.reindex(_ordered(table.index))
    table.columns.name = columns
    return table


def pair_table(first: pd.DataFrame, second: pd.DataFrame, digits: int = 1, missing: str = "not run") -> pd.DataFrame:
    """Two same-shaped tables as one of ``"a / b"`` strings (e.g. Src-Acc % / ASR %); NaN -> ``missing``."""
    if first.shape != second.shape or not first.index.equals(second.index):
        raise ValueError("pair_table needs two tables with the same rows and columns.")
    out = first.copy().astype(object)
    for i in range(first.shape[0]):
        for j in range(first.shape[1]):
            a, b = first.iat[i, j], second.iat[i, j]
            out.iat[i, j] = missing if pd.isna(a) or pd.isna(b) else f"{a:.{digits}f} / {b:.{digits}f}"
    return out


def to_markdown(frame: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (index as the first column; NaN as 'n/a';
    attacker-ratio columns as percentages)."""
    def fmt(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "n/a" if not np.isfinite(v) else f"{v:.{digits}f}"
        return str(v)

    if frame.columns.name == "attacker_ratio":
        columns = [f"{c:.0%}" for c in frame.columns]
    else:
        columns = [fmt(c) if not isinstance(c, str) else c for c in frame.columns]
    head = [str(frame.index.name or "")] + columns
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for idx, row in frame.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [fmt(v) for v in row.tolist()]) + " |")
    return "\n".join(lines) + "\n"


def write_table(frame: pd.DataFrame, results_dir: str | Path, name: str, digits: int = 2) -> tuple[Path, Path]:
    """Write ``frame`` to ``<results_dir>/tables/<name>.csv`` and ``.md``; return both paths."""
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"Table name {name!r} must be a plain file name without folders.")
    folder = Path(results_dir) / "tables"
    csv_path, md_path = folder / f"{name}.csv", folder / f"{name}.md"
    atomic_write_text(csv_path, frame.to_csv())
    atomic_write_text(md_path, to_markdown(frame, digits))
    return csv_path, md_path


# ------------------------------------------------------------------ the paper's numbers (PAPER.md 5)

#: Journal Table 3 of the paper at 40 % attackers: (Src-Acc %, ASR %) per benchmark and defense;
#: ``fedavg-no-attack`` is FedAvg at 0 %. MNIST there is Dirichlet-split with lr 0.01.
PAPER_TABLE3: dict[str, dict[str, tuple[float, float]]] = {
    "mnist": {"fedavg-no-attack": (94.84, 0.49), "fedavg": (83.66, 9.44), "median": (81.13, 7.68),
              "trimmed-mean": (80.74, 7.98), "multi-krum": (91.44, 1.56), "foolsgold": (0.00, 88.52),
              "lfighter": (93.68, 0.68)},
    "cifar10": {"fedavg-no-attack": (65.48, 14.90), "fedavg": (24.22, 52.93), "median": (23.53, 53.74),
                "trimmed-mean": (21.62, 55.61), "multi-krum": (11.05, 71.62), "foolsgold": (29.92, 46.00),
                "lfighter": (56.98, 12.10)},
    "imdb": {"fedavg-no-attack": (86.03, 13.97), "fedavg": (12.43, 87.57), "median": (18.87, 81.13),
             "trimmed-mean": (17.84, 82.16), "multi-krum": (0.00, 100.00), "foolsgold": (85.75, 14.25),
             "lfighter": (85.44, 14.56)},
}
#: the benchmark each journal Table 3 row was measured on (its MNIST and CIFAR10 rows used a Dirichlet split)
TABLE3_BENCHMARKS: dict[str, str] = {"mnist-mild": "mnist", "cifar10-mild": "cifar10", "imdb": "imdb"}
#: what the paper's figures show across 0-50 % attackers (PAPER.md section 5, paper section 6.2)
PAPER_FIGURE_READINGS: dict[str, str] = {
    "mnist-iid": "every defense but FoolsGold holds up to 40 % attackers (FedAvg included); at 50 % only "
                 "Multi-Krum and LFighter hold; FoolsGold's Src-Acc plummets and its ASR nears 100 % as soon "
                 "as attackers appear (Fig 7)",
    "mnist-mild": "close to MNIST-iid; FoolsGold does better than on iid data (Fig 8)",
    "mnist-extreme": "LFighter Src-Acc about 86-90 % at every ratio with no false positives; FedAvg 90 -> 47 %; "
                     "the median and the repeated median collapse (All-Acc about 11 %) (Fig 9)",
    "cifar10-iid": "every defense but FoolsGold and LFighter degrades as attackers grow (Fig 10)",
    "cifar10-mild": "LFighter Src-Acc about 58-62 % at every ratio; FedAvg 66 -> 17 %; every other defense "
                    "degrades (Fig 11)",
    "imdb": "LFighter Src-Acc about 85-87 % at every ratio, FoolsGold about the same; FedAvg 86 -> 5 % (Fig 12)",
}


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
    for d in _ordered(summaries["defense"]):
        sel = summaries[(summaries["defense"] == d) & np.isclose(summaries["attacker_ratio"], ratio)]
        rows.append((d, sel))
    clean = summaries[(summaries["defense"] == "fedavg") & np.isclose(summaries["attacker_ratio"], 0.0)]
    if len(clean):
        rows.insert(0, ("fedavg-no-attack", clean))
    out = []
    for name, sel in rows:
        ours_src = 100 * pd.to_numeric(sel["source_accuracy"]).mean() if len(sel) else np.nan
        ours_asr = 100 * pd.to_numeric(sel["attack_success_rate"]).mean() if len(sel) else np.nan
        p_src, p_asr = paper.get(name, (np.nan, np.nan))
        out.append({"defense": name, f"Src-Acc % (ours, {ratio:.0%})": ours_src, "Src-Acc % (paper, 40%)": p_src,
                    f"ASR % (ours, {ratio:.0%})": ours_asr, "ASR % (paper, 40%)": p_asr})
    return pd.DataFrame(out).set_index("defense")


def _value(summaries: pd.DataFrame, benchmark: str, defense: str, ratio: float, metric: str) -> float:
    sel = summaries[(summaries["benchmark"] == benchmark) & (summaries["defense"] == defense)
                    & np.isclose(summaries["attacker_ratio"], ratio)]
    return float(pd.to_numeric(sel[metric], errors="coerce").mean()) if len(sel) else float("nan")


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
        clean = _value(summaries, b, "fedavg", 0.0, "source_accuracy")
        fed = _value(summaries, b, "fedavg", hi, "source_accuracy")
        lf = _value(summaries, b, "lfighter", hi, "source_accuracy")
        checks = [("the attack hurts FedAvg's source class", f"FedAvg Src-Acc {_pct(clean)} at 0 % -> "
                   f"{_pct(fed)} at {hi:.0%}", hi > 0 and clean - fed >= margin, (clean, fed)),
                  ("LFighter holds the source class", f"LFighter Src-Acc {_pct(lf)} at {hi:.0%} vs FedAvg "
                   f"{_pct(clean)} without attack", hi > 0 and lf >= clean - margin and lf >= fed, (clean, lf, fed))]
        if b == "mnist-extreme":
            acc = _value(summaries, b, "median", hi, "accuracy")
            checks.append(("the median collapses on MNIST-Extreme", f"median All-Acc {_pct(acc)} at {hi:.0%}",
                           acc < 0.30, (acc,)))
        if b == "mnist-iid":
            fg = _value(summaries, b, "foolsgold", hi, "source_accuracy")
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


def load_summary_rows(results_dir: str | Path, run_ids: Iterable[str]) -> pd.DataFrame:
    """Summaries of finished runs by id (config columns + summary), as :func:`run_grid` returns them."""
    rows = []
    for rid in run_ids:
        path = run_dir(results_dir, rid)
        cfg = ExperimentConfig.from_dict(read_json(path / "config.json")["config"])
        rows.append({**_config_columns(cfg), **read_json(path / "summary.json"), "run_id": rid, "reused": True})
    return pd.DataFrame(rows)


__all__ = ["GridPlan", "PAPER_FIGURE_READINGS", "PAPER_RATIOS", "PAPER_TABLE3", "TABLE3_BENCHMARKS", "SUMMARY_METRICS", "capture_config",
           "capture_ratio", "check_findings", "default_plan", "pair_table", "plan_table", "stability_ratio",
           "write_benchmark_tables",
           "grid_rounds", "load_summary_rows", "make_grid", "metric_table", "paper_comparison", "run_grid",
           "to_markdown", "write_table"]
