"""DP-FedAvg as a defense wrapper: clipping, noise, accounting, and runs through the engine."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flhelpers.config import benchmark_config
from flhelpers.defenses.base import AggregationContext
from flhelpers.fl.engine import run_experiment
from flhelpers.models import MnistCNN
from flhelpers.params import layout_of
from flhelpers.defenses.accountant import epsilon_of
from flhelpers.defenses.dp import DPFedAvg, clip_updates, planned_epsilon, with_dp
from flhelpers.registry import DEFENSES

def ctx_for(dim: int, k: int, seed: int = 0, num_samples=None, layout=None, round_: int = 0):
    if layout is None:
        from flhelpers.params import ParamLayout

        layout = ParamLayout(("w",), ((dim,),), (0,), slice(0, dim), None, 1)
    return AggregationContext(layout=layout, num_classes=10, round=round_, peer_ids=torch.arange(k),
                              num_samples=num_samples, expected_attackers=0, lr=0.1, seed=seed)


def test_clipping_by_hand():
    u = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clipped, norms = clip_updates(u, 1.0)
    assert torch.allclose(clipped, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))
    assert torch.allclose(norms, torch.tensor([5.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match="clipping norm"):
        clip_updates(u, 0.0)


def test_without_noise_it_is_the_unweighted_mean_of_clipped_updates():
    u = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    rule = DPFedAvg(clip=1.0, noise_multiplier=0.0, sampling_rate=1.0)
    # unequal sample counts: DP-FedAvg weighs peers equally (a peer moves the mean by <= C / m)
    res = rule(u, ctx_for(2, 2, num_samples=torch.tensor([100.0, 1.0])))
    assert torch.allclose(res.update, torch.tensor([0.45, 0.6]))
    assert res.accepted.all() and res.info["clipped"] == 1 and res.info["dp_exact"]
    assert res.info["epsilon"] == math.inf  # no noise, no privacy


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.integers(0, 7), st.floats(0.1, 5.0), st.floats(0.0, 2.0), st.integers(0, 10**6))
def test_clipping_bounds_each_peers_contribution(k, row, clip, z, seed):
    """Replacing one peer's update by anything moves the noisy aggregate by at most 2C/m."""
    g = torch.Generator().manual_seed(seed)
    u = 10 * torch.randn(k, 16, generator=g)
    v = u.clone()
    v[row % k] = 1000 * torch.randn(16, generator=g)
    rule = DPFedAvg(clip=clip, noise_multiplier=z, sampling_rate=1.0)
    a = rule(u, ctx_for(16, k, seed=seed)).update
    b = rule(v, ctx_for(16, k, seed=seed)).update  # same round seed: same noise
    assert (a - b).norm() <= 2 * clip / k * (1 + 1e-5)
    clipped, _ = clip_updates(v, clip)
    assert (clipped.norm(dim=1) <= clip * (1 + 1e-5)).all()


def test_noise_has_standard_deviation_z_c_over_m_and_is_seeded():
    d, m, clip, z = 40_000, 4, 2.0, 0.5
    u = torch.zeros(m, d)
    rule = DPFedAvg(clip=clip, noise_multiplier=z, sampling_rate=1.0)
    noise = rule(u, ctx_for(d, m, seed=3)).update
    assert noise.std().item() == pytest.approx(z * clip / m, rel=0.03)
    assert abs(noise.mean().item()) < 5 * z * clip / m / math.sqrt(d)
    assert torch.equal(noise, rule(u, ctx_for(d, m, seed=3)).update)
    assert not torch.equal(noise, rule(u, ctx_for(d, m, seed=4)).update)


def test_epsilon_after_each_round_and_state_round_trip():
    rule = DPFedAvg(clip=1.0, noise_multiplier=1.2, delta=1e-5, sampling_rate=0.25)
    u = torch.randn(5, 8)
    for r in range(3):
        info = rule(u, ctx_for(8, 5, seed=r, round_=r)).info
        assert info["epsilon"] == pytest.approx(epsilon_of(0.25, 1.2, r + 1, 1e-5))
        assert info["dp_steps"] == r + 1 and info["sampling_rate"] == 0.25
    fresh = DPFedAvg(clip=1.0, noise_multiplier=1.2, delta=1e-5, sampling_rate=0.25)
    fresh.load_state_dict(rule.state_dict())
    assert fresh.epsilon() == rule.epsilon()


