"""The attacks beyond the paper (issue 20): hand examples, checks at construction, and tiny runs.

Each attack reduces to the plain label flip at its neutral setting (byte-identical metrics.csv
and summary.json on a tiny run), and the sequential and vectorized backends agree on each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from flhelpers.attacks import Backdoor, CamouflageFlip, MultiPairFlip, PartialFlip, TimedFlip
from flhelpers.attacks.backdoor import backdoor_positions, stamp
from flhelpers.attacks.camouflage import blend_output_layer
from flhelpers.attacks.multi_pair import flip_pairs
from flhelpers.attacks.partial_flip import partial_positions
from flhelpers.config import ConfigError, benchmark_config
from flhelpers.data.base import FLDataset
from flhelpers.fl.engine import build_experiment, run_experiment
from flhelpers.metrics import summarize
from flhelpers.metrics.attack_metrics import attack_metric_columns, backdoor_success, pair_metrics
from flhelpers.registry import ATTACKS


@dataclass
class _Peer:
    peer_id: int
    indices: torch.Tensor
    labels: torch.Tensor


def _dataset(x: torch.Tensor, y: torch.Tensor) -> FLDataset:
    return FLDataset("toy", x, y, x[:2], y[:2], 10, tuple(str(i) for i in range(10)))


# -- hand examples --------------------------------------------------------------------------------

def test_partial_positions_flip_the_rounded_share_of_source_samples_seeded():
    labels = torch.tensor([7, 1, 7, 7, 2, 7])  # source positions 0, 2, 3, 5
    first = partial_positions(labels, 7, 0.5, torch.Generator().manual_seed(3))
    again = partial_positions(labels, 7, 0.5, torch.Generator().manual_seed(3))
    assert len(first) == 2 and set(first.tolist()) <= {0, 2, 3, 5} and first.tolist() == again.tolist()
    assert partial_positions(labels, 7, 1.0, torch.Generator()).tolist() == [0, 2, 3, 5]
    assert len(partial_positions(labels, 7, 0.6, torch.Generator())) == 2  # floor(2.4 + 0.5)
    assert len(partial_positions(labels, 7, 0.65, torch.Generator())) == 3  # floor(2.6 + 0.5)
    choices = {tuple(partial_positions(labels, 7, 0.5, torch.Generator().manual_seed(s)).tolist())
               for s in range(20)}
    assert len(choices) > 1  # the seed matters


def test_partial_flip_relabels_only_the_chosen_samples():
    attack = PartialFlip(7, 1, 10, q=0.5)
    peer = _Peer(4, torch.arange(6), torch.tensor([7, 1, 7, 7, 2, 7]))
    ds = _dataset(torch.zeros(6, 1, 2, 2, dtype=torch.uint8), peer.labels)
    _, (poisoned,) = attack.poison_data(ds, [peer], [0], seed=0)
    changed = (poisoned.labels != peer.labels).nonzero().flatten().tolist()
    assert len(changed) == 2 and all(peer.labels[i] == 7 and poisoned.labels[i] == 1 for i in changed)


def test_flip_pairs_reads_the_true_labels_so_a_chain_swaps():
    labels = torch.tensor([7, 3, 1, 8, 7])
    assert flip_pairs(labels, [(7, 1), (3, 8)]).tolist() == [1, 8, 1, 8, 1]
    assert flip_pairs(labels, [(7, 1), (1, 7)]).tolist() == [1, 3, 7, 8, 1]


def test_multi_pair_split_gives_attackers_pairs_in_turn():
    attack = MultiPairFlip(7, 1, 10, pairs=[[7, 1], [3, 8]], spread="split")
    assert [attack.pairs_of(r) for r in range(3)] == [((7, 1),), ((3, 8),), ((7, 1),)]
    assert MultiPairFlip(7, 1, 10, pairs=[[7, 1], [3, 8]]).pairs_of(1) == ((7, 1), (3, 8))
    assert attack.evaluation_pairs() == ((7, 1), (3, 8))
    assert MultiPairFlip(7, 1, 10).evaluation_pairs() == ()  # one pair: the label flip's own columns


def test_timing_starts_at_r0_and_attacks_a_share_rate_of_rounds():
    late = TimedFlip(7, 1, 10, start_round=3)
    late.clean_peers = {0: None}
    assert [late.attacks_in(0, t) for t in range(5)] == [False, False, False, True, True]
    half = TimedFlip(7, 1, 10, rate=0.5)
    draws = [half.attacks_in(2, t) for t in range(400)]
    assert draws == [half.attacks_in(2, t) for t in range(400)]  # seeded
    assert 0.4 < np.mean(draws) < 0.6
    assert draws != [half.attacks_in(3, t) for t in range(400)]  # each peer its own draws


def test_round_peers_swaps_in_clean_data_when_an_attacker_sits_out():
    attack = TimedFlip(7, 1, 10, start_round=2)
    peers = [_Peer(0, torch.arange(2), torch.tensor([7, 2])), _Peer(1, torch.arange(2, 4), torch.tensor([7, 7]))]
    ds = _dataset(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([7, 2, 7, 7]))
    _, poisoned = attack.poison_data(ds, peers, [1], seed=0)
    assert poisoned[1].labels.tolist() == [1, 1] and poisoned[0] is peers[0]
    assert attack.round_peers(poisoned, 0)[1].labels.tolist() == [7, 7]
    assert attack.round_peers(poisoned, 2)[1].labels.tolist() == [1, 1]


def test_stamp_puts_a_white_square_in_the_bottom_right_corner():
    x = torch.zeros(2, 1, 6, 6, dtype=torch.uint8)
    out = stamp(x, 2)
    assert out[:, :, 4:, 4:].eq(255).all() and int(out.sum()) == 2 * 4 * 255 and int(x.sum()) == 0
    assert torch.equal(stamp(x, 0), x)
    assert stamp(torch.zeros(1, 3, 4, 4), 1, value=0.5)[0, :, 3, 3].tolist() == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="larger than"):
        stamp(x, 7)
    with pytest.raises(ValueError, match="token ids"):
        stamp(torch.zeros(2, 5, dtype=torch.long), 1)


def test_backdoor_poisons_copies_and_leaves_the_originals():
    x = torch.arange(5 * 16, dtype=torch.uint8).reshape(5, 1, 4, 4)
    y = torch.tensor([0, 1, 1, 2, 3])
    assert len(backdoor_positions(y, (0, 2, 3), 2 / 3, torch.Generator())) == 2
    attack = Backdoor(7, 1, 10, fraction=1.0, trigger_size=2)
    peers = [_Peer(0, torch.tensor([0, 1]), y[:2]), _Peer(1, torch.tensor([2, 3, 4]), y[2:])]
    ds, out = attack.poison_data(_dataset(x, y), peers, [1], seed=0)
    assert out[0] is peers[0] and out[1].indices.tolist() == [2, 5, 6]  # class 1 (target) kept, 2 and 3 copied
    assert out[1].labels.tolist() == [1, 1, 1] and ds.train_y[5:].tolist() == [2, 3]
    assert torch.equal(ds.train_x[:5], x) and ds.train_x[5:, :, 2:, 2:].eq(255).all()
    assert torch.equal(ds.train_x[5:, :, :2, :], x[3:, :, :2, :])


def test_backdoor_boost_scales_only_attacking_rows():
    attack = Backdoor(7, 1, 10, boost=3.0, start_round=1)
    attack.clean_peers = {1: None}
    peers = [_Peer(0, torch.arange(1), torch.zeros(1)), _Peer(1, torch.arange(1), torch.zeros(1))]
    u, b = torch.ones(2, 3), torch.zeros(2, 0)
    assert attack.merge_round(u, b, peers, 0)[0].tolist() == [[1, 1, 1], [1, 1, 1]]
    assert attack.merge_round(u, b, peers, 1)[0].tolist() == [[1, 1, 1], [3, 3, 3]]


class _Layout:
    """The output layer's slices of a 5-wide toy row: weights 2-3, bias 4."""

    def __init__(self, output_bias: slice | None = slice(4, 5)) -> None:
        self.output_weight, self.output_bias = slice(2, 4), output_bias


