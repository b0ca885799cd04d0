"""The journal's Table 3 beside this project's runs: the paper's numbers, the cells, the table and ``table3.md``.

The paper's Table 3 (:data:`~flhelpers_lab.published.PAPER_TABLE3`) and its rows as drawn here
(:data:`~flhelpers_lab.published.TABLE3_ROWS`); one grid cell's runs and their mean (:func:`select_cell`, :func:`cell_mean`);
:func:`table3` (ours beside the paper's), :func:`shape_checks`, :func:`other_runs` (the benchmarks the
paper shows in figures only), :func:`lfighter_variants` (the paper's and the released LFighter);
:func:`write_table3` writes them.

The written reasons live in ``docs/findings/table3.md``, one section ``### <benchmark>, <rule>``
per cell more than :data:`REASON_THRESHOLD` points from the paper's at the ``medium`` profile
(``### <benchmark>`` for a benchmark outside Table 3). :func:`write_table3` reads the page each
time (:func:`table3_reasons`, :func:`other_findings`), so ``table3.md`` shows every reason in
full, and it stops, naming the heading to add, when such a cell has none. The paper's own
numbers are :mod:`flhelpers_lab.published`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from flhelpers.config import LEGACY_VALUES, ConfigError, ExperimentConfig, benchmark_config
from flhelpers.results import atomic_write_text, load_results
from flhelpers.results.tables import to_markdown
from flhelpers_lab.findings import findings_page, page_sections
from flhelpers_lab.published import (PAPER_ALL_ACC_40, PAPER_FIGURE_READINGS, PAPER_TABLE3, RELEASED_LFIGHTER, ROW_TITLES,
                                     TABLE3_BENCHMARKS, TABLE3_DEFENSES, TABLE3_ROWS)

#: benchmarks of the reference grid outside Table 3, shown in ``table3.md`` beside the paper's figure readings
OTHER_BENCHMARKS = ("mnist-iid", "mnist-extreme")
#: the benchmarks of the two LFighters' comparison (:func:`lfighter_variants`), in its order
VARIANT_BENCHMARKS = ("mnist-mild", "mnist-iid", "mnist-extreme", "imdb", "cifar10-mild", "cifar10-iid")

#: how far (points) a cell may be from the paper's before it needs a written reason
REASON_THRESHOLD = 10.0
#: the findings page that holds the written reasons (``docs/findings/table3.md``; :func:`table3_reasons`)
FINDINGS_PAGE = "table3.md"
#: the profile whose cells the findings page explains (the committed one)
REASONS_PROFILE = "medium"


# ------------------------------------------------------------------ one cell of a grid

def select_cell(summaries: pd.DataFrame, benchmark: str, defense: str, ratio: float) -> pd.DataFrame:
    """The runs of one grid cell (benchmark, defense, attacker ratio); empty when there are none.

    A cell's runs are averaged as seeds (:func:`cell_mean`), so they must be seeds of one
    configuration: runs whose configs differ in any field but ``seed`` (``defense_kwargs``,
    ``rounds``, the attack, ``drop_last``, ...) raise a :class:`~flhelpers.config.ConfigError`
    that names the fields, their values and run ids, and the fix. A field that a run's stored
    config lacks (``NaN`` in the table: the run was computed before the field existed) is read
    at its :data:`~flhelpers.config.LEGACY_VALUES` value, the behaviour it had then. A field the
    table lacks altogether (a hand-made table of summaries) cannot be compared and is not.
    """
    if not len(summaries):
        return summaries
    sel = summaries[(summaries["benchmark"] == benchmark) & (summaries["defense"] == defense)
                    & np.isclose(summaries["attacker_ratio"].astype(float), ratio)]
    differing: list[str] = []
    for name in (f.name for f in dataclasses.fields(ExperimentConfig)):
        if name == "seed" or name not in sel.columns or len(sel) < 2:
            continue
        values = [_config_value(name, v) for v in sel[name]]
        if len(set(values)) > 1:
            ids = sel["run_id"].tolist() if "run_id" in sel.columns else [str(i) for i in sel.index]
            shown = ", ".join(f"{v!r} in {rid}" for v, rid in zip(values, ids))
            differing.append(f"{name} ({shown})")
    if differing:
        raise ConfigError(
            f"The {len(sel)} runs of cell ({benchmark}, {defense}, {ratio:.0%}) differ in more than the seed: "
            f"{'; '.join(differing)}. A cell's runs are averaged as seeds of one configuration; keep one "
            f"configuration per cell in the results store (move the others to another --results-dir) or "
            f"select the runs before, e.g. summaries[summaries[{differing[0].split(' ')[0]!r}] == value].")
    return sel


def _config_value(name: str, value: Any) -> Any:
    """A config column's value, comparable across runs: a missing value (a run stored before the
    field existed) is the field's legacy value, numbers compare as floats, dicts as sorted JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        legacy = LEGACY_VALUES.get(name)
        return None if legacy is None else _config_value(name, legacy)
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


