"""Beyond the paper: label-flipping attackers that know the defense, and a backdoor.

What the ``Beyond`` notebook runs and reads. :func:`beyond_plan` gives, per profile, the attacks
(:data:`flhelpers.attacks.DATA_POISONING_ATTACKS`, each beside the paper's flip), the rules and
the attacker ratios; :func:`planned_runs` turns it into configurations, each tagged with the
attack's key; :func:`run_beyond` computes them (LFighter's runs with their per-round record,
:class:`~flhelpers_lab.lfighter_record.LFighterRecorder`, in ``<results>/records/``);
the table functions set each attack's metric beside its no-attack value, and
:func:`findings` writes, from the numbers and the records, which rules hold and which break.

Scale. ``quick`` (CI, about 6 minutes on 2 free cores): MNIST-Mild's quick preset (20 peers, 15
rounds, 8,000 images), 40 % attackers, FedAvg and LFighter against every flip (the median against
the paper's flip and two pairs), and also the median, Multi-Krum and FLAME against the backdoor. ``medium`` (not computed in CI): MNIST-Mild's medium
preset (100 peers, 40 rounds), 30 % and 40 %, every rule of the issue, model replacement, and a
finer camouflage curve; its runs are read from ``results/reference/medium`` when they exist
(``only_finished``).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from flhelpers.config import ExperimentConfig, benchmark_config, validate_config
from flhelpers.fl.grid import run_grid
from flhelpers.fl.checkpoint import CHECKPOINT
from flhelpers.results import METRICS, is_finished, run_dir
from flhelpers_lab.lfighter_record import LFighterRecorder, read_record
from flhelpers_lab.lfighter_record import record_path as lfighter_record_path

#: the second pair of the several-pairs attack on MNIST (the first is the paper's 7 -> 1)
SECOND_PAIR = (3, 8)
#: the rules the issue names, in the paper's order (FLAME from the journal version)
ALL_DEFENSES = ("fedavg", "median", "trimmed-mean", "multi-krum", "foolsgold", "flame", "lfighter")
#: the mended LFighter of section 3: Procedure 1 a second time on the peers it kept
#: (:func:`flhelpers.defenses.lfighter.filter_mild_passes`); the paper's rule stays the default
MEND_KWARGS = {"passes": 2}
#: how far below the no-attack Src-Acc (or above the no-attack backdoor ASR) a rule may be and still "hold"
HOLD_MARGIN = 0.10


@dataclass(frozen=True)
class BeyondAttack:
    """One attack of the study: its key, how a table heads it, and the registry name and arguments."""

    key: str
    label: str
    attack: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_backdoor(self) -> bool:
        return self.attack == "backdoor"


@dataclass(frozen=True)
class BeyondPlan:
    """What the study runs at one profile (module docstring)."""

    benchmark: str
    profile: str
    attacks: tuple[BeyondAttack, ...]
    flip_defenses: tuple[str, ...]
    backdoor_defenses: tuple[str, ...]
    ratios: tuple[float, ...]
    lams: tuple[float, ...]
    note: str = ""
    #: attacks also run against the mended LFighter (``passes=2``, section 3 of the issue)
    mend_attacks: tuple[str, ...] = ("flip", "pairs")
    #: further (attack key, defense) runs beyond ``flip_defenses``
    extra_runs: tuple[tuple[str, str], ...] = ()

    def defenses_of(self, attack: BeyondAttack) -> tuple[str, ...]:
        """The rules the plan runs ``attack`` against."""
        base = self.backdoor_defenses if attack.is_backdoor else self.flip_defenses
        extra = tuple(d for k, d in self.extra_runs if k == attack.key and d not in base)
        return base + extra


#: the several-pairs attack's pairs (the config's 7 -> 1 first)
_PAIRS = {"pairs": [[7, 1], list(SECOND_PAIR)]}


def study_attacks(rounds: int, boost: float | None = None, each_pairs: bool = False) -> tuple[BeyondAttack, ...]:
    """The attacks of the study for a run of ``rounds`` rounds (the late start is ``R0 = rounds // 3``).

    Two pairs are split among the attackers (half carry 7 -> 1, half 3 -> 8: the attackers of a pair
    differ in other neurons than the other pair's, which Procedure 1's two neurons cannot both be);
    ``each_pairs`` adds the variant where every attacker carries both pairs; ``boost`` adds the
    backdoor with model replacement by that factor."""
    r0 = max(rounds // 3, 1)
    attacks = [
        BeyondAttack("flip", "flip (paper)", "label_flip"),
        BeyondAttack("partial", "partial, q = 0.5", "partial-flip", {"q": 0.5}),
        BeyondAttack("pairs", "two pairs 7->1, 3->8 (split)", "multi-pair-flip", {**_PAIRS, "spread": "split"}),
        BeyondAttack("rate", "each round with p = 0.5", "timed-flip", {"rate": 0.5}),
        BeyondAttack("late", f"from round R0 = {r0}", "timed-flip", {"start_round": r0}),
        BeyondAttack("camouflage", "camouflage, lam = 0.5", "camouflage-flip", {"lam": 0.5}),
        BeyondAttack("backdoor", "backdoor (BadNets, 4x4, f = 0.5)", "backdoor",
                     {"fraction": 0.5, "trigger_size": 4}),
    ]
    if each_pairs:
        attacks.insert(3, BeyondAttack("pairs-each", "two pairs 7->1, 3->8 (each)", "multi-pair-flip",
                                       {**_PAIRS, "spread": "each"}))
    if boost is not None:
        attacks.append(BeyondAttack("boost", f"backdoor + replacement x{boost:g}", "backdoor",
                                    {"fraction": 0.5, "trigger_size": 4, "boost": float(boost)}))
    return tuple(attacks)


def beyond_plan(profile: str = "quick") -> BeyondPlan:
    """The study's plan at ``profile`` (``quick`` or ``medium``; ``paper`` is ``medium``'s plan at the
    paper's scale)."""
    if profile == "quick":
        rounds = benchmark_config("mnist-mild", "quick").rounds
        return BeyondPlan("mnist-mild", profile, study_attacks(rounds), ("fedavg", "lfighter"),
                          ("fedavg", "median", "multi-krum", "flame", "lfighter"), (0.4,), (0.0, 0.5, 1.0),
                          "MNIST-Mild quick, 40 % attackers; FedAvg and LFighter against every flip, the median "
                          "against the paper's flip and two pairs, FedAvg, median, Multi-Krum, FLAME and LFighter "
                          "against the backdoor; camouflage lam 0, 0.5, 1 and LFighter with 2 passes against LFighter",
                          extra_runs=(("flip", "median"), ("pairs", "median")))
    if profile in ("medium", "paper"):
        rounds = benchmark_config("mnist-mild", profile).rounds
        return BeyondPlan("mnist-mild", profile, study_attacks(rounds, boost=3.0, each_pairs=True), ALL_DEFENSES,
                          ALL_DEFENSES,
                          (0.3, 0.4), (0.0, 0.25, 0.5, 0.75, 1.0),
                          f"MNIST-Mild {profile}, 30 and 40 % attackers, every rule against every attack, "
                          f"camouflage lam 0-1 against LFighter at 40 %")
    raise ValueError(f"Unknown profile {profile!r}; valid: quick, medium, paper.")


@dataclass(frozen=True)
class PlannedRun:
    """A configuration of the study and the key of its attack (``clean-pairs`` / ``clean-backdoor``:
    no attacker, the several-pairs or backdoor metrics measured on the clean model; ``lam=<x>``:
    a point of the camouflage curve)."""

    key: str
    config: ExperimentConfig


def planned_runs(plan: BeyondPlan, seeds: Sequence[int] = (0,), **overrides: Any) -> list[PlannedRun]:
    """Every run of ``plan`` (no duplicates), ``overrides`` applied to every configuration."""
    overrides = {k: v for k, v in overrides.items() if v is not None}

    def cfg(attack: BeyondAttack, defense: str, ratio: float, seed: int, **kwargs: Any) -> ExperimentConfig:
        return benchmark_config(plan.benchmark, plan.profile, attack=attack.attack, attacker_ratio=ratio,
                                attack_kwargs={**attack.kwargs, **kwargs}, defense=defense, seed=seed, **overrides)

    by_key = {a.key: a for a in plan.attacks}
    runs: list[PlannedRun] = []
    for seed in seeds:
        # no attacker: the spread is irrelevant; "each" keeps the run id of the first quick runs
        clean_pairs = BeyondAttack("clean-pairs", "", "multi-pair-flip", {**_PAIRS, "spread": "each"})
        runs += [PlannedRun("clean-pairs", cfg(clean_pairs, "fedavg", 0.0, seed)),
                 PlannedRun("clean-backdoor", cfg(by_key["backdoor"], "fedavg", 0.0, seed))]
        for ratio in plan.ratios:
            for attack in plan.attacks:
                runs += [PlannedRun(attack.key, cfg(attack, d, ratio, seed)) for d in plan.defenses_of(attack)]
        top = max(plan.ratios)
        grid_lams = {0.0, float(by_key["camouflage"].kwargs["lam"])}
        runs += [PlannedRun(f"lam={lam:g}", cfg(by_key["camouflage"], "lfighter", top, seed, lam=float(lam)))
                 for lam in plan.lams if float(lam) not in grid_lams]
        runs += [PlannedRun(f"mend-{key}", cfg(by_key[key], "lfighter", top, seed).replace(
            defense_kwargs=dict(MEND_KWARGS))) for key in plan.mend_attacks]
    seen: set[str] = set()
    unique = []
    for run in runs:
        rid = run.config.run_id()
        if rid not in seen:
            seen.add(rid)
            unique.append(run)
    return unique


def only_finished_runs(runs: Sequence[PlannedRun], results_dir: str | Path) -> list[PlannedRun]:
    """The runs already finished in ``results_dir`` (each one left out is printed)."""
    kept = []
    for run in runs:
        if is_finished(run_dir(results_dir, run.config.run_id())):
            kept.append(run)
        else:
            c = run.config
            print(f"not finished yet, left out: {run.key} {c.defense} at {c.attacker_ratio:.0%} ({c.run_id()})")
    return kept


def record_path(results_dir: str | Path, cfg: ExperimentConfig) -> Path:
    """Where an LFighter run's per-round record lies (as ``tools/run_reference.py`` writes it)."""
    return lfighter_record_path(results_dir, cfg.run_id())


def _needs_computing(cfg: ExperimentConfig, results_dir: str | Path, force: bool) -> bool:
    finished = is_finished(run_dir(results_dir, cfg.run_id()))
    return force or not finished or (cfg.defense == "lfighter" and not record_path(results_dir, cfg).is_file())


def _compute(cfg: ExperimentConfig, data_root: str | None, results_dir: str, threads: int,
             force: bool = False) -> str:
    """One run (the body of a worker process).

    An LFighter run writes its per-round record (:class:`LFighterRecorder`): afresh when the run
    starts at round 0, appended when it resumes from a checkpoint (:func:`read_record` keeps each
    round's last row), so a resumed run's record still covers every round. A *finished* LFighter run
    without a record (e.g. a Table 3 run committed before records existed) is recomputed in a
    temporary folder inside ``results_dir``, and only the record moves in, and only if the recomputed
    ``metrics.csv`` equals the stored one (else a warning, and the run stays without one): the finished
    run's own files are never rewritten, so stopping this midway loses nothing.
    """
    import tempfile
    import warnings

    import torch

    from flhelpers.fl.engine import run_experiment

    torch.set_num_threads(threads)
    run_id = cfg.run_id()
    finished = is_finished(run_dir(results_dir, run_id))
    if cfg.defense != "lfighter":
        run_experiment(cfg, data_root=data_root, results_dir=results_dir, progress=False, force=force or finished)
        return run_id
    path = record_path(results_dir, cfg)
    if finished and not force:
        with tempfile.TemporaryDirectory(prefix=".record-", dir=results_dir) as tmp:
            fresh = record_path(tmp, cfg)
            run_experiment(cfg, data_root=data_root, results_dir=tmp, progress=False,
                           on_round=LFighterRecorder(fresh, cfg.source_class, cfg.target_class))
            ours = pd.read_csv(run_dir(tmp, run_id) / METRICS)
            stored = pd.read_csv(run_dir(results_dir, run_id) / METRICS)
            if list(ours.columns) != list(stored.columns) or not np.allclose(
                    ours.to_numpy(dtype=float), stored.to_numpy(dtype=float), rtol=0, atol=1e-6, equal_nan=True):
                warnings.warn(f"Run {run_id} recomputed for its LFighter record differs from the stored "
                              f"{METRICS} (another torch thread count or CPU?); the record is not kept. "
                              f"Recompute the run itself with force=True to have both.", stacklevel=2)
                return run_id
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(fresh, path)
        return run_id
    if force or not (run_dir(results_dir, run_id) / CHECKPOINT).is_file():
        path.unlink(missing_ok=True)  # the run starts at round 0: so does its record
    run_experiment(cfg, data_root=data_root, results_dir=results_dir, progress=False, force=force,
                   on_round=LFighterRecorder(path, cfg.source_class, cfg.target_class))
    return run_id


def run_beyond(runs: Sequence[PlannedRun], data_root: str | Path | None = None, results_dir: str | Path = "results",
               workers: int = 2, force: bool = False) -> pd.DataFrame:
    """Compute the runs still to compute (``workers`` processes) and return one summary row per run
    (:func:`flhelpers.fl.grid.run_grid`'s columns plus ``key``)."""
    configs = [r.config for r in runs]
    for c in configs:
        validate_config(c)
    todo = [c for c in configs if _needs_computing(c, results_dir, force)]
    root = None if data_root is None else str(data_root)
    if todo:
        threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else max(1, _torch_threads())
        if workers == 1 or len(todo) == 1:
            for i, c in enumerate(todo):
                _compute(c, root, str(results_dir), threads, force)
                print(f"beyond: {i + 1}/{len(todo)} runs computed", flush=True)
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context) as pool:
                futures = [pool.submit(_compute, c, root, str(results_dir), threads, force) for c in todo]
                for i, f in enumerate(as_completed(futures)):
                    f.result()
                    print(f"beyond: {i + 1}/{len(todo)} runs computed", flush=True)
    rows = run_grid(configs, data_root, results_dir, progress=False)
    rows.insert(0, "key", [r.key for r in runs])
    return rows


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# ----------------------------------------------------------------------------- tables

