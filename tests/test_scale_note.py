"""The note a notebook prints next to a benchmark's numbers where its profile cannot show the finding."""

import pandas as pd

from flhelpers_lab.paper import paper_comparison, scale_note


def _rows() -> pd.DataFrame:
    return pd.DataFrame([{"benchmark": "cifar10-mild", "defense": d, "attacker_ratio": r, "accuracy": a,
                          "source_accuracy": 0.1, "attack_success_rate": 0.2}
                         for d, r, a in (("fedavg", 0.0, 0.22), ("fedavg", 0.3, 0.2), ("lfighter", 0.3, 0.21),
                                         ("lfighter-released", 0.3, 0.2))])


def test_cifar10_at_quick_says_so_next_to_the_numbers_with_its_accuracy() -> None:
    note = scale_note(_rows(), "cifar10-mild", "quick")
    assert "cannot show the paper's finding" in note and "All-Acc 22.0 %" in note
    assert scale_note(_rows(), "cifar10-mild", "medium") == ""
    assert scale_note(_rows(), "mnist-mild", "quick") == ""


def test_the_comparison_names_both_lfighters_and_gives_each_the_papers_cell() -> None:
    table = paper_comparison(_rows(), "cifar10")
    assert {"lfighter (paper's text)", "lfighter (released code)"} <= set(table.index)
    assert table.loc["lfighter (released code)", "Src-Acc % (paper, 40%)"] == 56.98
