"""The paper's published numbers: Table 1, Table 3 and what its figures show, as printed there.

Jebreel, Domingo-Ferrer, Sanchez and Blanco-Justicia, "Defending against the Label-flipping
Attack in Federated Learning" (LFighter): Table 1 (section 5.1), the journal's Table 3 at 40 %
attackers and the figures of section 6.2. Tables and notebooks print these beside this project's
runs (:mod:`flhelpers_lab.table3`, :mod:`flhelpers_lab.paper`, :mod:`flhelpers_lab.benchmark`),
so no prose types them.
"""

from __future__ import annotations

#: the paper's Table 1 (CIFAR10-iid): a good and a bad update of the same peer, per part of the model
#: (columns :data:`flhelpers.analysis.gradients.PARTS`), in the rows of
#: :func:`flhelpers.analysis.gradients.compare_updates`
PAPER_TABLE1: dict[str, tuple[float, float, float, float]] = {
    "magnitude (good)": (351123.0, 72.94, 23.38, 55.30),
    "magnitude (bad)": (351107.0, 100.23, 64.43, 65.95),
    "angle (degrees)": (0.41, 69.19, 115.0, 18.0),
}
#: the benchmark of the paper's Table 1
PAPER_TABLE1_BENCHMARK = "cifar10-iid"

#: the rules of the journal's Table 3 (paper section 6.2), in its column order
TABLE3_DEFENSES = ("fedavg", "median", "trimmed-mean", "multi-krum", "foolsgold", "lfighter")
#: the authors' released LFighter (:class:`~flhelpers.defenses.lfighter.LFighterReleased`), shown beside
#: the paper's text in every LFighter cell: the paper has one LFighter cell, which both are compared with
RELEASED_LFIGHTER = "lfighter-released"
#: Table 3's rows as this project draws them: the paper's rules, then the released LFighter
TABLE3_ROWS = TABLE3_DEFENSES + (RELEASED_LFIGHTER,)
#: how the two LFighters are named in tables
ROW_TITLES = {"lfighter": "lfighter (paper's text)", RELEASED_LFIGHTER: "lfighter (released code)"}

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
#: the journal's overall accuracy at 40 % (the paper's Table 3): FedAvg and LFighter only
PAPER_ALL_ACC_40: dict[str, dict[str, float]] = {"mnist": {"fedavg": 95.11, "lfighter": 96.30},
                                                 "cifar10": {"fedavg": 73.32, "lfighter": 72.82},
                                                 "imdb": {"fedavg": 56.09, "lfighter": 87.57}}
for _row in (*PAPER_TABLE3.values(), *PAPER_ALL_ACC_40.values()):
    _row[RELEASED_LFIGHTER] = _row["lfighter"]  # the paper's one LFighter cell, beside both variants
#: the benchmark each journal Table 3 row was measured on (its MNIST and CIFAR10 rows used a Dirichlet split)
TABLE3_BENCHMARKS: dict[str, str] = {"mnist-mild": "mnist", "cifar10-mild": "cifar10", "imdb": "imdb"}

#: what the paper's figures show across 0-50 % attackers (paper section 6.2)
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


__all__ = ["PAPER_ALL_ACC_40", "PAPER_FIGURE_READINGS", "PAPER_TABLE1", "PAPER_TABLE1_BENCHMARK", "PAPER_TABLE3",
           "RELEASED_LFIGHTER", "ROW_TITLES", "TABLE3_BENCHMARKS", "TABLE3_DEFENSES", "TABLE3_ROWS"]