def _pct(frame: pd.DataFrame) -> pd.DataFrame:
    return frame * 100.0


def _cell(rows: pd.DataFrame, key: str, defense: str, ratio: float, metric: str) -> float:
    sel = rows[(rows["key"] == key) & (rows["defense"] == defense) & np.isclose(rows["attacker_ratio"], ratio)]
    if sel.empty or metric not in sel or sel[metric].isna().all():
        return float("nan")
    return float(sel[metric].mean())


def _defenses(rows: pd.DataFrame) -> list[str]:
    present = set(rows["defense"])
    return [d for d in ALL_DEFENSES if d in present] + sorted(present - set(ALL_DEFENSES))


#: per attack key, the headline metric columns (column name, heading suffix)
def headline_metrics(attack: BeyondAttack) -> tuple[tuple[str, str], ...]:
    """The metrics that matter for ``attack``: backdoor ASR for a backdoor, Src-Acc and ASR of each
    pair for two pairs, Src-Acc and ASR of 7 -> 1 otherwise."""
    if attack.is_backdoor:
        return (("backdoor_attack_success_rate", "backdoor ASR"), ("accuracy", "All-Acc"))
    if attack.attack == "multi-pair-flip":
        out = []
        for s, t in attack.kwargs["pairs"]:
            out += [(f"source_accuracy_{s}_{t}", f"Src-Acc {s}->{t}"), (f"attack_success_rate_{s}_{t}", f"ASR {s}->{t}")]
        return tuple(out)
    return (("source_accuracy", "Src-Acc 7->1"), ("attack_success_rate", "ASR 7->1"))


