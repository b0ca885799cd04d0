"""FFL: pairwise mixing (sum kept, updates hidden) and the reputation defense."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from flhelpers.defenses.base import AggregationContext, ServerView
from flhelpers.params import layout_of
from flhelpers.registry import DEFENSES
from flhelpers.attacks import GaussianNoise
from flhelpers.defenses.ffl import FFL, contributors, ffl_scores, mix_pairs, norm_closeness, pair_up

LAYOUT = layout_of(nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 4)))  # D = 48 + 36 = 84


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("k", [2, 3, 4, 7, 10])
def test_mixing_preserves_the_sum_exactly(k):
    # integer-valued floats: every partial sum is exact, so the sums must be bit-identical
    u = torch.randint(-1000, 1000, (k, LAYOUT.dim), generator=_gen(k)).float()
    mixed, pairs = mix_pairs(u, _gen(1), LAYOUT)
    assert torch.equal(mixed.sum(0), u.sum(0))
    # stronger: each coordinate's column is a permutation of the original column
    assert torch.equal(mixed.sort(dim=0).values, u.sort(dim=0).values)
    if k % 2 == 0:  # with disjoint pairs each pair keeps its own elementwise sum (a + b == b + a)
        for a, b in pairs:
            assert torch.equal(mixed[a] + mixed[b], u[a] + u[b])


def test_every_peer_is_paired_and_an_odd_peer_out_is_not_dropped():
    for k in (2, 5, 9):
        pairs = pair_up(list(range(k)), _gen(k))
        first = pairs[: k // 2]
        flat = [i for p in first for i in p]
        assert len(set(flat)) == len(flat) == 2 * (k // 2)  # disjoint pairs
        assert set(i for p in pairs for i in p) == set(range(k))  # nobody left out
        assert len(pairs) == k // 2 + (k % 2)
    assert pair_up([4], _gen()) == [] and pair_up([], _gen()) == []


def test_each_update_is_hidden_in_the_mixed_one():
    k, d = 6, 4000
    u = torch.randn(k, d, generator=_gen(3))  # all values distinct
    mixed, pairs = mix_pairs(u, _gen(4))
    for a, b in pairs:
        from_partner = int((mixed[a] == u[b]).sum())
        kept_own = int((mixed[a] == u[a]).sum())
        assert 0.45 * d < from_partner < 0.55 * d and from_partner + kept_own == d
        assert not torch.equal(mixed[a], u[a])
    # fresh masks: two pairs never swap the same coordinates
    (a1, _), (a2, _) = pairs[0], pairs[1]
    assert not torch.equal(mixed[a1] == u[a1], mixed[a2] == u[a2])


def test_per_tensor_masks_and_unmixed_rows():
    u = torch.randn(5, LAYOUT.dim, generator=_gen(5))
    unmixed = torch.tensor([False, True, False, False, True])
    mixed, pairs = mix_pairs(u, _gen(6), LAYOUT, unmixed)
    assert torch.equal(mixed[1], u[1]) and torch.equal(mixed[4], u[4])
    assert all(1 not in p and 4 not in p for p in pairs) and len(pairs) == 2  # 3 mixers: 1 pair + odd one
    # deterministic given the generator's seed
    again, pairs2 = mix_pairs(u, _gen(6), LAYOUT, unmixed)
    assert torch.equal(again, mixed) and pairs2 == pairs
    with pytest.raises(ValueError, match="layout describes"):
        mix_pairs(torch.zeros(2, 10), _gen(), LAYOUT)
    with pytest.raises(ValueError, match="bool mask"):
        mix_pairs(u, _gen(), None, torch.zeros(3, dtype=torch.bool))


def test_contributors_follow_the_swaps():
    c = contributors([10, 11, 12], [(0, 1), (2, 0)])
    assert c == {10: frozenset({10, 11, 12}), 11: frozenset({10, 11}), 12: frozenset({10, 11, 12})}


def test_scores_by_hand():
    # norms 1, 2, 4 -> median 2 -> closeness 0.5, 1, 0.5
    assert torch.allclose(norm_closeness(torch.tensor([1.0, 2.0, 4.0])), torch.tensor([0.5, 1.0, 0.5]))
    u = torch.zeros(3, LAYOUT.dim)
    out = LAYOUT.output_weight
    u[0, out.start] = 1.0    # norm 1, output layer along e0
    u[1, out.start] = 2.0    # norm 2, along e0
    u[2, out.start + 1] = 4.0  # norm 4, orthogonal output layer
    # coordinate-wise median of the output layer: e0 * 1, so cosines 1, 1, 0
    s = ffl_scores(u, LAYOUT)
    assert torch.allclose(s, torch.tensor([0.2 * 0.5 + 0.8, 0.2 * 1 + 0.8, 0.2 * 0.5], dtype=torch.float64))


def _simulate(ffl: FFL, rounds: int, attackers: list[int], k: int = 12, sigma: float = 1.0,
              attackers_mix: bool = True):
    """The engine's round, by hand: screen, poison, mix (the attack says who declines), aggregate
    with the hooks' notes."""
    att = np.zeros(k, dtype=bool)
    att[attackers] = True
    gn, g = GaussianNoise(sigma=sigma), _gen(7)
    gn.mix = attackers_mix
    base = torch.randn(LAYOUT.dim, generator=_gen(8)) * 0.1
    history = []
    for r in range(rounds):
        view = ServerView(r, np.arange(k), torch.zeros(LAYOUT.dim), torch.zeros(0), LAYOUT, seed=0)
        screening = ffl.select_peers(view)
        kept = screening.kept
        u = base + 0.03 * torch.randn(len(kept), LAYOUT.dim, generator=g)
        u = gn.poison_updates(u, torch.as_tensor(att[kept]), r, g, LAYOUT)
        mixed = ffl.transform_updates(dataclasses.replace(
            view, candidates=kept, updates=u, refuses_mixing=gn.refuses_mixing(torch.as_tensor(att[kept]), r)))
        res = ffl(mixed.updates, AggregationContext(LAYOUT, 4, r, torch.as_tensor(kept), screening=screening.note,
                                                    transform=mixed.note))
        history.append((kept, res))
    return history