def test_camouflage_blends_only_the_output_layer():
    flipped, clean = torch.ones(1, 5), torch.tensor([[0.0, 0.0, 2.0, 2.0, 2.0]])
    assert blend_output_layer(flipped, clean, 0.25, _Layout()).tolist() == [[1, 1, 1.25, 1.25, 1.25]]
    assert blend_output_layer(flipped, clean, 1.0, _Layout(output_bias=None)).tolist() == [[1, 1, 2, 2, 1]]


def test_camouflage_trains_a_clean_twin_per_attacking_attacker_and_merges_it():
    attack = CamouflageFlip(7, 1, 10, lam=0.5)
    peers = [_Peer(0, torch.arange(2), torch.tensor([7, 2])), _Peer(1, torch.arange(2, 4), torch.tensor([7, 3]))]
    ds = _dataset(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([7, 2, 7, 3]))
    _, poisoned = attack.poison_data(ds, peers, [1], seed=0)
    trained = attack.round_peers(poisoned, 0)
    assert len(trained) == 3 and trained[2] is peers[1] and trained[1].labels.tolist() == [1, 3]
    updates = torch.tensor([[0.0] * 5, [1.0] * 5, [3.0] * 5])
    merged, buffers = attack.merge_round(updates, torch.zeros(3, 0), poisoned, 0, _Layout())
    assert merged.tolist() == [[0] * 5, [1, 1, 2, 2, 2]] and buffers.shape == (2, 0)