def clean_value(rows: pd.DataFrame, metric: str) -> float:
    """``metric`` of the model trained without attackers (FedAvg): the clean runs measure every metric."""
    for key in ("clean-pairs", "clean-backdoor"):
        v = _cell(rows, key, "fedavg", 0.0, metric)
        if not np.isnan(v):
            return v
    return float("nan")


def attack_table(rows: pd.DataFrame, plan: BeyondPlan, kind: str, ratio: float) -> pd.DataFrame:
    """Defenses x (no attack, then one column per attack) of one kind of metric, in %.

    ``kind``: ``"src"`` (Src-Acc of each flip, of each pair under two pairs), ``"asr"`` (their ASR)
    or ``"backdoor"`` (backdoor ASR of each backdoor attack). The first column is the value
    without attackers (FedAvg), repeated on every row.
    """
    columns: list[tuple[str, str, str]] = []  # (heading, key, metric)
    for a in plan.attacks:
        for metric, heading in headline_metrics(a):
            want = ("backdoor" if a.is_backdoor and metric.startswith("backdoor") else
                    "src" if not a.is_backdoor and "source_accuracy" in metric else
                    "asr" if not a.is_backdoor and "attack_success_rate" in metric else None)
            if want == kind:
                suffix = heading.split(" ", 1)[1] if a.attack == "multi-pair-flip" else ""
                # the spread in the heading: two several-pairs attacks must not share (and overwrite) a column
                spread = a.kwargs.get("spread", "each")
                columns.append((a.label if not suffix else f"two pairs ({spread}): {suffix}", a.key, metric))
    defenses = _defenses(rows[rows["attacker_ratio"] > 0])
    table = pd.DataFrame(index=defenses)
    base_metric = {"src": "source_accuracy", "asr": "attack_success_rate", "backdoor": "backdoor_attack_success_rate"}
    table["no attack"] = clean_value(rows, base_metric[kind])
    assert len({c[0] for c in columns}) == len(columns), "two columns of the table share a heading"
    for heading, key, metric in columns:
        table[heading] = [_cell(rows, key, d, ratio, metric) for d in defenses]
    ran = table.drop(columns="no attack").notna().any(axis=1)  # rules that met none of these attacks: out
    return _pct(table[ran])


