"""The poisoned start (``ExperimentConfig.poisoned_rounds``, issue 19 section 1): the first k rounds
step by the attackers' FedAvg only, whatever the defense; k = 0 changes nothing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from flhelpers.config import ConfigError, ExperimentConfig, benchmark_config, validate_config
from flhelpers.defenses.base import AggregationResult
from flhelpers.fl.engine import RoundRecord, build_experiment, run_experiment
from flhelpers.fl.guards import attackers_mean
from flhelpers.params import flatten_params

#: 5 peers (2 attackers at 40 %), 600 training images, 3 rounds of one local epoch
TINY = dict(defense="foolsgold", attacker_ratio=0.4, rounds=3, num_peers=5, train_subset=600,
            test_subset=200, local_epochs=1)


def _tiny(**changes) -> ExperimentConfig:
    return benchmark_config("mnist-mild", "quick", **{**TINY, **changes})


def test_attackers_mean_by_hand() -> None:
    updates = torch.tensor([[1.0, 0.0], [5.0, 5.0], [3.0, 2.0], [math.nan, 1.0]])
    attackers = torch.tensor([True, False, True, True])  # the NaN row is an attacker's: left out
    sizes = torch.tensor([1.0, 9.0, 3.0, 5.0])
    told = AggregationResult(torch.tensor([9.0, 9.0]), torch.ones(4, dtype=torch.bool), info={"scores": [1]})
    res = attackers_mean(updates, attackers, sizes, told)
    # (1 * [1, 0] + 3 * [3, 2]) / (1 + 3) = [10, 6] / 4
    torch.testing.assert_close(res.update, torch.tensor([2.5, 1.5]))
    assert res.accepted.tolist() == [True, False, True, False]
    assert res.weights.tolist() == [1.0, 0.0, 3.0, 0.0]
    assert res.info["scores"] == [1] and "2 attacker update(s)" in res.info["poisoned_start"]
    unweighted = attackers_mean(updates, attackers, None, told)
    torch.testing.assert_close(unweighted.update, torch.tensor([2.0, 1.0]))  # ([1, 0] + [3, 2]) / 2
    nobody = attackers_mean(updates, torch.zeros(4, dtype=torch.bool), sizes, told)
    assert nobody.update.tolist() == [0.0, 0.0] and not nobody.accepted.any()
    with pytest.raises(ValueError, match="4 updates but 3 attacker flags"):
        attackers_mean(updates, attackers[:3], sizes, told)


@pytest.mark.parametrize("bad", [-1, 3, 7, 1.5, True, "2"])
def test_poisoned_rounds_must_be_an_integer_below_rounds(bad) -> None:
    with pytest.raises(ConfigError, match=r"poisoned_rounds must be an integer in \[0, rounds\) = \[0, 3\)"):
        validate_config(_tiny(poisoned_rounds=bad))


def test_poisoned_rounds_needs_attackers(data_root) -> None:
    validate_config(_tiny(poisoned_rounds=2))
    for changes in ({"attacker_ratio": 0.0}, {"attack": "none"}):
        with pytest.raises(ConfigError, match="averages the attackers' updates, but this run has none"):
            validate_config(_tiny(poisoned_rounds=1, **changes))
    # a ratio that rounds to no attacker among 5 peers is refused once the split is known
    with pytest.raises(ConfigError, match="selects no attacker among 5 peers"):
        build_experiment(_tiny(poisoned_rounds=1, attacker_ratio=0.05), data_root)
    validate_config(_tiny(attacker_ratio=0.0))  # k = 0 needs no attacker


@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
def test_the_first_k_rounds_step_by_the_attackers_fedavg(data_root, tmp_path, backend) -> None:
    """k = 2: W^1 = W^0 + mean_A(round 0), W^2 = W^1 + mean_A(round 1), summed here by hand over the
    attackers' rows; round 2 is FoolsGold's, and FoolsGold's histories hold all three rounds of
    every peer (it saw the poisoned rounds)."""
    cfg = _tiny(poisoned_rounds=2, backend=backend)
    seen: list[dict] = []

    def record(rec: RoundRecord) -> None:
        seen.append({"w": rec.context.global_params.clone(), "u": rec.updates.clone(), "ids": rec.peer_ids.copy(),
                     "att": rec.is_attacker.copy(), "n": rec.context.num_samples.clone(), "info": dict(rec.result.info),
                     "step": rec.result.update.clone()})

    res = run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False, on_round=record)
    exp = res.extra["experiment"]
    assert len(exp.attackers) == 2 and [s["ids"].tolist() for s in seen] == [[0, 1, 2, 3, 4]] * 3
    for r in (0, 1):
        s = seen[r]
        total, weight = torch.zeros_like(s["w"], dtype=torch.float64), 0.0
        for row in range(len(s["ids"])):
            if s["att"][row]:
                total += float(s["n"][row]) * s["u"][row].to(torch.float64)
                weight += float(s["n"][row])
        expected = s["w"].to(torch.float64) + total / weight
        torch.testing.assert_close(seen[r + 1]["w"].to(torch.float64), expected, rtol=0, atol=1e-6)
        assert "poisoned_start" in s["info"] and "alpha" in s["info"]  # FoolsGold's info kept
    assert "poisoned_start" not in seen[2]["info"]
    final = flatten_params(exp.model).to(torch.float64)  # W^3, loaded for the last evaluation
    torch.testing.assert_close(final, (seen[2]["w"] + seen[2]["step"]).to(torch.float64), rtol=0, atol=1e-6)
    s = seen[2]
    att = torch.as_tensor(s["att"])
    attackers_step = (s["n"][att] @ s["u"][att]) / s["n"][att].sum()
    assert (final - (s["w"] + attackers_step).to(torch.float64)).abs().max() > 1e-4  # round 2 is not the attackers'
    rows = [exp.layout.output_layer(x["u"]).to(torch.float64) for x in seen]  # FoolsGold's features
    for pid in range(5):
        torch.testing.assert_close(exp.defense.history[pid], rows[0][pid] + rows[1][pid] + rows[2][pid],
                                   rtol=0, atol=1e-9)
    stored = json.loads((res.path / "config.json").read_text())["config"]
    assert stored["poisoned_rounds"] == 2
    assert cfg.run_id() != cfg.replace(poisoned_rounds=0).run_id()


def test_k0_keeps_run_ids_and_numbers(data_root, tmp_path) -> None:
    """The ids and numbers below were computed at commit f9cad81, before the field existed (one torch
    thread; another CPU may differ in the last digits, as in tests/test_reference.py)."""
    cfg = _tiny()
    assert cfg.poisoned_rounds == 0 and cfg.run_id() == "915fbcf69c210ba0"
    # committed reference runs keep their folders
    assert benchmark_config("mnist-mild", "medium", defense="lfighter", attacker_ratio=0.4).run_id() == "8a3fb751d3ac34c0"
    assert benchmark_config("mnist-iid", "medium", defense="lfighter", attacker_ratio=0.4).run_id() == "f9750a5a02af7bbe"
    old = {k: v for k, v in cfg.to_dict().items() if k != "poisoned_rounds"}  # a config.json written before
    assert ExperimentConfig.from_dict(old).run_id() == cfg.run_id()
    assert torch.get_num_threads() == 1
    res = run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False)
    np.testing.assert_allclose(res.metrics["test_loss"], [2.2778615951538086, 2.3046154975891113, 2.242000102996826],
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.metrics["accuracy"], [0.15, 0.19, 0.315], rtol=0, atol=1e-6)


def test_a_screening_defense_does_not_keep_attackers_out_of_the_poisoned_rounds(data_root, tmp_path) -> None:
    """The seed's user elimination drops its high-loss cluster every round; in the poisoned round
    every candidate still trains (its choice is not applied), in the next it is applied again."""
    cfg = _tiny(defense="user-elimination", defense_kwargs={"epsilon": 1000.0, "separation_test": False},
                rounds=2, poisoned_rounds=1)
    seen: list[tuple[list[int], list[int]]] = []

    def record(rec: RoundRecord) -> None:
        seen.append((rec.peer_ids.tolist(), rec.result.info["elimination"]["eliminated"]))

    run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False, on_round=record)
    (ids0, gone0), (ids1, gone1) = seen
    assert gone0 and ids0 == [0, 1, 2, 3, 4]  # it chose to drop some, all trained anyway
    assert gone1 and ids1 == sorted(set(range(5)) - set(gone1))