def test_pair_and_backdoor_metrics_by_hand():
    labels = torch.tensor([7, 7, 7, 7, 3, 3, 1])
    preds = torch.tensor([7, 1, 1, 2, 8, 3, 1])
    assert pair_metrics(preds, labels, [(7, 1), (3, 8)]) == {
        "source_accuracy_7_1": 0.25, "attack_success_rate_7_1": 0.5,
        "source_accuracy_3_8": 0.5, "attack_success_rate_3_8": 0.5}
    # triggered predictions: of the 6 examples not of class 1, 3 are predicted as 1
    assert backdoor_success(torch.tensor([1, 1, 1, 2, 8, 3, 1]), labels, 1) == 0.5


def test_summary_gets_attack_metrics_only_when_the_rows_have_them():
    base = pd.DataFrame({"round": [0, 1], "test_loss": [1.0, 1.0], "accuracy": [0.5, 0.7],
                         "source_accuracy": [0.4, 0.6], "attack_success_rate": [0.2, 0.0],
                         **{f"cum_{k}": [0, 0] for k in ("tp", "fp", "tn", "fn")}})
    plain = summarize(base)
    assert not attack_metric_columns(plain)
    extra = summarize(base.assign(backdoor_attack_success_rate=[0.1, 0.3], attack_success_rate_3_8=[0.0, 0.5]))
    assert extra["backdoor_attack_success_rate"] == pytest.approx(0.2)
    assert extra["attack_success_rate_3_8"] == pytest.approx(0.25)
    assert [k for k in extra if k not in plain] == ["backdoor_attack_success_rate", "attack_success_rate_3_8"]