def no_attack_row(rows: pd.DataFrame, plan: BeyondPlan) -> dict[str, float]:
    """Each attack's headline metrics on the clean model (FedAvg, no attackers), in %."""
    return {heading: clean_value(rows, metric) * 100 for a in plan.attacks for metric, heading in headline_metrics(a)}


def lfighter_detection(rows: pd.DataFrame, plan: BeyondPlan) -> pd.DataFrame:
    """LFighter's detection TPR and FPR (%) per attack and attacker ratio (rows: attacks)."""
    out = []
    for a in plan.attacks:
        for r in plan.ratios:
            out.append({"attack": a.label, "attacker ratio": f"{r:.0%}",
                        "TPR (%)": 100 * _cell(rows, a.key, "lfighter", r, "detection_tpr"),
                        "FPR (%)": 100 * _cell(rows, a.key, "lfighter", r, "detection_fpr")})
    return pd.DataFrame(out).set_index(["attack", "attacker ratio"])


def camouflage_curve(rows: pd.DataFrame, plan: BeyondPlan) -> pd.DataFrame:
    """Against LFighter at the plan's highest ratio, per ``lam``: ASR, Src-Acc, TPR, FPR (%).

    ``lam = 0`` is the paper's flip (the grid's ``flip`` run); the grid's camouflage run gives its ``lam``."""
    top = max(plan.ratios)
    grid_lam = float(next(a for a in plan.attacks if a.key == "camouflage").kwargs["lam"])
    out = []
    for lam in plan.lams:
        key = "flip" if lam == 0 else "camouflage" if float(lam) == grid_lam else f"lam={lam:g}"
        out.append({"lam": float(lam), **{name: 100 * _cell(rows, key, "lfighter", top, metric) for name, metric in (
            ("ASR (%)", "attack_success_rate"), ("Src-Acc (%)", "source_accuracy"),
            ("TPR (%)", "detection_tpr"), ("FPR (%)", "detection_fpr"))}})
    return pd.DataFrame(out).set_index("lam")