def test_dp_wraps_every_registered_defense():
    model = MnistCNN(10)
    layout = layout_of(model)
    g = torch.Generator().manual_seed(0)
    k = 10
    updates = 0.01 * torch.randn(k, layout.dim, generator=g)
    updates[:3, layout.output_bias] -= 0.05  # a few peers that look different
    names = [n for n in DEFENSES.names() if n != "dp"]
    assert {"fedavg", "median", "krum", "multi-krum", "foolsgold", "lfighter"} <= set(names)
    for name in names:
        rule = DEFENSES.get("dp")(inner=name, clip=0.1, noise_multiplier=0.5, sampling_rate=1.0)
        rule.validate(k, 2)
        ctx = AggregationContext(layout=layout, num_classes=10, round=0, peer_ids=torch.arange(k),
                                 num_samples=torch.full((k,), 60.0), expected_attackers=2, lr=0.01, seed=1)
        res = rule(updates, ctx)
        assert res.update.shape == (layout.dim,) and torch.isfinite(res.update).all(), name
        assert res.accepted.shape == (k,) and res.info["epsilon"] == pytest.approx(epsilon_of(1.0, 0.5, 1, 1e-5))
        assert res.info["dp_exact"] == (name == "fedavg")


def test_invalid_settings_fail_at_construction():
    with pytest.raises(ValueError, match="clip"):
        DPFedAvg(clip=-1)
    with pytest.raises(ValueError, match="noise_multiplier"):
        DPFedAvg(noise_multiplier=-0.1)
    with pytest.raises(ValueError, match="delta"):
        DPFedAvg(delta=1.5)
    with pytest.raises(ValueError, match="sampling_rate"):
        DPFedAvg(sampling_rate=0.0)
    with pytest.raises(ValueError, match="itself"):
        DPFedAvg(inner="dp")
    with pytest.raises(ValueError, match="Unknown defense"):
        DPFedAvg(inner="fedavgg")


SMALL = dict(num_peers=6, fraction=0.5, rounds=3, train_subset=900, test_subset=300, lr=0.05)


def test_engine_run_reports_epsilon_each_round_and_resumes_identically(data_root, tmp_path):
    base = benchmark_config("mnist-iid", "quick", **SMALL)
    cfg = with_dp(base, clip=0.5, noise_multiplier=1.0)
    assert cfg.defense == "dp" and cfg.defense_kwargs["inner"] == "fedavg"
    seen = []
    full = run_experiment(cfg, data_root=data_root, results_dir=tmp_path / "a", progress=False,
                          on_round=lambda rec: seen.append(rec.result.info))
    q = 3 / 6  # the engine draws int(0.5 * 6) = 3 peers per round
    assert [i["epsilon"] for i in seen] == pytest.approx([epsilon_of(q, 1.0, r, 1e-5) for r in (1, 2, 3)])
    assert all(i["sampling_rate"] == q for i in seen)
    assert planned_epsilon(cfg) == pytest.approx(seen[-1]["epsilon"])
    # interrupted after 2 rounds and resumed from the checkpoint: the accountant's state and the
    # noise (seeded per round) continue as if uninterrupted
    out = tmp_path / "b"
    run_experiment(cfg, data_root=data_root, results_dir=out, progress=False, stop_after=2)
    resumed = run_experiment(cfg, data_root=data_root, results_dir=out, progress=False)
    assert resumed.extra.get("resumed_from") == 2
    rule = resumed.extra["experiment"].defense
    assert rule.accountant.steps == 3 and rule.epsilon() == pytest.approx(seen[-1]["epsilon"])
    assert np.allclose(resumed.metrics["accuracy"], full.metrics["accuracy"])
    # the run summary and metrics.csv report the privacy spent
    assert full.summary["epsilon"] == pytest.approx(seen[-1]["epsilon"])
    assert full.summary["delta"] == 1e-5
    assert list(full.metrics["epsilon"]) == pytest.approx([i["epsilon"] for i in seen])


def test_noise_costs_accuracy_and_wraps_a_robust_rule(data_root, tmp_path):
    base = benchmark_config("mnist-iid", "quick", defense="median",
                            **{**SMALL, "fraction": 1.0, "rounds": 4, "train_subset": 2400})
    cfg = with_dp(base, clip=0.5, noise_multiplier=20.0)
    assert cfg.defense_kwargs["inner"] == "median"
    clean = run_experiment(base, data_root=data_root, results_dir=tmp_path, progress=False)
    noisy = run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False)
    # noise of norm ~ 20 * 0.5 * sqrt(21840) / 6 ~ 250 per round wipes out what the median learned
    assert clean.metrics["accuracy"].iloc[-1] > 0.5  # measured 0.67
    assert noisy.metrics["accuracy"].iloc[-1] < 0.3  # measured 0.15
    with pytest.raises(ValueError, match="defense='dp'"):
        planned_epsilon(base)