@pytest.mark.parametrize("attackers_mix", [True, False])
def test_reputation_excludes_persistent_noise_attackers(attackers_mix):
    ffl = FFL(warmup=10)
    history = _simulate(ffl, 25, attackers=[3, 7], attackers_mix=attackers_mix)
    for r, (kept, res) in enumerate(history):
        if r < 10:  # warm-up: everyone, coordinate-wise median
            assert len(kept) == 12 and res.info["mode"] == "median" and bool(res.accepted.all())
        else:
            assert 3 not in kept and 7 not in kept
            assert len(kept) >= 8  # only the bottom quartile (3 of 12) is left out
            assert res.info["mode"] == "reputation" and float(res.weights.sum()) > 0
    rep = ffl.reputation
    assert max(rep[3], rep[7]) < min(v for p, v in rep.items() if p not in (3, 7))


def test_without_attackers_only_the_bottom_quartile_is_left_out_and_state_round_trips():
    ffl = FFL(warmup=3)
    history = _simulate(ffl, 6, attackers=[])
    # FFL's price: after the warm-up the lowest quartile is dropped even with no attack
    # (12 distinct reputations, Q1 between the 3rd and 4th lowest -> 3 left out)
    assert [len(kept) for kept, _ in history] == [12, 12, 12, 9, 9, 9]
    other = FFL(warmup=3)
    other.load_state_dict(ffl.state_dict())
    assert other.reputation == ffl.reputation
    assert DEFENSES.get("ffl")(warmup=5).warmup == 5
    with pytest.raises(ValueError, match="warmup"):
        FFL(warmup=-1)


def test_attackers_that_refuse_to_mix_send_their_own_rows():
    """Whether attackers mix is the attack's option (``attack_kwargs={"mix": False}``), read when
    the engine builds the attack; FFL sees only who declines (``view.refuses_mixing``)."""
    from flhelpers.attacks.base import split_mix_option
    from flhelpers.config import ConfigError, ExperimentConfig, make_defense
    from flhelpers.fl.experiment import make_attack

    cfg = ExperimentConfig(attack="gaussian-noise", attack_kwargs={"sigma": 2.0, "mix": False})
    attack = make_attack(cfg, 10)
    assert attack.mix is False and attack.sigma == 2.0
    assert make_attack(cfg.replace(attack="label-flip", attack_kwargs={"mix": False}), 10).mix is False
    assert make_attack(cfg.replace(attack_kwargs={}), 10).mix is True
    att = torch.tensor([False, True, False, True])
    assert attack.refuses_mixing(att, 0).tolist() == att.tolist()
    assert not make_attack(cfg.replace(attack_kwargs={}), 10).refuses_mixing(att, 0).any()
    with pytest.raises(ValueError, match="mix"):
        split_mix_option({"mix": "no"})
    with pytest.raises(ConfigError, match="attackers_mix"):  # moved to the attack (issue 31)
        make_defense(ExperimentConfig(defense="ffl", defense_kwargs={"attackers_mix": False}))
    u = torch.randn(4, LAYOUT.dim, generator=_gen(3))
    view = ServerView(0, np.array([2, 5, 6, 9]), torch.zeros(LAYOUT.dim), torch.zeros(0), LAYOUT, seed=1,
                      updates=u, refuses_mixing=att)
    mixed = FFL().transform_updates(view)
    assert torch.equal(mixed.updates[att], u[att])  # the refusing peers' rows as sent
    assert all(5 not in pair and 9 not in pair for pair in mixed.note.pairs)


def test_ffl_runs_end_to_end_and_resumes_identically(data_root, tmp_path):
    from flhelpers.config import benchmark_config
    from flhelpers.fl.engine import run_experiment

    cfg = benchmark_config("mnist-iid", "quick", num_peers=8, train_subset=800, test_subset=300, rounds=4,
                           lr=0.05, attack="gaussian-noise", attacker_ratio=0.25, attack_kwargs={"sigma": 0.5},
                           defense="ffl", defense_kwargs={"warmup": 2})
    full = run_experiment(cfg, data_root=data_root, results_dir=tmp_path / "a", progress=False)
    part = run_experiment(cfg, data_root=data_root, results_dir=tmp_path / "b", progress=False, stop_after=3)
    assert part.extra.get("unfinished")
    resumed = run_experiment(cfg, data_root=data_root, results_dir=tmp_path / "b", progress=False)
    assert np.allclose(full.metrics["accuracy"], resumed.metrics["accuracy"])
    m = full.metrics
    assert (m["tp"] + m["fp"] + m["tn"] + m["fn"] == 8).all()
    assert (m.loc[m["round"] >= 2, "tp"] == 2).all()  # both noise attackers left out after warm-up
    exp = full.extra["experiment"]
    rep = exp.defense.reputation
    assert max(rep[a] for a in exp.attackers) < min(v for p, v in rep.items() if p not in exp.attackers)