def neuron_choices(rows: pd.DataFrame, results_dir: str | Path, key: str, ratio: float) -> pd.Series:
    """How often LFighter's Procedure 1 clustered on each neuron pair in the run of ``key`` at ``ratio``
    (from its per-round record; empty when the record is absent)."""
    sel = rows[(rows["key"] == key) & (rows["defense"] == "lfighter") & np.isclose(rows["attacker_ratio"], ratio)]
    if sel.empty:
        return pd.Series(dtype=int)
    path = Path(results_dir) / "records" / f"{sel['run_id'].iloc[0]}.csv"
    if not path.is_file():
        return pd.Series(dtype=int)
    rec = read_record(path)
    pairs = rec["neurons"].fillna("").map(lambda s: " & ".join(sorted(s.split())) if s else "none")
    return pairs.value_counts()


# ----------------------------------------------------------------------------- findings

def holds(value: float, clean: float, higher_is_better: bool, margin: float = HOLD_MARGIN) -> bool:
    """A rule holds when its metric is within ``margin`` of the no-attack value (Src-Acc not lower,
    backdoor ASR not higher by more than ``margin``)."""
    if np.isnan(value) or np.isnan(clean):
        return False
    return value >= clean - margin if higher_is_better else value <= clean + margin


def verdicts(rows: pd.DataFrame, plan: BeyondPlan, ratio: float) -> pd.DataFrame:
    """Per attack and defense, the headline value (%), the no-attack value (%) and whether the rule holds.

    The headline is the Src-Acc of 7 -> 1 (the worse pair under two pairs) for flips and the
    backdoor ASR for backdoors; "holds" is :func:`holds` with :data:`HOLD_MARGIN`.
    """
    out = []
    for a in plan.attacks:
        if a.is_backdoor:
            metrics, better = ["backdoor_attack_success_rate"], False
        elif a.attack == "multi-pair-flip":
            metrics, better = [f"source_accuracy_{s}_{t}" for s, t in a.kwargs["pairs"]], True
        else:
            metrics, better = ["source_accuracy"], True
        for d in plan.defenses_of(a):
            cells = [(_cell(rows, a.key, d, ratio, m), clean_value(rows, m), m) for m in metrics]
            if any(np.isnan(v) for v, _, _ in cells):
                continue
            worst = min(cells, key=lambda c: (c[0] - c[1]) if better else (c[1] - c[0]))
            out.append({"attack": a.key, "label": a.label, "defense": d, "metric": worst[2],
                        "value": 100 * worst[0], "no attack": 100 * worst[1],
                        "holds": holds(worst[0], worst[1], better)})
    return pd.DataFrame(out)


#: a round *lets the attackers in* when a rule kept at least this share of them, and *catches*
#: them when it rejected at least this share (:func:`swings`)
SWING_SHARE = 0.9
#: a rule *swings* when it has at least this many rounds of each kind (:func:`swings`)
MIN_SWING_ROUNDS = 3


def swing_kinds(metrics: pd.DataFrame) -> pd.Series:
    """Each round of ``metrics`` (``tp``, ``fn``) as ``"caught"`` (at least :data:`SWING_SHARE` of the
    round's attackers rejected), ``"let in"`` (at least that share kept) or ``"mixed"``."""
    attackers = metrics["tp"] + metrics["fn"]
    has = attackers > 0
    kinds = pd.Series("mixed", index=metrics.index)
    kinds[has & (metrics["tp"] >= SWING_SHARE * attackers)] = "caught"
    kinds[has & (metrics["fn"] >= SWING_SHARE * attackers)] = "let in"
    return kinds


