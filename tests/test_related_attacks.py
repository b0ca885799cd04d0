"""Model-poisoning attacks of the related systems: Gaussian noise, IPM and ALIE match their formulas."""

from statistics import NormalDist

import pytest
import torch
from torch import nn

from flhelpers.params import layout_of
from flhelpers.registry import ATTACKS
from flhelpers.attacks import ALittleIsEnough, GaussianNoise, InnerProductManipulation, alie_z

U = torch.tensor([[1.0, 2.0, 3.0],
                  [3.0, 2.0, 1.0],
                  [5.0, 8.0, 2.0],
                  [9.0, 9.0, 9.0]])
ATT = torch.tensor([False, False, True, True])


def test_ipm_sends_minus_epsilon_times_the_honest_mean():
    out = InnerProductManipulation(epsilon=0.5).poison_updates(U, ATT, round=0)
    # honest mean of rows 0, 1: (2, 2, 2) -> -0.5 * (2, 2, 2)
    assert torch.equal(out[2], torch.tensor([-1.0, -1.0, -1.0])) and torch.equal(out[3], out[2])
    assert torch.equal(out[:2], U[:2]) and torch.equal(U[2], torch.tensor([5.0, 8.0, 2.0]))  # input untouched


def test_ipm_waits_for_its_start_round():
    ipm = InnerProductManipulation(epsilon=1.0, start_round=10)
    assert torch.equal(ipm.poison_updates(U, ATT, round=9), U)
    assert torch.equal(ipm.poison_updates(U, ATT, round=10)[3], -torch.tensor([2.0, 2.0, 2.0]))


def test_alie_is_mean_minus_z_std_of_the_honest_updates():
    honest = torch.tensor([[1.0, 0.0], [3.0, 4.0], [5.0, 2.0]])  # mean (3, 2); sample std (2, 2)
    u = torch.cat([honest, torch.zeros(2, 2)])
    att = torch.tensor([False, False, False, True, True])
    out = ALittleIsEnough(z=1.5, statistics="honest").poison_updates(u, att, round=0)
    assert torch.allclose(out[3:], torch.tensor([[0.0, -1.0], [0.0, -1.0]]))
    # z from n = 5, m = 2: s = floor(5/2 + 1) - 2 = 1, z = Phi^-1(4/5)
    derived = ALittleIsEnough(statistics="honest")
    out = derived.poison_updates(u, att, round=0)
    z = NormalDist().inv_cdf(0.8)
    assert derived.last_z == pytest.approx(z)
    assert torch.allclose(out[3], torch.tensor([3.0 - 2 * z, 2.0 - 2 * z]))


def test_alie_by_default_uses_the_attackers_own_updates_as_baruch_et_al():
    """Non-omniscient (the paper; released malicious.py: np.mean and np.var(...) ** 0.5 over the
    attackers' own gradients): mean and population std of the attackers' rows; the honest rows
    do not enter."""
    honest = torch.tensor([[100.0, -50.0], [7.0, 9.0], [-30.0, 2.0]])
    own = torch.tensor([[1.0, 0.0], [3.0, 4.0]])  # mean (2, 2); population std (1, 2)
    u = torch.cat([honest, own])
    att = torch.tensor([False, False, False, True, True])
    out = ALittleIsEnough(z=1.5).poison_updates(u, att, round=0)
    assert torch.allclose(out[3:], torch.tensor([[0.5, -1.0], [0.5, -1.0]]))
    assert torch.equal(out[:3], honest)
    other = u.clone()
    other[:3] = -other[:3]  # other honest updates: the same attack
    assert torch.equal(ALittleIsEnough(z=1.5).poison_updates(other, att, round=0)[3:], out[3:])
    with pytest.raises(ValueError, match="statistics must be one of attackers, honest"):
        ALittleIsEnough(statistics="omniscient")


def test_alie_runs_without_statistics_get_a_new_run_id(monkeypatch):
    """A config that does not pass ALIE's statistics hashes it with the new default written out:
    no id it had while the absent argument meant "honest" is reused; other attacks keep theirs."""
    import flhelpers.config as config

    cfg = config.ExperimentConfig(attack="alie", attacker_ratio=0.2)
    flip = cfg.replace(attack="label_flip")
    new_alie, new_flip = cfg.run_id(), flip.run_id()
    assert new_alie == cfg.replace(attack_kwargs={"statistics": "attackers"}).run_id()
    assert new_alie != cfg.replace(attack_kwargs={"statistics": "honest"}).run_id()
    monkeypatch.setattr(config, "HASHED_KWARG_DEFAULTS", {})  # the ids before the option existed
    assert cfg.run_id() != new_alie and flip.run_id() == new_flip


def test_alie_z_matches_baruch_et_al():
    # n = 50, m = 12 (24 %): s = 26 - 12 = 14, z = Phi^-1(36/50)
    assert alie_z(50, 12) == pytest.approx(NormalDist().inv_cdf(0.72))
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-4)
    # attackers a majority: s clamped to 1
    assert alie_z(10, 8) == pytest.approx(NormalDist().inv_cdf(0.9))
    with pytest.raises(ValueError, match="0 < m <= n"):
        alie_z(10, 0)


def test_gaussian_noise_has_the_asked_sigma_and_spares_honest_rows():
    u = torch.zeros(3, 200_000)
    att = torch.tensor([False, True, False])
    out = GaussianNoise(sigma=0.3).poison_updates(u, att, 0, torch.Generator().manual_seed(0))
    assert torch.equal(out[0], u[0]) and torch.equal(out[2], u[2])
    assert out[1].std().item() == pytest.approx(0.3, rel=0.01) and abs(out[1].mean().item()) < 0.003


def test_gaussian_noise_per_tensor_probability():
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(50)])  # 100 tensors
    layout = layout_of(model)
    u = torch.zeros(1, layout.dim)
    out = GaussianNoise(sigma=1.0, prob=0.3).poison_updates(u, torch.tensor([True]), 0,
                                                            torch.Generator().manual_seed(1), layout)
    touched = [bool(out[0, layout.slice_of(n)].abs().sum() > 0) for n in layout.names]
    assert 18 <= sum(touched) <= 42  # Binomial(100, 0.3): mean 30, sd 4.6
    for n, t in zip(layout.names, touched):  # a tensor is perturbed whole or not at all
        assert bool((out[0, layout.slice_of(n)] != 0).all()) == t


def test_registered_by_name_and_validated():
    kw = dict(source_class=7, target_class=1, num_classes=10)
    assert isinstance(ATTACKS.get("gaussian-noise")(sigma=2.0, **kw), GaussianNoise)
    assert ATTACKS.get("ipm")(epsilon=1.0, start_round=10, **kw).start_round == 10
    assert isinstance(ATTACKS.get("alie")(**kw), ALittleIsEnough)
    for name in ("gaussian-noise", "ipm", "alie"):
        assert ATTACKS.get(name)(**kw).needs_source_holders is False
    with pytest.raises(ValueError, match="Unknown argument"):
        ATTACKS.get("ipm")(epsilin=1.0, **kw)
    with pytest.raises(ValueError, match="sigma"):
        GaussianNoise(sigma=0)
    with pytest.raises(ValueError, match="prob"):
        GaussianNoise(prob=1.5)
    with pytest.raises(ValueError, match="epsilon"):
        InnerProductManipulation(epsilon=-1)
    with pytest.raises(ValueError, match="start_round"):
        InnerProductManipulation(start_round=-2)
