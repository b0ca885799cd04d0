"""The MNIST-Extreme seeds study (flhelpers_lab.investigations.lfighter_seeds), by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flhelpers_lab.lfighter_record import COLUMNS, record_path
from flhelpers_lab.investigations.lfighter_seeds import (MISS_KINDS, SEEDS, copy_reference_runs, miss_kind,
                                                         study_configs, study_rounds, study_summary)

SRC, TGT = 7, 1


@pytest.mark.parametrize("company, tpr, kind", [
    ("3:4A+6H[7]", 0.0, "source"),          # merged with the honest 7-holders
    ("0:4A+86H[0 1 2 3 5 6 7 8 9]", 0.0, "many"),  # one large cluster of many classes
    ("2:4A+10H[1]", 0.0, "target"),         # with the class-1 peers
    ("5:4A+0H[]", 0.0, "own"),              # a cluster of their own, missed anyway
    ("-1:3A+0H[] 4:1A+5H[7]", 0.25, "source"),  # noise is rejected: the cluster decides
    ("3:1A+6H[7] 4:3A+0H[]", 0.75, "source"),  # the attackers' own cluster was the rejected one
    ("3:1A+6H[7] 5:2A+10H[1]", 0.0, "target"),  # among mixed clusters, the one with most attackers
    ("2:4A+0H[]", 1.0, ""),                 # nothing missed
    ("", 0.0, ""),                          # no Procedure 2 clusters recorded
    (float("nan"), float("nan"), ""),       # no attacker in the round
])
def test_miss_kind_by_hand(company, tpr, kind) -> None:
    assert miss_kind(company, tpr, SRC, TGT) == kind


def test_study_configs_pair_the_paper_rule_with_the_remedy_per_seed() -> None:
    configs = study_configs()
    assert [c.seed for c in configs] == [s for s in SEEDS for _ in (0, 1)]
    assert all(c.benchmark == "mnist-extreme" and c.defense == "lfighter" and c.attacker_ratio == 0.4
               for c in configs)
    assert [c.defense_kwargs for c in configs[:2]] == [{}, {"split_by_own_top": True}]
    assert len({c.run_id() for c in configs}) == len(configs)


def _write_run(store: Path, cfg, src: list[float], tpr: list[float], company: list[str]) -> None:
    run = store / "runs" / cfg.run_id()
    run.mkdir(parents=True)
    n = len(src)
    pd.DataFrame({"round": range(n), "accuracy": [0.8] * n, "source_accuracy": src,
                  "attack_success_rate": [1 - s for s in src]}).to_csv(run / "metrics.csv", index=False)
    (run / "config.json").write_text(json.dumps({"config": cfg.to_dict()}))
    (run / "summary.json").write_text("{}")
    rec = pd.DataFrame({c: [""] * n for c in COLUMNS})
    rec["round"], rec["tpr"], rec["fpr"], rec["attacker_company"] = range(n), tpr, [0.0] * n, company
    path = record_path(store, cfg.run_id())
    path.parent.mkdir(parents=True, exist_ok=True)
    rec.to_csv(path, index=False)


def test_study_rounds_and_summary_on_a_small_store(tmp_path: Path) -> None:
    paper, split = study_configs(seeds=(0,))
    # round 1 is missed from a model with Src-Acc 0.2 (not learnt), round 3 from 0.9 (learnt)
    _write_run(tmp_path, paper, [0.2, 0.3, 0.9, 0.4], [1.0, 0.0, 1.0, 0.5],
               ["1:4A+0H[]", "3:4A+6H[7]", "1:4A+0H[]", "0:2A+80H[0 1 2]"])
    _write_run(tmp_path, split, [0.2, 0.8, 0.9, 0.9], [1.0, 1.0, 1.0, 1.0], ["1:4A+0H[]"] * 4)
    rounds = study_rounds(tmp_path, [paper, split])
    assert len(rounds) == 8 and set(rounds["rule"]) == {"paper", "split"}
    first = rounds[rounds["rule"] == "paper"]
    assert first["missed_with"].tolist() == ["", "source", "", "many"]
    assert np.isnan(first["src_acc_before"].iloc[0]) and first["src_acc_before"].iloc[3] == 0.9
    s = study_summary(rounds, last=2).set_index("rule")
    assert s.loc["paper", "missed_rounds"] == 2 and s.loc["paper", "missed_before_learnt"] == 1
    assert s.loc["paper", "missed_with_source"] == 1 and s.loc["paper", "missed_with_many"] == 1
    assert s.loc["paper", "tpr"] == pytest.approx(62.5) and s.loc["paper", "src_acc"] == pytest.approx(65.0)
    assert s.loc["split", "missed_rounds"] == 0 and all(s.loc["split", f"missed_with_{k}"] == 0 for k in MISS_KINDS)


def test_reference_runs_with_a_record_are_copied_and_the_papers_own_runs_are_not_computed_here(tmp_path, capsys):
    paper0, split0, paper1, split1 = study_configs(seeds=(0, 1))
    ref, out = tmp_path / "reference", tmp_path / "out"
    _write_run(ref, paper0, [0.5, 0.6], [1.0, 1.0], ["", ""])
    todo = copy_reference_runs([paper0, split0, paper1, split1], out, ref)
    assert todo == [paper0, split0, split1]  # seed 1's paper run is the reference store's to compute
    assert "not in" in capsys.readouterr().out
    for name in ("metrics.csv", "config.json", "summary.json"):
        copied, original = out / "runs" / paper0.run_id() / name, ref / "runs" / paper0.run_id() / name
        assert copied.read_bytes() == original.read_bytes()
    assert record_path(out, paper0.run_id()).read_bytes() == record_path(ref, paper0.run_id()).read_bytes()
    assert copy_reference_runs([paper0], out, ref) == [paper0]  # finished in out: read back, not copied again