def swings(results_dir: str | Path, run_id: str, start: int = 5) -> dict[str, float] | None:
    """A run's per-round detection (``metrics.csv``'s ``tp``, ``fn``, ``fp``, ``tn``, ``accepted``)
    from round ``start`` on, sorted into the rounds that *caught* the attackers (rejected at least
    :data:`SWING_SHARE` of the round's attackers) and those that *let them in* (kept at least that
    share). Returns the two counts, the rounds counted, the source accuracy after each kind, the
    share of honest peers rejected and the peers admitted in let-in rounds, and how many let-in
    rounds come right after a caught round; ``None`` without per-round detection counts."""
    path = run_dir(results_dir, run_id) / METRICS
    if not path.is_file():
        return None
    m = pd.read_csv(path)
    if not {"tp", "fn", "fp", "tn", "source_accuracy"} <= set(m.columns):
        return None
    m = m[m["round"] >= start].reset_index(drop=True)
    honest = m["fp"] + m["tn"]
    kinds = swing_kinds(m)
    caught, let_in = kinds == "caught", kinds == "let in"
    after_caught = let_in & caught.shift(1, fill_value=False)
    nan = float("nan")
    return {"rounds": int(len(m)), "caught": int(caught.sum()), "let_in": int(let_in.sum()),
            "src_caught": float(m.loc[caught, "source_accuracy"].mean()) if caught.any() else nan,
            "src_let_in": float(m.loc[let_in, "source_accuracy"].mean()) if let_in.any() else nan,
            "fpr_let_in": float((m["fp"] / honest)[let_in].mean()) if let_in.any() else nan,
            "admitted_let_in": float(m.loc[let_in, "accepted"].mean()) if let_in.any() and "accepted" in m else nan,
            "let_in_after_caught": int(after_caught.sum())}


def _is_swing(s: dict[str, float] | None) -> bool:
    return s is not None and s["caught"] >= MIN_SWING_ROUNDS and s["let_in"] >= MIN_SWING_ROUNDS


def _swing_start(attack: BeyondAttack) -> int:
    """The first round :func:`swings` looks at: round 5 (the model has learnt the source class), and
    not before the attack starts."""
    return max(5, int(attack.kwargs.get("start_round", 0)))


def swing_table(rows: pd.DataFrame, plan: BeyondPlan, results_dir: str | Path, ratio: float) -> pd.DataFrame:
    """Every (attack, rule) run at ``ratio`` that swings (:func:`swings`: at least
    :data:`MIN_SWING_ROUNDS` rounds that caught the attackers and as many that let them in), with
    its counts, the Src-Acc after each kind of round and the honest peers rejected in let-in rounds (%)."""
    out = []
    for a in plan.attacks:
        sel = rows[(rows["key"] == a.key) & np.isclose(rows["attacker_ratio"], ratio)]
        for _, r in sel.iterrows():
            run_id = r.get("run_id")
            s = swings(results_dir, run_id, _swing_start(a)) if isinstance(run_id, str) else None
            if _is_swing(s):
                out.append({"attack": a.label, "defense": r["defense"], "from round": _swing_start(a),
                            "rounds": s["rounds"], "caught": s["caught"], "let in": s["let_in"],
                            "let in right after caught": s["let_in_after_caught"],
                            "Src-Acc caught (%)": 100 * s["src_caught"], "Src-Acc let in (%)": 100 * s["src_let_in"],
                            "honest rejected when let in (%)": 100 * s["fpr_let_in"]})
    if not out:
        return pd.DataFrame()
    return pd.DataFrame(out).set_index(["attack", "defense"])


def _swing_note(rows: pd.DataFrame, results_dir: str | Path, key: str, defense: str, ratio: float,
                start: int = 5) -> str:
    """A sentence on a breaking rule that swings between catching the attackers and letting them
    in (at least 3 rounds of each from round ``start``, :func:`swings`), or ``""``."""
    sel = rows[(rows["key"] == key) & (rows["defense"] == defense) & np.isclose(rows["attacker_ratio"], ratio)]
    run_id = sel["run_id"].iloc[0] if not sel.empty and "run_id" in sel else None
    if not isinstance(run_id, str):
        return ""
    s = swings(results_dir, run_id, start)
    if not _is_swing(s):
        return ""
    text = (f" {defense} swings from round {start} on: in {s['caught']} of {s['rounds']} rounds it rejected at least "
            f"{SWING_SHARE:.0%} of the attackers (Src-Acc {100 * s['src_caught']:.1f} % after them), in "
            f"{s['let_in']} it kept at least {SWING_SHARE:.0%} of them and rejected {s['fpr_let_in']:.0%} of the "
            f"honest peers (Src-Acc {100 * s['src_let_in']:.1f} %), {s['let_in_after_caught']} of those right "
            f"after a round that caught them, so its last-10 mean averages two states.")
    if defense == "flame" and not np.isnan(s["admitted_let_in"]):
        text += (f" FLAME admits one HDBSCAN cluster of at least K // 2 + 1 peers, and in the let-in rounds it "
                 f"admitted {s['admitted_let_in']:.0f} on average: the attackers' mutually aligned updates with the "
                 f"honest peers nearest them fill that cluster after a clean round, the honest peers' common "
                 f"repair of the flipped model fills it after a poisoned one.")
    return text


