"""One benchmark notebook (MNIST, CIFAR10, IMDB): the study every one of them draws, as a report object.

The three benchmark notebooks are one template: each has its own parameters cell (``dataset`` names
its benchmarks) and its own prose, and every code cell calls a method of :class:`BenchmarkReport`:

* :meth:`BenchmarkReport.from_parameters` turns the parameters cell into the plan (the grid of
  :func:`flhelpers_lab.paper.notebook_plan`) and the results store; :meth:`~BenchmarkReport.show_plan`
  displays this profile's grid beside the paper's setting;
* sections 1-3 (gradient analyses): :meth:`~BenchmarkReport.capture`, :meth:`~BenchmarkReport.show_pca`,
  :meth:`~BenchmarkReport.show_magnitudes`, :meth:`~BenchmarkReport.show_update_comparison` (Table 1,
  with the paper's :data:`PAPER_TABLE1` beside ours);
* sections 4-7: :meth:`~BenchmarkReport.show_paper_readings` (what the paper reports, printed from
  :data:`~flhelpers_lab.paper.PAPER_FIGURE_READINGS` and :mod:`flhelpers_lab.table3`),
  :meth:`~BenchmarkReport.run` (the grid, its tables and bars), :meth:`~BenchmarkReport.show_heatmaps`,
  :meth:`~BenchmarkReport.show_stability`, :meth:`~BenchmarkReport.show_runtime`,
  :meth:`~BenchmarkReport.show_detection`;
* beyond the paper: :meth:`~BenchmarkReport.show_lfighter_records` (any LFighter run of the grid with a
  per-round record) and :meth:`~BenchmarkReport.show_foolsgold_trap` (the committed study, drawn when
  the notebook's benchmarks include one of the study's);
* :meth:`~BenchmarkReport.compare_with_paper`: ours beside the paper, the scale note, the findings checks.

Whatever differs between the notebooks follows from the parameters and the data (the benchmarks, their
configurations, what the results store holds), never from different code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from flhelpers import plots
from flhelpers.analysis.capture import GradientCapture, capture_all
from flhelpers.analysis.gradients import PARTS, magnitude_trace
from flhelpers.config import ExperimentConfig, benchmark_config
from flhelpers.fl.grid import grid_rounds, run_grid
from flhelpers.presets import BENCHMARKS
from flhelpers.results.tables import write_table
from flhelpers_lab.lfighter_record import records_table
from flhelpers_lab.paper import (PAPER_FIGURE_READINGS, capture_configs, check_findings, has_plan, notebook_plan,
                                 paper_comparison, plan_table, scale_note, stability_ratio, write_benchmark_tables)
from flhelpers_lab.store import prepare_results_store
from flhelpers_lab.published import (PAPER_ALL_ACC_40, PAPER_TABLE1, PAPER_TABLE1_BENCHMARK, PAPER_TABLE3,
                                     TABLE3_BENCHMARKS, TABLE3_DEFENSES)

__all__ = ["BenchmarkReport", "TABLE3_RATIO", "dataset_benchmarks",
           "paper_table1", "paper_table3", "plan_overview", "setting_table"]

#: the attacker ratio of the journal's Table 3
TABLE3_RATIO = 0.4


def dataset_benchmarks(dataset: str) -> list[str]:
    """The paper's benchmarks on ``dataset`` (``mnist``, ``cifar10``, ``imdb``), in the paper's order."""
    found = [b for b, preset in BENCHMARKS.items() if preset["dataset"] == dataset.strip().lower()]
    if not found:
        known = sorted({preset["dataset"] for preset in BENCHMARKS.values()})
        raise ValueError(f"No benchmark on dataset {dataset!r}; known datasets: {', '.join(known)}.")
    return found


def paper_table1() -> pd.DataFrame:
    """:data:`PAPER_TABLE1` as a table shaped like ours (rows: measures, columns: parts of the model)."""
    return pd.DataFrame.from_dict(PAPER_TABLE1, orient="index", columns=list(PARTS))


def paper_table3(paper_key: str) -> pd.DataFrame:
    """One row of the journal's Table 3 (``mnist``, ``cifar10``, ``imdb``) as a table: Src-Acc %, ASR %
    and All-Acc % (FedAvg and LFighter only) per rule at :data:`TABLE3_RATIO`, FedAvg without attack first."""
    if paper_key not in PAPER_TABLE3:
        raise ValueError(f"Unknown paper_key {paper_key!r}; valid: {', '.join(PAPER_TABLE3)}.")
    cells, all_acc = PAPER_TABLE3[paper_key], PAPER_ALL_ACC_40.get(paper_key, {})
    rows = [{"defense": key, "Src-Acc %": cells[key][0], "ASR %": cells[key][1],
             "All-Acc %": all_acc.get(key, np.nan)} for key in ("fedavg-no-attack", *TABLE3_DEFENSES)]
    return pd.DataFrame(rows).set_index("defense")


def setting_table(configs: Sequence[ExperimentConfig]) -> pd.DataFrame:
    """The training setting of each configuration, one row per benchmark: split, peers, rounds, local
    epochs, batch, optimizer and learning rate, samples, the flipped classes and the model."""
    rows = []
    for c in configs:
        split = f"{c.partition} {c.dirichlet_alpha:g}" if c.partition == "dirichlet" else c.partition
        rows.append({"benchmark": c.benchmark, "profile": c.profile, "split": split, "peers": c.num_peers,
                     "rounds": c.rounds, "local epochs": c.local_epochs, "batch": c.batch_size,
                     "optimizer": f"{c.optimizer} lr {c.lr:g}", "train samples": c.train_subset or "all",
                     "test samples": c.test_subset or "all", "flip": f"{c.source_class} -> {c.target_class}",
                     "model": c.model})
    return pd.DataFrame(rows).set_index("benchmark")


def plan_overview(plan: dict[str, list[ExperimentConfig]]) -> pd.DataFrame:
    """:func:`flhelpers_lab.paper.plan_table` with each benchmark's optimizer, batch and flipped classes."""
    table = plan_table(plan)
    setting = setting_table([configs[0] for configs in plan.values()])
    at = table.columns.get_loc("local epochs") + 1
    for i, column in enumerate(("batch", "optimizer", "flip")):
        table.insert(at + i, column, setting[column])
    return table


