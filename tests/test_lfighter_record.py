"""LFighter's per-round record (flhelpers_lab.lfighter_record), by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from flhelpers_lab.lfighter_record import LFighterRecorder, read_record, record_row, record_summary


def _rows() -> torch.Tensor:
    """4 peers, 3 output neurons, rows of (weight, bias): neuron 2 largest, then 0, then 1.
    Peers 0 and 1 (the attackers) push neurons 2 and 0 one way, peers 2 and 3 the other."""
    r = torch.zeros(4, 3, 2, dtype=torch.float64)
    r[:, 2] = torch.tensor([[3.0, 0.0], [3.0, 0.1], [-3.0, 0.0], [-3.0, -0.1]])
    r[:, 0] = torch.tensor([[0.0, 2.0], [0.1, 2.0], [0.0, -2.0], [-0.1, -2.0]])
    r[:, 1] = 0.1
    return r


def test_record_row_by_hand():
    attackers = np.array([True, True, False, False])
    accepted = np.array([False, True, False, True])  # rejected: attacker 0 and honest 2
    row = record_row(_rows(), accepted, attackers, np.array([10, 11, 12, 13]),
                     {"source_target": [2, 0], "cluster_sizes": [2, 2], "reason": "r"}, source=2, target=0, seed=0)
    assert row["top_neurons"] == "2 0 1" and row["source_rank"] == 1 and row["target_rank"] == 2
    assert row["neurons"] == "2 0" and row["cluster_sizes"] == "2 2" and row["reason"] == "r"
    assert row["rejected"] == "10:A 12:H"
    assert row["tpr"] == 0.5 and row["fpr"] == 0.5
    # the oracle is Procedure 1 on the true pair's rows: filter_mild of those features
    from flhelpers.defenses.lfighter import filter_mild

    bad, _ = filter_mild(_rows()[:, [2, 0], :].reshape(4, -1).numpy(), seed=0)
    assert row["oracle_tpr"] == bad[attackers].mean() and row["oracle_fpr"] == bad[~attackers].mean()
    # 2 attackers against 3 honest peers, apart on the true pair: the oracle rejects exactly them
    five = torch.cat([_rows(), _rows()[3:]])
    five[4, 2, 1] = -0.2
    att5 = np.array([True, True, False, False, False])
    r5 = record_row(five, np.ones(5, bool), att5, np.arange(5), {}, 2, 0, 0)
    assert (r5["oracle_tpr"], r5["oracle_fpr"]) == (1.0, 0.0)
    # no attacker in the round: TPR is undefined, not 0
    none = record_row(_rows(), np.ones(4, bool), np.zeros(4, bool), np.arange(4), {}, 2, 0, 0)
    assert np.isnan(none["tpr"]) and none["fpr"] == 0.0 and none["rejected"] == ""


def test_record_summary_and_appending_reader(tmp_path):
    frame = pd.DataFrame({"round": [0, 1, 2], "neurons": ["1 3", "5 3", "3 5"],
                          "top_neurons": ["1 3 5", "5 3 1", "3 5 1"], "tpr": [0.0, 1.0, 0.5],
                          "fpr": [0.5, 0.0, 0.0], "oracle_tpr": [1.0, 1.0, 1.0], "oracle_fpr": [0.0, 0.0, 0.5]})
    s = record_summary(frame, source=5, target=3)
    assert s["rounds"] == 3 and s["both_top2"] == 2 and s["picked_true_pair"] == 2 and s["other_rounds"] == [0]
    assert s["tpr"] == 0.5 and abs(s["fpr"] - 1 / 6) < 1e-12 and s["oracle_tpr"] == 1.0

    class _Res:
        accepted = torch.tensor([False, True, False, True])
        info = {"source_target": [2, 0]}

    class _Ctx:
        seed = 0

        @staticmethod
        def gradients(x):
            return x

        class layout:
            @staticmethod
            def output_rows(x):
                return x

    class _Rec:
        def __init__(self, r):
            self.round, self.updates, self.result, self.context = r, _rows(), _Res(), _Ctx()
            self.is_attacker, self.peer_ids = np.array([True, True, False, False]), np.arange(4)

    rec = LFighterRecorder(tmp_path / "r.csv", 2, 0)
    for r in (0, 1, 1):  # round 1 written twice (a resumed run): the last one counts
        rec(_Rec(r))
    back = read_record(tmp_path / "r.csv")
    assert back["round"].tolist() == [0, 1] and back["rejected"].tolist() == ["0:A 2:H"] * 2


def test_records_table_reads_the_lfighter_runs_that_have_a_record(tmp_path):
    from flhelpers.config import benchmark_config
    from flhelpers_lab.lfighter_record import record_path, records_table

    lf = benchmark_config("cifar10-mild", "medium", defense="lfighter", attacker_ratio=0.4)
    fed = benchmark_config("cifar10-mild", "medium", defense="fedavg", attacker_ratio=0.4)
    path = record_path(tmp_path, lf.run_id())
    path.parent.mkdir(parents=True)
    pd.DataFrame({"round": [0, 1], "neurons": ["1 3", "5 3"], "top_neurons": ["1 3 5", "5 3 1"],
                  "tpr": [0.0, 1.0], "fpr": [0.5, 0.0], "oracle_tpr": [1.0, 1.0],
                  "oracle_fpr": [0.0, 0.0]}).to_csv(path, index=False)
    table = records_table(tmp_path, [fed, lf, lf.replace(seed=1)])  # no record: left out
    assert table["run_id"].tolist() == [lf.run_id()]
    row = table.iloc[0]
    assert row["both_top2"] == 1 and row["picked_true_pair"] == 1 and row["rounds_on_other_neurons"] == "0"


def test_extreme_round_records_whom_the_attackers_were_clustered_with():
    """Procedure 2's info, by hand: 6 peers; cluster 0 = honest 7-holders 2, 3 and attacker 0
    (own top neuron 1); cluster 1 = honest 1-holders 4, 5; attacker 1 is noise."""
    info = {"labels": [0, -1, 0, 0, 1, 1], "cluster_sizes": {"0": 3, "1": 2},
            "cluster_top_neuron": {"0": 7, "1": 1},
            "peer_top_neurons": [[1, 7], [1, 7], [7, 1], [7, 2], [1, 3], [1, 7]], "reason": "r"}
    rows = torch.zeros(6, 10, 2, dtype=torch.float64)
    rows[:, 7, 0], rows[:, 1, 0] = 2.0, 1.0
    attackers = np.array([True, True, False, False, False, False])
    accepted = np.array([True, False, True, True, True, True])
    row = record_row(rows, accepted, attackers, np.arange(6), info, source=7, target=1, seed=0)
    assert row["cluster_sizes"] == "3 2"  # the sizes, not the dict's labels
    assert row["clusters"] == "0:3:7 1:2:1"
    assert row["attacker_company"] == "-1:1A+0H[] 0:1A+2H[7]"
    assert (row["tpr"], row["fpr"]) == (0.5, 0.0)
    # Procedure 1's info has no clusters of Procedure 2: the columns stay empty
    mild = record_row(rows, accepted, attackers, np.arange(6), {"cluster_sizes": [4, 2]}, 7, 1, 0)
    assert mild["cluster_sizes"] == "4 2" and mild["clusters"] == "" and mild["attacker_company"] == ""


def test_the_grids_recorder_names_each_lfighter_runs_record(tmp_path):
    from flhelpers.config import benchmark_config
    from flhelpers_lab.lfighter_record import LFighterRecords, record_path

    lf = benchmark_config("mnist-iid", "quick", defense="lfighter", attacker_ratio=0.4)
    fedavg = lf.replace(defense="fedavg")
    released = lf.replace(defense="lfighter-released")
    paper_only, both = LFighterRecords(), LFighterRecords(("lfighter", "lfighter-released"), recompute_missing=False)
    assert paper_only.outputs(lf) == (f"records/{lf.run_id()}.csv",) and paper_only.outputs(fedavg) == ()
    assert paper_only.outputs(released) == () and both.outputs(released) == (f"records/{released.run_id()}.csv",)
    assert paper_only.start(fedavg, tmp_path) is None
    assert paper_only.needs_computing(lf, tmp_path) and not both.needs_computing(lf, tmp_path)
    assert not paper_only.needs_computing(fedavg, tmp_path) and not paper_only.whole_run(lf)
    record_path(tmp_path, lf.run_id()).parent.mkdir()
    record_path(tmp_path, lf.run_id()).write_text("round\n0\n")
    assert not paper_only.needs_computing(lf, tmp_path)