def cell_mean(summaries: pd.DataFrame, benchmark: str, defense: str, ratio: float, metric: str) -> float:
    """The mean of ``metric`` over the runs of one grid cell (e.g. over seeds), as stored; NaN without runs."""
    sel = select_cell(summaries, benchmark, defense, ratio)
    return float(pd.to_numeric(sel[metric], errors="coerce").mean()) if len(sel) else float("nan")


def paper_runs(summaries: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``summaries`` that are runs of the paper's configurations: a run whose id is that
    of its benchmark's preset at its profile, rule, attacker ratio and seed
    (:func:`flhelpers.config.benchmark_config` with nothing else changed), the runs Table 3, the
    shape checks and the MNIST-iid / MNIST-Extreme table are drawn from.

    A results store also holds other studies' runs (the Beyond study's attacks, the clean runs of
    its two pairs, a mended LFighter); they share a cell's benchmark, rule and ratio but not its
    configuration, and are left out here rather than averaged into the paper's cells.
    """
    need = ("run_id", "benchmark", "profile", "defense", "attacker_ratio", "seed")
    if not len(summaries) or any(c not in summaries for c in need):
        return summaries  # a hand-made table of summaries: nothing to compare against

    def is_paper(row: pd.Series) -> bool:
        try:
            cfg = benchmark_config(row["benchmark"], row["profile"], defense=row["defense"],
                                   attacker_ratio=float(row["attacker_ratio"]), seed=int(row["seed"]))
        except (KeyError, ValueError):  # a benchmark or profile that has no preset
            return False
        return cfg.run_id() == row["run_id"]

    return summaries[summaries.apply(is_paper, axis=1)]


# ------------------------------------------------------------------ the written reasons (docs)

def table3_reasons(page: str | Path | None = None) -> dict[tuple[str, str], str]:
    """The written reasons of the findings page (default :data:`FINDINGS_PAGE`): ``(benchmark, rule)
    -> text``, from its headings ``### <benchmark>, <rule>`` (``fedavg-no-attack``: FedAvg at 0 %)."""
    sections = page_sections(page if page is not None else findings_page(FINDINGS_PAGE))
    return {tuple(h.split(", ", 1)): text for h, text in sections.items() if ", " in h}


def other_findings(page: str | Path | None = None) -> dict[str, str]:
    """What a benchmark outside Table 3 adds below its table in ``table3.md``: ``benchmark -> text``,
    from the findings page's headings ``### <benchmark>``."""
    sections = page_sections(page if page is not None else findings_page(FINDINGS_PAGE))
    return {h: text for h, text in sections.items() if ", " not in h}