@dataclass
class BenchmarkReport:
    """The study of one benchmark notebook: its plan, results store and what it has drawn so far.

    Attributes:
        dataset: the notebook's dataset (``mnist``, ``cifar10``, ``imdb``); names its findings table.
        profile: ``quick``, ``medium`` or ``paper``.
        plan: the grid's configurations by benchmark (:func:`flhelpers_lab.paper.notebook_plan`).
        results_dir: the results store, absolute (:func:`flhelpers_lab.store.prepare_results_store`).
        data_root: the data root (``None``: ``$FLHELPERS_DATA``, else ``./data``).
        seeds: the grid's seeds; the gradient analyses use the first.
        overrides: the configuration fields every run gets (rounds, peers, device, ...).
        workers: processes for the runs still to compute.
        force: recompute every run and capture.
        only_finished: draw only the runs already finished in the store.
        captures: the gradient captures by benchmark (after :meth:`capture`).
        summaries: one row per run of the grid (after :meth:`run`).
        tables: each benchmark's tables by metric (after :meth:`run`).
    """

    dataset: str
    profile: str
    plan: dict[str, list[ExperimentConfig]]
    results_dir: str
    data_root: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: dict[str, Any] = field(default_factory=dict)
    workers: int = 2
    force: bool = False
    only_finished: bool = False
    captures: dict[str, GradientCapture] = field(default_factory=dict)
    summaries: pd.DataFrame = field(default_factory=pd.DataFrame)
    tables: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)

    @classmethod
    def from_parameters(cls, dataset: str, profile: str = "quick", benchmarks: Sequence[str] | None = None,
                        defenses: Sequence[str] | None = None, attacker_ratios: Sequence[float] | None = None,
                        seeds: Sequence[int] = (0,), device: str = "cpu", data_root: str | None = None,
                        results_dir: str | None = None, rounds: int | None = None, peers: int | None = None,
                        config_overrides: dict[str, Any] | None = None, workers: int = 2, force: bool = False,
                        only_finished: bool = False) -> "BenchmarkReport":
        """The report of a notebook's parameters cell (the names are the cell's).

        ``benchmarks`` defaults to every benchmark of ``dataset`` with a grid at ``profile``; the
        results store is :func:`~flhelpers_lab.store.prepare_results_store` (seeded from the committed runs
        at ``medium``); with ``only_finished`` a benchmark without a finished run is left out.
        """
        store = prepare_results_store(results_dir, profile, force)
        chosen = list(benchmarks or [b for b in dataset_benchmarks(dataset) if has_plan(b, profile)])
        overrides = dict(rounds=rounds, num_peers=peers, device=device, **(config_overrides or {}))
        plan = notebook_plan(chosen, profile, defenses, attacker_ratios, list(seeds), store, only_finished,
                             **overrides)
        return cls(dataset.strip().lower(), profile, plan, store, data_root, list(seeds), overrides, workers,
                   force, only_finished)

    # ------------------------------------------------------------------ the plan

    @property
    def benchmarks(self) -> list[str]:
        """The benchmarks the notebook draws (those of the plan)."""
        return list(self.plan)

    def title(self, benchmark: str) -> str:
        """A figure title naming ``benchmark`` and its scale (:func:`flhelpers.plots.scale_title`)."""
        return plots.scale_title(self.plan[benchmark][0])

    def configs(self) -> list[ExperimentConfig]:
        """Every configuration of the grid, benchmark after benchmark."""
        return [c for configs in self.plan.values() for c in configs]

    def plan_table(self) -> pd.DataFrame:
        """What each benchmark's grid runs (:func:`plan_overview`)."""
        return plan_overview(self.plan)

    def paper_setting(self) -> pd.DataFrame:
        """The paper's setting of each benchmark (the ``paper`` profile), to set beside this profile's."""
        return setting_table([benchmark_config(b, "paper") for b in self.benchmarks])

    def show_plan(self) -> None:
        """Display this profile's grid, then (away from ``paper``) the paper's setting of the same benchmarks."""
        display(Markdown(f"**The grid at the `{self.profile}` profile** (rows: benchmarks)"))
        display(self.plan_table())
        if self.profile != "paper":
            display(Markdown("**The paper's setting** (`profile=\"paper\"`), for comparison"))
            display(self.paper_setting())

    def part(self, benchmark: str) -> pd.DataFrame:
        """The summaries of ``benchmark``'s runs (after :meth:`run`)."""
        return self.summaries[self.summaries["benchmark"] == benchmark]

    # ------------------------------------------------------------------ sections 1-3: gradient analyses

    def capture_configs(self) -> list[ExperimentConfig]:
        """The captured run of each benchmark (:func:`flhelpers_lab.paper.capture_configs`, first seed)."""
        return capture_configs(self.benchmarks, self.profile, self.seeds[0], self.results_dir, self.only_finished,
                               **self.overrides)

    def capture_table(self) -> pd.DataFrame:
        """Which run each benchmark's gradient analyses capture: its attacker ratio, whether the grid
        has that run too (then it costs nothing extra) and its run id."""
        grid = {c.run_id() for c in self.configs()}
        rows = [{"benchmark": c.benchmark, "defense": c.defense, "attacker ratio": f"{c.attacker_ratio:.0%}",
                 "a run of the grid": "yes" if c.run_id() in grid else "no (one extra run)", "run id": c.run_id()}
                for c in self.capture_configs()]
        return pd.DataFrame(rows).set_index("benchmark") if rows else pd.DataFrame()

    def capture(self, enabled: bool = True) -> dict[str, GradientCapture]:
        """Capture (or read back) each benchmark's gradients and display which runs they come from;
        nothing when not ``enabled`` (the notebook's ``gradient_analyses``)."""
        if not enabled:
            return self.captures
        display(self.capture_table())
        configs = self.capture_configs()
        found = capture_all(configs, self.data_root, self.results_dir, workers=self.workers, force=self.force)
        self.captures = {c.benchmark: cap for c, cap in zip(configs, found)}
        return self.captures

    def show_pca(self) -> None:
        """Section 1: the first two principal components of the peers' gradients, per view; honest
        peers coloured by the class they hold on a one-class-per-peer split."""
        for b, c in self.captures.items():
            fig = plots.plot_pca(c.pca, f"{self.title(b)}, {c.config.attacker_ratio:.0%} attackers",
                                 color_by_class=(c.config.partition == "extreme"))
            plots.save_and_display(fig, self.results_dir, b, "pca_gradients")

    def show_magnitudes(self) -> None:
        """Section 2: the mean norm of each output neuron's gradient over rounds, all captures in one figure."""
        if not self.captures:
            return
        traces = {f"{plots.BENCHMARK_TITLES[b]}, {c.config.attacker_ratio:.0%} attackers":
                  magnitude_trace(c.magnitudes, c.config.source_class, c.config.target_class)
                  for b, c in self.captures.items()}
        first = self.benchmarks[0]
        fig = plots.plot_magnitudes(traces, plots.BENCHMARK_TITLES[first].split("-")[0])
        plots.save_and_display(fig, self.results_dir, first, "gradient_magnitudes")

    def show_update_comparison(self) -> None:
        """Section 3: Table 1 of each capture (a good and a bad update of the same peer), after the paper's."""
        tables = {b: c for b, c in self.captures.items() if c.comparison is not None}
        if not tables:
            return
        display(Markdown(f"**The paper's Table 1** ({plots.BENCHMARK_TITLES[PAPER_TABLE1_BENCHMARK]}, "
                         f"the paper's scale)"))
        display(paper_table1())
        for b, c in tables.items():
            write_table(c.comparison, self.results_dir, f"table1_good_bad_update_{b}", digits=3)
            display(Markdown(f"**{self.title(b)}**, peer {c.comparison_peer['peer_id']} at round "
                             f"{c.comparison_peer['round'] + 1}"))
            display(c.comparison)

    # ------------------------------------------------------------------ sections 4-7: the grid

    def show_paper_readings(self) -> None:
        """What the paper reports for each benchmark: its figure's reading and, where the journal's
        Table 3 measured the benchmark, that row (at :data:`TABLE3_RATIO`)."""
        for b in self.benchmarks:
            display(Markdown(f"**{plots.BENCHMARK_TITLES.get(b, b)}:** {PAPER_FIGURE_READINGS[b]}."))
            if b in TABLE3_BENCHMARKS:
                key = TABLE3_BENCHMARKS[b]
                display(Markdown(f"Journal Table 3, {key} row, {TABLE3_RATIO:.0%} attackers (All-Acc: FedAvg and "
                                 f"LFighter only):"))
                display(paper_table3(key))

    def run(self) -> pd.DataFrame:
        """Section 4: run (or read back) the grid, write each benchmark's tables and draw its bars."""
        self.summaries = run_grid(self.configs(), self.data_root, self.results_dir, workers=self.workers,
                                  force=self.force)
        for b in self.benchmarks:
            self.tables[b] = write_benchmark_tables(self.summaries, self.results_dir, b)
            plots.save_and_display(plots.plot_metric_bars(self.part(b), self.title(b)), self.results_dir, b,
                                   "robustness")
        return self.summaries

    def show_heatmaps(self) -> None:
        """Section 4: the Src-Acc / ASR table and heatmaps of each benchmark."""
        for b in self.benchmarks:
            display(Markdown(f"**{self.title(b)}**: Src-Acc % / ASR % (rows: defenses, columns: attacker ratio)"))
            display(self.tables[b]["src_acc_asr"])
            fig = plots.plot_defense_heatmaps(self.part(b), self.title(b))
            plots.save_and_display(fig, self.results_dir, b, "src_acc_asr_heatmap")

    def show_stability(self) -> None:
        """Section 5: Src-Acc per round at :func:`~flhelpers_lab.paper.stability_ratio`, and the CV table."""
        rounds = grid_rounds(self.summaries, self.results_dir)
        for b in self.benchmarks:
            ratio = stability_ratio(self.part(b))
            fig = plots.plot_source_accuracy_rounds(rounds[rounds["benchmark"] == b], self.title(b), ratio)
            plots.save_and_display(fig, self.results_dir, b, "source_accuracy_rounds")
            display(Markdown(f"**{self.title(b)}**: CV of Src-Acc (rows: defenses, columns: attacker ratio)"))
            display(self.tables[b]["source_accuracy_cv"].round(3))

    def show_runtime(self) -> None:
        """Section 6: each defense's aggregation time per round."""
        for b in self.benchmarks:
            plots.save_and_display(plots.plot_runtime(self.part(b), self.title(b)), self.results_dir, b, "runtime")

    def show_detection(self) -> None:
        """Section 7: each defense's true and false positive rates."""
        for b in self.benchmarks:
            plots.save_and_display(plots.plot_detection(self.part(b), self.title(b)), self.results_dir, b,
                                   "detection")

    # ------------------------------------------------------------------ beyond the paper

    def lfighter_records(self) -> pd.DataFrame:
        """:func:`flhelpers_lab.lfighter_record.records_table` of the grid's LFighter runs with a record."""
        return records_table(self.results_dir, self.configs())

    def show_lfighter_records(self) -> None:
        """Display :meth:`lfighter_records`, or say that the store holds none."""
        records = self.lfighter_records()
        display(records if len(records) else Markdown("No LFighter run with a per-round record in this store."))

    def show_foolsgold_trap(self) -> None:
        """The committed FoolsGold study (:mod:`flhelpers_lab.investigations.foolsgold_trap`), drawn when
        this notebook's benchmarks include one of the study's (nothing otherwise)."""
        from flhelpers_lab.investigations.foolsgold_trap import (ARXIV_SETTING, SWEEP_K, study_configs, study_dir,
                                                                 trap_rounds, trap_summary)
        from flhelpers_lab.plots.foolsgold_trap import plot_sweep_source_accuracy, plot_weight_shares

        configs = study_configs("medium")
        if not {c.benchmark for c in configs} & set(self.benchmarks):
            return
        src, asr = PAPER_TABLE3["mnist"]["foolsgold"]
        display(Markdown(f"The paper's MNIST FoolsGold cell (journal Table 3, {TABLE3_RATIO:.0%} attackers): "
                         f"Src-Acc {src:.2f} %, ASR {asr:.2f} %. The study: poisoned starts of k = "
                         f"{', '.join(map(str, SWEEP_K))} rounds at {configs[0].attacker_ratio:.0%} attackers; "
                         f"the arXiv-era setting {', '.join(f'{k} {v}' for k, v in ARXIV_SETTING.items())}."))
        trap = trap_rounds(study_dir(), configs)
        if trap.empty:
            display(Markdown("No finished run in the study's store yet: `python -m flhelpers_lab study foolsgold-trap`."))
            return
        sweep = configs[0].benchmark
        plots.save_and_display(plot_weight_shares(trap), self.results_dir, sweep, "foolsgold_weight_shares")
        plots.save_and_display(plot_sweep_source_accuracy(trap), self.results_dir, sweep, "poisoned_start_sweep")
        display(trap_summary(trap).drop(columns="run_id").set_index("label").round(3))

    # ------------------------------------------------------------------ this project vs the paper

    def compare_with_paper(self) -> pd.DataFrame:
        """Per benchmark the paper's figure reading, ours beside journal Table 3 (where it measured the
        benchmark) and the scale note; then the paper's findings checked on the grid, written to
        ``tables/findings_<dataset>`` and returned."""
        for b in self.benchmarks:
            display(Markdown(f"**{self.title(b)}**. The paper: {PAPER_FIGURE_READINGS[b]}."))
            if b in TABLE3_BENCHMARKS:
                comparison = paper_comparison(self.part(b), TABLE3_BENCHMARKS[b])
                write_table(comparison, self.results_dir, f"paper_vs_ours_{b}", digits=1)
                display(comparison.round(1))
            if note := scale_note(self.summaries, b, self.profile):
                display(Markdown(note))
        findings = check_findings(self.summaries)
        write_table(findings.set_index("benchmark"), self.results_dir, f"findings_{self.dataset}")
        return findings