# -- checks at construction -----------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs, match", [
    ("partial-flip", {"q": 0}, r"q in \(0, 1\]"),
    ("partial-flip", {"q": 1.5}, r"q in \(0, 1\]"),
    ("timed-flip", {"rate": 0.0}, r"rate in \(0, 1\]"),
    ("timed-flip", {"start_round": -1}, "start_round"),
    ("multi-pair-flip", {"pairs": [[7, 1], [7, 2]]}, "one source class to two targets"),
    ("multi-pair-flip", {"pairs": [[3, 8]]}, "lacks the config's pair 7 -> 1"),
    ("multi-pair-flip", {"pairs": [[7, 1], [3, 3]]}, "two different classes"),
    ("multi-pair-flip", {"pairs": [[7, 1], [3, 12]]}, "not a class"),
    ("multi-pair-flip", {"spread": "some"}, "spread must be one of each, split"),
    ("camouflage-flip", {"lam": 1.2}, r"lam in \[0, 1\]"),
    ("backdoor", {"boost": 0.5}, "boost"),
    ("backdoor", {"trigger_size": -1}, "trigger_size"),
    ("backdoor", {"from_classes": [1, 2]}, "contains the target class 1"),
    ("backdoor", {"fraction": 0}, r"fraction in \(0, 1\]"),
    ("partial-flip", {"qq": 0.5}, r"Unknown argument\(s\) \['qq'\].*valid: \['q', 'rate', 'start_round'\]"),
])
def test_bad_parameters_are_refused_at_construction(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ATTACKS.get(name)(source_class=7, target_class=1, num_classes=10, **kwargs)


def test_a_bad_attack_setting_fails_before_training_with_a_config_error(data_root):
    cfg = benchmark_config("mnist-mild", "quick", attack="partial-flip", attack_kwargs={"q": 2.0}, attacker_ratio=0.4)
    with pytest.raises(ConfigError, match="q in"):
        build_experiment(cfg, data_root)


# -- tiny runs ------------------------------------------------------------------------------------

TINY = dict(num_peers=4, train_subset=600, test_subset=200, rounds=2, attacker_ratio=0.5, defense="lfighter",
            backend="sequential")

NEUTRAL = [
    ("partial-flip", {"q": 1.0}),
    ("timed-flip", {"rate": 1.0, "start_round": 0}),
    ("multi-pair-flip", {"pairs": [[7, 1]], "spread": "split"}),
    ("camouflage-flip", {"lam": 0.0}),
    ("backdoor", {"trigger_size": 0, "from_classes": [7], "fraction": 1.0, "boost": 1.0}),
]


def _files(result) -> tuple[str, dict]:
    summary = json.loads((result.path / "summary.json").read_text())
    return (result.path / "metrics.csv").read_text(), {k: v for k, v in summary.items() if "time" not in k}


@pytest.fixture(scope="module")
def plain_flip(data_root, tmp_path_factory):
    return run_experiment(benchmark_config("mnist-mild", "quick", **TINY), data_root=data_root,
                          results_dir=tmp_path_factory.mktemp("plain"), progress=False)


@pytest.mark.parametrize("name, kwargs", NEUTRAL, ids=[n for n, _ in NEUTRAL])
def test_each_attack_at_its_neutral_setting_is_the_plain_label_flip(name, kwargs, plain_flip, data_root, tmp_path):
    run = run_experiment(benchmark_config("mnist-mild", "quick", attack=name, attack_kwargs=kwargs, **TINY),
                         data_root=data_root, results_dir=tmp_path, progress=False)
    assert run.run_id != plain_flip.run_id
    assert _files(run) == _files(plain_flip)


ACTIVE = [
    ("partial-flip", {"q": 0.5, "rate": 0.5}),
    ("multi-pair-flip", {"pairs": [[7, 1], [3, 8]], "spread": "split"}),
    ("camouflage-flip", {"lam": 0.5, "start_round": 1}),
    ("backdoor", {"fraction": 0.5, "boost": 2.0}),
]


@pytest.mark.parametrize("name, kwargs", ACTIVE, ids=[n for n, _ in ACTIVE])
def test_sequential_and_vectorized_backends_agree_on_every_attack(name, kwargs, data_root, tmp_path):
    runs = {b: run_experiment(benchmark_config("mnist-mild", "quick", attack=name, attack_kwargs=kwargs,
                                               **{**TINY, "backend": b, "defense": "fedavg"}),
                              data_root=data_root, results_dir=tmp_path, progress=False)
            for b in ("sequential", "vectorized")}
    seq, vec = runs["sequential"].metrics, runs["vectorized"].metrics
    assert list(seq.columns) == list(vec.columns)
    numeric = [c for c in seq.columns if c not in ("tp", "fp", "tn", "fn", "accepted") and c.startswith(
        ("test_loss", "accuracy", "source_accuracy", "attack_success_rate", "backdoor", "class_accuracy"))]
    for col in numeric:
        np.testing.assert_allclose(vec[col], seq[col], rtol=0, atol=1e-3, err_msg=col)
    for col in ("tp", "fp", "tn", "fn", "accepted"):
        assert vec[col].tolist() == seq[col].tolist()
    flip = run_experiment(benchmark_config("mnist-mild", "quick", **{**TINY, "defense": "fedavg"}),
                          data_root=data_root, results_dir=tmp_path, progress=False)
    assert not seq[["test_loss", "accuracy"]].equals(flip.metrics[["test_loss", "accuracy"]])  # it acts


def test_new_metrics_reach_metrics_csv_and_summary_only_for_their_attacks(plain_flip, data_root, tmp_path):
    pairs = run_experiment(benchmark_config("mnist-mild", "quick", attack="multi-pair-flip",
                                            attack_kwargs={"pairs": [[7, 1], [3, 8]]}, **TINY),
                           data_root=data_root, results_dir=tmp_path, progress=False)
    door = run_experiment(benchmark_config("mnist-mild", "quick", attack="backdoor", **{**TINY, "rounds": 1}),
                          data_root=data_root, results_dir=tmp_path, progress=False)
    new = {"source_accuracy_7_1", "attack_success_rate_7_1", "source_accuracy_3_8", "attack_success_rate_3_8"}
    assert new <= set(pairs.metrics.columns) and new <= set(pairs.summary)
    assert pairs.metrics["attack_success_rate_7_1"].tolist() == pairs.metrics["attack_success_rate"].tolist()
    assert "backdoor_attack_success_rate" in door.metrics and "backdoor_attack_success_rate" in door.summary
    assert not attack_metric_columns(plain_flip.metrics.columns) and not attack_metric_columns(plain_flip.summary)


def test_a_late_start_trains_honestly_before_r0(data_root, tmp_path):
    cfg = benchmark_config("mnist-mild", "quick", **{**TINY, "defense": "fedavg"})
    late = run_experiment(cfg.replace(attack="timed-flip", attack_kwargs={"start_round": 1}), data_root=data_root,
                          results_dir=tmp_path, progress=False)
    clean = run_experiment(cfg.replace(attack="none"), data_root=data_root, results_dir=tmp_path, progress=False)
    flip = run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False)
    cols = ["test_loss", "accuracy", "source_accuracy", "attack_success_rate"]
    assert late.metrics[cols].iloc[0].tolist() == clean.metrics[cols].iloc[0].tolist()
    assert late.metrics[cols].iloc[0].tolist() != flip.metrics[cols].iloc[0].tolist()


def test_a_resumed_run_of_a_round_dependent_attack_equals_the_uninterrupted_one(data_root, tmp_path):
    cfg = benchmark_config("mnist-mild", "quick", attack="camouflage-flip",
                           attack_kwargs={"lam": 0.5, "rate": 0.5}, **{**TINY, "rounds": 3})
    whole = run_experiment(cfg, data_root=data_root, results_dir=tmp_path / "a", progress=False)
    part = run_experiment(cfg, data_root=data_root, results_dir=tmp_path / "b", progress=False, stop_after=1)
    assert part.extra["unfinished"]
    resumed = run_experiment(cfg, data_root=data_root, results_dir=tmp_path / "b", progress=False)
    assert resumed.extra["resumed_from"] == 1
    assert (resumed.path / "metrics.csv").read_text() == (whole.path / "metrics.csv").read_text()