def _rules(frame: pd.DataFrame, held: bool) -> str:
    names = frame.loc[frame["holds"] == held, "defense"].tolist()
    return ", ".join(names) if names else "none"


def findings(rows: pd.DataFrame, plan: BeyondPlan, results_dir: str | Path, ratio: float | None = None) -> list[str]:
    """One paragraph (Markdown) per attack, from the numbers of the runs and LFighter's records:
    which rules hold, which break, LFighter's detection, and for two pairs the neurons it picked."""
    ratio = max(plan.ratios) if ratio is None else ratio
    table = verdicts(rows, plan, ratio)
    if table.empty:
        return ["No finished runs of the attacks yet."]
    out = []
    for a in plan.attacks:
        v = table[table["attack"] == a.key]
        if v.empty:
            continue
        metric = "backdoor ASR" if a.is_backdoor else "Src-Acc"
        lf = v[v["defense"] == "lfighter"]
        values = "; ".join(f"{d} {x:.1f} %" for d, x in zip(v["defense"], v["value"]))
        text = (f"**{a.label}** ({ratio:.0%} attackers, {metric}; no attack {v['no attack'].iloc[0]:.1f} %): "
                f"{values}. Holds (within {100 * HOLD_MARGIN:.0f} points of no attack): {_rules(v, True)}; breaks: {_rules(v, False)}.")
        tpr = _cell(rows, a.key, "lfighter", ratio, "detection_tpr")
        fpr = _cell(rows, a.key, "lfighter", ratio, "detection_fpr")
        if not lf.empty and not np.isnan(tpr):
            text += f" LFighter rejected {tpr:.0%} of the attackers' updates and {fpr:.0%} of the honest ones."
        if a.is_backdoor:
            rates = [(d, _cell(rows, a.key, d, ratio, "detection_tpr"), _cell(rows, a.key, d, ratio, "detection_fpr"))
                     for d in v["defense"] if d not in ("fedavg", "median", "trimmed-mean")]  # they reject no one
            shown = ", ".join(f"{d} {100 * t:.0f} / {100 * f:.0f} %" for d, t, f in rates if not np.isnan(t))
            if shown:
                text += f" Rejected attackers / honest peers (TPR / FPR): {shown}."
        for d in v.loc[~v["holds"], "defense"]:
            text += _swing_note(rows, results_dir, a.key, d, ratio, _swing_start(a))
        if a.key == "rate":
            text += (" An attacker that sits a round out sends an honest update, which LFighter rightly keeps; "
                     "the TPR counts those rounds as misses, so about half of the attackers' rounds cannot be caught.")
        if a.key == "late":
            text += " Before R0 no one attacks, so the TPR counts those rounds as misses too."
        if a.attack == "multi-pair-flip":
            choices = neuron_choices(rows, results_dir, a.key, ratio)
            if len(choices):
                shown = ", ".join(f"{pair} in {n} rounds" for pair, n in choices.items())
                text += f" Procedure 1 clustered on neurons {shown} (of {int(choices.sum())})."
        mended = [(m, h) for m, h in headline_metrics(a) if not np.isnan(_cell(rows, f"mend-{a.key}", "lfighter", ratio, m))]
        if mended:
            shown = ", ".join(f"{h} {100 * _cell(rows, a.key, 'lfighter', ratio, m):.1f} -> "
                              f"{100 * _cell(rows, f'mend-{a.key}', 'lfighter', ratio, m):.1f} %" for m, h in mended)
            fpr2 = _cell(rows, f"mend-{a.key}", "lfighter", ratio, "detection_fpr")
            text += (f" LFighter with 2 passes (the option of section 5): {shown}; its FPR "
                     f"{100 * fpr:.0f} -> {100 * fpr2:.0f} %.")
        if a.key == "camouflage":
            curve = camouflage_curve(rows, plan)
            shown = "; ".join(f"lam {lam:g}: ASR {r['ASR (%)']:.1f} %, TPR {r['TPR (%)']:.0f} %"
                              for lam, r in curve.iterrows() if not np.isnan(r["ASR (%)"]))
            text += f" Against LFighter as lam grows: {shown}."
        out.append(text)
    return out


