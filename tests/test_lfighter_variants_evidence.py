"""The per-round evidence of the two LFighters (flhelpers_lab.investigations.lfighter_variants), on a hand-made store."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from flhelpers_lab.investigations.lfighter_variants import escape_round, evidence_markdown, round_evidence


def _store(tmp_path, tprs: list[float]) -> str:
    rid = "abc123"
    run = tmp_path / "runs" / rid
    run.mkdir(parents=True)
    cfg = {"defense": "lfighter-released", "attacker_ratio": 0.4, "rounds": len(tprs), "local_epochs": 1,
           "source_class": 5, "target_class": 3}
    (run / "config.json").write_text(json.dumps({"config": cfg, "run_id": rid}))
    pd.DataFrame({"round": range(len(tprs)), "source_accuracy": [0.1 * i for i in range(len(tprs))],
                  "attack_success_rate": 0.5, "accuracy": 0.6}).to_csv(run / "metrics.csv", index=False)
    (tmp_path / "records").mkdir()
    pd.DataFrame({"round": range(len(tprs)), "neurons": "5 3", "top_neurons": "5 3 0", "source_rank": 1,
                  "target_rank": 2, "cluster_sizes": "11 9", "reason": "",
                  "rejected": ["0:A 1:A 2:H" if t == 1.0 else "2:H" for t in tprs], "tpr": tprs, "fpr": 0.1,
                  "oracle_tpr": 1.0, "oracle_fpr": 0.0}).to_csv(tmp_path / "records" / f"{rid}.csv", index=False)
    return rid


def test_round_evidence_counts_roles_and_escape_is_the_first_round_of_full_detection_to_the_end(tmp_path) -> None:
    rid = _store(tmp_path, [1.0, 0.0, 1.0, 1.0, 1.0])
    ev = round_evidence(tmp_path, rid)
    assert ev["rejected"].tolist() == ["2A+1H", "0A+1H", "2A+1H", "2A+1H", "2A+1H"]
    assert ev["Src-Acc"].tolist() == pytest.approx([0, 10, 20, 30, 40])
    assert escape_round(ev) == 2  # round 0 is full too, but round 1 is not
    md = evidence_markdown(tmp_path, [rid, "missing"], "T")
    assert "from round 2 on: mean Src-Acc 30.0 %" in md and "Not computed yet." in md


def test_no_escape_when_the_last_round_misses(tmp_path) -> None:
    rid = _store(tmp_path, [1.0, 1.0, 0.0])
    assert escape_round(round_evidence(tmp_path, rid)) is None


def test_the_committed_findings_page_is_current() -> None:
    """``docs/findings/cifar10-mild.md`` is written from the committed store: it cannot drift from the runs."""
    from pathlib import Path

    from flhelpers_lab.investigations.lfighter_variants import docs_markdown
    from flhelpers_lab.store import reference_dir

    root = Path(__file__).resolve().parents[1]
    assert (root / "docs" / "findings" / "cifar10-mild.md").read_text() == docs_markdown(reference_dir("medium")), (
        "stale: run python -m flhelpers_lab.investigations.lfighter_variants --docs")