def far_cells(t3: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`table3` whose Src-Acc or ASR is more than :data:`REASON_THRESHOLD` points from the paper's."""
    return t3[(t3["src_acc_diff"].abs() > REASON_THRESHOLD) | (t3["asr_diff"].abs() > REASON_THRESHOLD)]


def missing_reasons(t3: pd.DataFrame) -> list[str]:
    """The findings-page headings that :func:`table3`'s cells past the threshold lack (empty: none lacks one)."""
    far = far_cells(t3)
    return [f"### {r.benchmark}, {r.defense}" for r in far.itertuples() if not r.reason]


# ------------------------------------------------------------------ the tables

def table3(summaries: pd.DataFrame, ratio: float = 0.4,
           reasons: Mapping[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """One row per Table 3 benchmark and column: ours (mean over seeds of the last-10-round means,
    in %) beside the paper's, and ``ours - paper`` in points. Missing runs give NaN and
    ``runs = 0``. Only the paper's runs count (:func:`paper_runs`). ``reason``: the cell's text in
    ``reasons`` (:func:`table3_reasons`; none given, empty)."""
    summaries = paper_runs(summaries)
    reasons = reasons or {}
    rows: list[dict[str, Any]] = []
    for bench, key in TABLE3_BENCHMARKS.items():
        paper = PAPER_TABLE3[key]
        drop_last, samples = training_set(summaries, bench)
        for name in ("fedavg-no-attack",) + TABLE3_ROWS:
            defense, r = ("fedavg", 0.0) if name == "fedavg-no-attack" else (name, ratio)
            runs = len(select_cell(summaries, bench, defense, r))
            src, asr, acc = (100 * cell_mean(summaries, bench, defense, r, m)
                             for m in ("source_accuracy", "attack_success_rate", "accuracy"))
            p_src, p_asr = paper[name]
            p_acc = PAPER_ALL_ACC_40[key].get(name, np.nan)
            rows.append({"benchmark": bench, "paper_row": key, "drop_last": drop_last, "train_samples": samples,
                         "defense": name, "attacker_ratio": r,
                         "runs": runs, "src_acc": src, "src_acc_paper": p_src, "src_acc_diff": src - p_src,
                         "asr": asr, "asr_paper": p_asr, "asr_diff": asr - p_asr,
                         "all_acc": acc, "all_acc_paper": p_acc, "all_acc_diff": acc - p_acc,
                         "reason": reasons.get((bench, name), "")})
    return pd.DataFrame(rows)


def training_set(summaries: pd.DataFrame, benchmark: str) -> tuple[bool | None, int | None]:
    """``(drop_last, training samples)`` shared by every run of ``benchmark`` (``None`` without runs).

    Raises:
        ValueError: the runs differ in either: one Table 3 row never mixes them; keep one
            setting per benchmark in the store.
    """
    part = summaries[summaries["benchmark"] == benchmark] if len(summaries) else summaries
    if not len(part):
        return None, None
    found = {}
    for col in ("drop_last", "train_samples"):
        values = sorted({v for v in part[col].tolist() if pd.notna(v)}) if col in part else []
        if len(values) > 1:
            raise ValueError(f"{benchmark}: its runs mix {col} = {values}; one Table 3 row never mixes them. "
                             f"Keep the runs of one setting in the store (move the others out).")
        found[col] = values[0] if values else None
    return (None if found["drop_last"] is None else bool(found["drop_last"]),
            None if found["train_samples"] is None else int(found["train_samples"]))


def shape_checks(summaries: pd.DataFrame, ratio: float = 0.4) -> pd.DataFrame:
    """The shape the medium profile must keep at 40 % attackers, per benchmark of the grid.

    * FedAvg's Src-Acc at least 10 points below its no-attack value (where the paper's is: not on
      MNIST-iid, whose FedAvg the paper shows holding at 40 %);
    * LFighter's Src-Acc within 5 points of FedAvg without attack, and its ASR within 5 points of
      FedAvg's no-attack ASR;
    * FoolsGold collapsing on MNIST (Table 3's Dirichlet row: Src-Acc 0 %): below 50 %;
    * the median collapsing on MNIST-Extreme (paper: All-Acc about 11 %): All-Acc below 30 %.

    ``holds`` is ``yes``, ``no`` or ``not run``; values are in %. Only the paper's runs count
    (:func:`paper_runs`).
    """
    summaries = paper_runs(summaries)
    rows = []
    benches = sorted(summaries["benchmark"].unique()) if len(summaries) else []
    for b in benches:
        clean_src = 100 * cell_mean(summaries, b, "fedavg", 0.0, "source_accuracy")
        clean_asr = 100 * cell_mean(summaries, b, "fedavg", 0.0, "attack_success_rate")
        fed = 100 * cell_mean(summaries, b, "fedavg", ratio, "source_accuracy")
        checks = []
        if b != "mnist-iid":
            checks.append(("FedAvg's Src-Acc falls at least 10 points",
                           f"{clean_src:.1f} -> {fed:.1f}", clean_src - fed >= 10, (clean_src, fed)))
        for rule, who in (("lfighter", "LFighter"), (RELEASED_LFIGHTER, "LFighter (released code)")):
            lf = 100 * cell_mean(summaries, b, rule, ratio, "source_accuracy")
            lf_asr = 100 * cell_mean(summaries, b, rule, ratio, "attack_success_rate")
            checks.append((f"{who}'s Src-Acc within 5 points of FedAvg without attack",
                           f"{lf:.1f} vs {clean_src:.1f}", lf >= clean_src - 5, (lf, clean_src)))
            checks.append((f"{who}'s ASR within 5 points of the no-attack ASR",
                           f"{lf_asr:.1f} vs {clean_asr:.1f}", lf_asr <= clean_asr + 5, (lf_asr, clean_asr)))
        if b == "mnist-mild":
            fg = 100 * cell_mean(summaries, b, "foolsgold", ratio, "source_accuracy")
            checks.append(("FoolsGold collapses (Src-Acc below 50 %; paper 0 %)", f"{fg:.1f}", fg < 50, (fg,)))
        if b == "mnist-extreme":
            med = 100 * cell_mean(summaries, b, "median", ratio, "accuracy")
            checks.append(("the median collapses (All-Acc below 30 %; paper about 11 %)", f"{med:.1f}",
                           med < 30, (med,)))
        for what, ours, ok, needed in checks:
            ran = all(np.isfinite(v) for v in needed)
            rows.append({"benchmark": b, "check": what, "ours (%)": ours if ran else "n/a",
                         "holds": ("yes" if ok else "no") if ran else "not run"})
    return pd.DataFrame(rows, columns=["benchmark", "check", "ours (%)", "holds"])


def other_runs(summaries: pd.DataFrame) -> pd.DataFrame:
    """The reference runs of :data:`OTHER_BENCHMARKS`: one row per benchmark, defense and ratio (%).

    A cell with several runs (seeds of one configuration, :func:`select_cell`) shows their mean,
    the seeds, and the spread of Src-Acc: the sample standard deviation (``ddof=1``; n/a for one
    run) and the range ``min-max``. Only the paper's runs count (:func:`paper_runs`).
    """
    summaries = paper_runs(summaries)
    rows = []
    for b in OTHER_BENCHMARKS:
        part = summaries[summaries["benchmark"] == b] if len(summaries) else summaries
        for (d, r), sel in part.groupby(["defense", "attacker_ratio"], sort=False) if len(part) else []:
            sel = select_cell(sel, b, d, float(r))
            src = 100 * pd.to_numeric(sel["source_accuracy"])
            seeds = " ".join(str(int(s)) for s in sorted(sel["seed"])) if "seed" in sel else ""
            rows.append({"benchmark": b, "defense": d, "attackers": f"{float(r):.0%}", "runs": len(sel),
                         "seeds": seeds,
                         "Src-Acc": src.mean(),
                         "Src-Acc sd": src.std(ddof=1) if len(sel) > 1 else float("nan"),
                         "Src-Acc range": f"{src.min():.1f}-{src.max():.1f}" if len(sel) > 1 else "",
                         "ASR": 100 * pd.to_numeric(sel["attack_success_rate"]).mean(),
                         "All-Acc": 100 * pd.to_numeric(sel["accuracy"]).mean(),
                         "TPR": 100 * pd.to_numeric(sel["detection_tpr"], errors="coerce").mean(),
                         "FPR": 100 * pd.to_numeric(sel["detection_fpr"], errors="coerce").mean()})
    frame = pd.DataFrame(rows)
    if len(frame):
        order = {d: i for i, d in enumerate(TABLE3_ROWS)}
        frame = frame.assign(_r=frame["attackers"].str.rstrip("%").astype(float),
                             _d=frame["defense"].map(lambda d: order.get(d, len(order))))
        frame = frame.sort_values(["benchmark", "_r", "_d"], key=lambda c: c.map(
            {b: i for i, b in enumerate(OTHER_BENCHMARKS)}) if c.name == "benchmark" else c)
        frame = frame.drop(columns=["_r", "_d"]).reset_index(drop=True)
    return frame


def lfighter_variants(summaries: pd.DataFrame, ratio: float = 0.4) -> pd.DataFrame:
    """The paper's and the released LFighter side by side, one row per benchmark and variant (%):

    * at ``ratio`` attackers: Src-Acc, ASR, All-Acc, detection TPR and FPR, and the seeds averaged;
    * at 0 %: Src-Acc, its distance to FedAvg's at 0 % (``cost``: LFighter - FedAvg, points) and the
      FPR (every rejection then drops an honest peer);
    * the paper's LFighter cell (Table 3 benchmarks only).

    Only the paper's runs count (:func:`paper_runs`); NaN where a cell has no run.
    """
    summaries = paper_runs(summaries)
    rows = []
    for b in VARIANT_BENCHMARKS:
        clean = 100 * cell_mean(summaries, b, "fedavg", 0.0, "source_accuracy")
        key = TABLE3_BENCHMARKS.get(b)
        for d in ("lfighter", RELEASED_LFIGHTER):
            sel = select_cell(summaries, b, d, ratio)
            seeds = " ".join(str(int(x)) for x in sorted(sel["seed"])) if len(sel) and "seed" in sel else ""
            src0 = 100 * cell_mean(summaries, b, d, 0.0, "source_accuracy")
            rows.append({"benchmark": b, "variant": ROW_TITLES[d], "seeds": seeds,
                         "Src-Acc": 100 * cell_mean(summaries, b, d, ratio, "source_accuracy"),
                         "paper Src-Acc": PAPER_TABLE3[key][d][0] if key else float("nan"),
                         "ASR": 100 * cell_mean(summaries, b, d, ratio, "attack_success_rate"),
                         "All-Acc": 100 * cell_mean(summaries, b, d, ratio, "accuracy"),
                         "TPR": 100 * cell_mean(summaries, b, d, ratio, "detection_tpr"),
                         "FPR": 100 * cell_mean(summaries, b, d, ratio, "detection_fpr"),
                         "Src-Acc at 0 %": src0, "FedAvg at 0 %": clean, "cost at 0 %": src0 - clean,
                         "FPR at 0 %": 100 * cell_mean(summaries, b, d, 0.0, "detection_fpr")})
    return pd.DataFrame(rows)


def run_times(results_dir: str | Path, profile: str = "medium") -> pd.DataFrame:
    """Minutes each benchmark's finished runs took (training + aggregation + evaluation, summed
    over rounds from ``timings.csv``): runs, mean, min, max and total per benchmark."""
    frame = load_results(results_dir, timings=True)
    if frame.empty:
        return pd.DataFrame(columns=["benchmark", "runs", "mean_min", "min_min", "max_min", "total_min"])
    frame = frame[frame["profile"] == profile]
    paper = set(paper_runs(frame.drop_duplicates("run_id"))["run_id"])  # the Table 3 runs' times only
    frame = frame[frame["run_id"].isin(paper)]
    cols = [c for c in ("train_time", "aggregation_time", "eval_time") if c in frame]
    per_run = frame.assign(seconds=frame[cols].sum(axis=1)).groupby(["benchmark", "run_id"])["seconds"].sum() / 60
    out = per_run.groupby("benchmark").agg(runs="count", mean_min="mean", min_min="min", max_min="max",
                                           total_min="sum")
    return out.reset_index()


# ------------------------------------------------------------------ table3.md

def _fmt(v: float, signed: bool = False) -> str:
    """A value in % for ``table3.md``: one decimal (with its sign when ``signed``), ``-`` for NaN."""
    if not np.isfinite(v):
        return "-"
    return f"{v:+.1f}" if signed else f"{v:.1f}"


def table3_markdown(t3: pd.DataFrame, checks: pd.DataFrame, profile: str = "medium",
                    others: pd.DataFrame | None = None, variants: pd.DataFrame | None = None,
                    findings: Mapping[str, str] | None = None) -> str:
    """``table3.md``: per Table 3 row our cell, the paper's and the difference; then the reasons
    (``t3["reason"]``) for cells more than :data:`REASON_THRESHOLD` points away, the benchmarks
    outside Table 3 (``others``, each followed by its text in ``findings``), the two LFighters
    (``variants``) and the shape checks."""
    lines = [f"# The journal's Table 3 at the `{profile}` profile, beside the paper",
             "",
             "Src-Acc, ASR and All-Acc in %, each the mean of the last 10 rounds (seed 0); FedAvg without "
             "attack, then every rule at 40 % attackers. `diff` = ours - paper, in points. The paper reports "
             "All-Acc at 40 % for FedAvg and LFighter only. Written by `python -m flhelpers_lab table3`.",
             ""]
    for bench in t3["benchmark"].unique():
        part = t3[t3["benchmark"] == bench]
        first = part.iloc[0]
        data = ("" if pd.isna(first.get("train_samples")) else
                f"; {int(first['train_samples']):,} training {'reviews' if bench.startswith('imdb') else 'images'}, "
                f"drop_last {str(first['drop_last']).lower()}")
        lines += [f"## {bench} (Table 3 row: {first['paper_row']}{data})", "",
                  "| defense | Src-Acc ours | paper | diff | ASR ours | paper | diff | All-Acc ours | paper | diff |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for _, r in part.iterrows():
            name = ROW_TITLES.get(r["defense"], r["defense"]) + ("" if r["runs"] else " (not run yet)")
            lines.append(f"| {name} | {_fmt(r.src_acc)} | {_fmt(r.src_acc_paper)} | {_fmt(r.src_acc_diff, True)} "
                         f"| {_fmt(r.asr)} | {_fmt(r.asr_paper)} | {_fmt(r.asr_diff, True)} "
                         f"| {_fmt(r.all_acc)} | {_fmt(r.all_acc_paper)} | {_fmt(r.all_acc_diff, True)} |")
        lines.append("")
    far = far_cells(t3)
    lines += ["## Cells more than 10 points from the paper's", ""]
    if far.empty:
        lines.append("None.")
    elif profile == REASONS_PROFILE:
        lines += [f"The reasons are written in `docs/findings/{FINDINGS_PAGE}`, one section per cell.", ""]
    for _, r in far.iterrows():
        lines.append(f"- **{r.benchmark}, {ROW_TITLES.get(r.defense, r.defense)}** (Src-Acc {_fmt(r.src_acc_diff, True)}, ASR "
                     f"{_fmt(r.asr_diff, True)} points): {r.reason or 'no reason written yet.'}")
    if others is not None and len(others):

        lines += ["", "## MNIST-iid and MNIST-Extreme (not in Table 3; the paper shows them in figures)", ""]
        for b in others["benchmark"].unique():
            part = others[others["benchmark"] == b].drop(columns="benchmark").set_index("defense")
            lines += [f"**{b}**. The paper: {PAPER_FIGURE_READINGS[b]}.", "", to_markdown(part, 1)]
            if (findings or {}).get(b):
                lines += ["", findings[b]]
    if variants is not None and len(variants):
        lines += ["", "## The two LFighters: the paper's text and the released code", "",
                  "At 40 % attackers (seed 0; MNIST-Extreme the mean over the seeds listed), then without attackers: "
                  "Src-Acc at 0 %, its cost against FedAvg at 0 % (points), and the FPR at 0 % (every peer rejected "
                  "is honest). n/a: not run yet. Why they differ: `docs/findings/cifar10-mild.md`.", "",
                  to_markdown(variants.set_index("benchmark"), 1).rstrip("\n")]
    lines += ["", "## The shape the paper's results must keep at 40 % attackers", "",
              to_markdown(checks.set_index("benchmark"), 1) if len(checks) else "No runs yet."]
    return "\n".join(lines) + "\n"


def readme_tables(t3: pd.DataFrame, checks: pd.DataFrame) -> str:
    """The compact "this project vs the paper" tables (``readme_tables.md``, which the documentation
    site shows: ``flhelpers_lab/docsite.py``): per Table 3 row, ours / paper for Src-Acc, ASR and
    All-Acc, then the shape checks."""
    titles = {"mnist-mild": "MNIST (Dirichlet alpha 1, lr 0.01; Table 3's MNIST row)",
              "cifar10-mild": "CIFAR10-Mild (Table 3's CIFAR10 row)", "imdb": "IMDB"}
    lines: list[str] = []
    for bench in t3["benchmark"].unique():
        part = t3[t3["benchmark"] == bench]
        lines += [f"**{titles.get(bench, bench)}**", "",
                  "| defense | Src-Acc ours / paper | ASR ours / paper | All-Acc ours / paper |",
                  "| --- | --- | --- | --- |"]
        for _, r in part.iterrows():
            ours = (lambda v: _fmt(v) if r["runs"] else "not run yet")
            lines.append(f"| {ROW_TITLES.get(r.defense, r.defense)} | {ours(r.src_acc)} / {_fmt(r.src_acc_paper)} "
                         f"| {ours(r.asr)} / {_fmt(r.asr_paper)} | {_fmt(r.all_acc)} / {_fmt(r.all_acc_paper)} |")
        lines.append("")
    lines += ["Where the paper's shape is checked at 40 % attackers (`shape_checks.csv`):", "",
              to_markdown(checks.set_index("benchmark"), 1) if len(checks) else "No runs yet."]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_table3(results_dir: str | Path, profile: str = "medium", out_dir: str | Path | None = None) -> pd.DataFrame:
    """Write ``table3.csv``, ``table3.md``, ``shape_checks.csv``, ``lfighter_variants.csv`` and
    ``readme_tables.md`` from the finished runs of the store ``results_dir`` into ``out_dir`` (default
    ``results_dir``); return the Table 3 frame. At :data:`REASONS_PROFILE` the written reasons come
    from the findings page (:func:`table3_reasons`, :func:`other_findings`); elsewhere there are none.

    Raises:
        ValueError: at :data:`REASONS_PROFILE`, a cell past :data:`REASON_THRESHOLD` has no section
            in the findings page (nothing is written).
        FileNotFoundError: at :data:`REASONS_PROFILE`, the findings page is missing.
    """
    results_dir = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else results_dir
    summaries = load_results(results_dir)
    if len(summaries) and "profile" in summaries:
        summaries = summaries[summaries["profile"] == profile]
    written = profile == REASONS_PROFILE
    t3 = table3(summaries, reasons=table3_reasons() if written else None)
    missing = missing_reasons(t3) if written else []
    if missing:
        raise ValueError(f"{len(missing)} cell(s) more than {REASON_THRESHOLD:g} points from the paper's have no "
                         f"written reason: add a section to {findings_page(FINDINGS_PAGE)} for each of "
                         f"{', '.join(repr(m) for m in missing)} (one paragraph: why the cell differs).")
    checks = shape_checks(summaries)
    atomic_write_text(out / "table3.csv", t3.to_csv(index=False, float_format="%.2f"))
    atomic_write_text(out / "shape_checks.csv", checks.to_csv(index=False))
    times = run_times(results_dir, profile)
    variants = lfighter_variants(summaries)
    atomic_write_text(out / "lfighter_variants.csv", variants.to_csv(index=False, float_format="%.2f"))
    text = table3_markdown(t3, checks, profile, other_runs(summaries), variants,
                           other_findings() if written else None)
    text += ("\n## Time per run on this machine (minutes: training + aggregation + evaluation)\n\n"
             "One torch thread per run, two runs side by side on 2 CPU cores shared with other work, so the "
             "figures are upper bounds.\n\n"
             + (to_markdown(times.set_index("benchmark"), 1) if len(times) else "No runs yet.\n"))
    atomic_write_text(out / "table3.md", text)
    atomic_write_text(out / "readme_tables.md", readme_tables(t3, checks))
    return t3


__all__ = ["FINDINGS_PAGE", "OTHER_BENCHMARKS", "PAPER_ALL_ACC_40", "PAPER_TABLE3", "REASONS_PROFILE",
           "REASON_THRESHOLD", "RELEASED_LFIGHTER", "ROW_TITLES", "TABLE3_BENCHMARKS", "TABLE3_DEFENSES",
           "TABLE3_ROWS", "VARIANT_BENCHMARKS", "cell_mean", "far_cells", "lfighter_variants", "missing_reasons",
           "other_findings", "other_runs", "paper_runs", "readme_tables", "run_times", "select_cell",
           "shape_checks", "table3", "table3_markdown", "table3_reasons", "training_set", "write_table3"]