def mend_table(rows: pd.DataFrame, plan: BeyondPlan) -> pd.DataFrame:
    """The paper's LFighter beside the mended one (:data:`MEND_KWARGS`) on the same attacks, at the
    highest ratio: Src-Acc and ASR of each attacked pair, detection TPR/FPR (%), and the aggregation
    time per round (ms), the mend's cost."""
    top = max(plan.ratios)
    by_key = {a.key: a for a in plan.attacks}
    out = []
    for key in plan.mend_attacks:
        a = by_key[key]
        metrics = [(m, h) for m, h in headline_metrics(a)]
        for name, run_key in (("LFighter (paper)", key), ("LFighter, 2 passes", f"mend-{key}")):
            row: dict[str, Any] = {"attack": a.label, "rule": name}
            for metric, heading in metrics:
                row[f"{heading} (%)"] = 100 * _cell(rows, run_key, "lfighter", top, metric)
            row["TPR (%)"] = 100 * _cell(rows, run_key, "lfighter", top, "detection_tpr")
            row["FPR (%)"] = 100 * _cell(rows, run_key, "lfighter", top, "detection_fpr")
            row["aggregation (ms/round)"] = 1000 * _cell(rows, run_key, "lfighter", top, "aggregation_time_per_round")
            out.append(row)
    return pd.DataFrame(out).set_index(["attack", "rule"])


def write_findings(notes: Sequence[str], results_dir: str | Path) -> Path:
    """Write :func:`findings` to ``<results_dir>/tables/findings_beyond.md`` (one paragraph each)."""
    path = Path(results_dir) / "tables" / "findings_beyond.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(notes) + "\n")
    return path


def defense_attack_table(rows: pd.DataFrame, plan: BeyondPlan, ratio: float | None = None) -> pd.DataFrame:
    """The closing table: defenses x attacks at ``ratio`` (default the highest), Src-Acc % for flips
    (the worse pair for two pairs) and backdoor ASR % for backdoors, with the no-attack row."""
    ratio = max(plan.ratios) if ratio is None else ratio
    v = verdicts(rows, plan, ratio)
    if v.empty:
        return pd.DataFrame()
    table = v.pivot(index="defense", columns="label", values="value")
    table = table.reindex(index=_defenses(v), columns=[a.label for a in plan.attacks if a.label in table.columns])
    clean = v.drop_duplicates("label").set_index("label")["no attack"]
    table.loc["no attack (FedAvg)"] = clean.reindex(table.columns)
    return table


def select_runs(runs: Sequence[PlannedRun], ratios: Sequence[float] | None = None,
                keys: Sequence[str] | None = None, defenses: Sequence[str] | None = None) -> list[PlannedRun]:
    """The runs of ``runs`` at one of ``ratios``, with one of the attack ``keys`` and one of the
    ``defenses`` (``None``: no filter), in their order; the clean runs (ratio 0) pass any ratio
    filter, since every attack's table needs them."""
    def keep(r: PlannedRun) -> bool:
        c = r.config
        return ((ratios is None or c.attacker_ratio == 0 or any(np.isclose(c.attacker_ratio, x) for x in ratios))
                and (keys is None or r.key in keys) and (defenses is None or c.defense in defenses))

    if keys is not None:
        known = {r.key for r in runs}
        unknown = sorted(set(keys) - known)
        if unknown:
            raise ValueError(f"Unknown attack key(s) {unknown}; valid: {sorted(known)}.")
    return [r for r in runs if keep(r)]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m flhelpers_lab.beyond --profile medium [--ratios 0.4] [--keys flip pairs]``:
    compute the study's runs of a profile (finished runs are skipped, unfinished ones resume) into
    ``--results-dir`` (default: the profile's working store, ``results/medium`` at medium, git-ignored;
    ``--results-dir results/reference/medium`` computes the committed reference runs).
    ``--ratios``, ``--keys`` and ``--defenses`` compute a part of the plan first (the clean runs
    always come along)."""
    import argparse

    from flhelpers_lab.reference import default_results_dir

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--profile", default="medium")
    p.add_argument("--results-dir", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ratios", type=float, nargs="+", default=None, help="attacker ratios to compute (default: all)")
    p.add_argument("--keys", nargs="+", default=None, help="attack keys to compute (default: all)")
    p.add_argument("--defenses", nargs="+", default=None, help="rules to compute (default: all)")
    args = p.parse_args(argv)
    results = args.results_dir or default_results_dir(args.profile)
    try:
        runs = select_runs(planned_runs(beyond_plan(args.profile)), args.ratios, args.keys, args.defenses)
    except ValueError as e:
        p.error(str(e))
    rows = run_beyond(runs, args.data_root, results, workers=args.workers)
    print(f"{len(rows)} runs in {results}")

if __name__ == "__main__":
    main()


__all__ = ["ALL_DEFENSES", "MEND_KWARGS", "BeyondAttack", "mend_table", "BeyondPlan", "HOLD_MARGIN", "PlannedRun", "SECOND_PAIR", "attack_table",
           "beyond_plan", "camouflage_curve", "clean_value", "defense_attack_table", "findings", "headline_metrics",
           "holds", "lfighter_detection", "SWING_SHARE", "MIN_SWING_ROUNDS", "swing_kinds", "swing_table", "swings", "neuron_choices", "no_attack_row", "only_finished_runs", "planned_runs",
           "record_path", "run_beyond", "select_runs", "study_attacks", "verdicts", "write_findings"]
