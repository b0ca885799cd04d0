"""The Beyond study's tables and findings, from the summary rows of its runs and LFighter's records.

Each table sets an attack's metric beside its no-attack value (:func:`attack_table`,
:func:`defense_attack_table`, :func:`mend_table`, :func:`camouflage_curve`,
:func:`lfighter_detection`); :func:`verdicts` says which rules hold (:data:`HOLD_MARGIN`),
:func:`swings` and :func:`swing_table` which of them swing between catching the attackers and
letting them in, and :func:`findings` writes it all as one paragraph per attack
(:func:`write_findings`). The rows are :func:`flhelpers_lab.beyond.run_beyond`'s (a ``key`` column
beside :func:`flhelpers.fl.grid.run_grid`'s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from flhelpers.results import METRICS, run_dir
from flhelpers_lab.beyond_plan import ALL_DEFENSES, BeyondAttack, BeyondPlan
from flhelpers_lab.lfighter_record import read_record

__all__ = ["HOLD_MARGIN", "MIN_SWING_ROUNDS", "SWING_SHARE", "attack_table", "camouflage_curve", "clean_value",
           "defense_attack_table", "findings", "headline_metrics", "holds", "lfighter_detection", "mend_table",
           "neuron_choices", "no_attack_row", "swing_kinds", "swing_table", "swings", "verdicts", "write_findings"]

#: how far below the no-attack Src-Acc (or above the no-attack backdoor ASR) a rule may be and still "hold"
HOLD_MARGIN = 0.10


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
