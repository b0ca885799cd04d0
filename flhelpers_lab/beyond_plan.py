"""The Beyond study's plan: label-flipping attackers that know the defense, and a backdoor.

:func:`beyond_plan` gives, per profile, the attacks (:data:`flhelpers.attacks.DATA_POISONING_ATTACKS`,
each beside the paper's flip), the rules and the attacker ratios; :func:`planned_runs` turns it
into configurations, each tagged with the attack's key; :func:`select_runs` and
:func:`only_finished_runs` keep a part of them. :mod:`flhelpers_lab.beyond` computes them,
:mod:`flhelpers_lab.beyond_analysis` reads them.

Scale. ``quick`` (CI, about 6 minutes on 2 free cores): MNIST-Mild's quick preset (20 peers, 15
rounds, 8,000 images), 40 % attackers, FedAvg and LFighter against every flip (the median against
the paper's flip and two pairs), and also the median, Multi-Krum and FLAME against the backdoor.
``medium`` (not computed in CI): MNIST-Mild's medium preset (100 peers, 40 rounds), 30 % and 40 %,
every rule of the issue, model replacement, and a finer camouflage curve; its runs are read from
``results/reference/medium`` when they exist (``only_finished``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from flhelpers.config import ExperimentConfig, benchmark_config
from flhelpers.results import is_finished, run_dir

__all__ = ["ALL_DEFENSES", "BeyondAttack", "BeyondPlan", "MEND_KWARGS", "PlannedRun", "SECOND_PAIR", "beyond_plan",
           "only_finished_runs", "planned_runs", "select_runs", "study_attacks"]

#: the second pair of the several-pairs attack on MNIST (the first is the paper's 7 -> 1)
SECOND_PAIR = (3, 8)
#: the rules the issue names, in the paper's order (FLAME from the journal version)
ALL_DEFENSES = ("fedavg", "median", "trimmed-mean", "multi-krum", "foolsgold", "flame", "lfighter")
#: the mended LFighter of section 3: Procedure 1 a second time on the peers it kept
#: (:func:`flhelpers.defenses.lfighter.filter_mild_passes`); the paper's rule stays the default
MEND_KWARGS = {"passes": 2}


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
