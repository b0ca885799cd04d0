"""flhelpers.flower: every defense as a Flower strategy, our ClientApp, and the example app.

The strategy tests drive Flower's Message API in this process (the strategy's own messages go to
our ClientApp's train function, its replies come back to ``aggregate_train``); the slow test runs
``examples/flower`` with ``flwr run`` on Flower's simulation engine, and ends the local SuperLink
it starts (found by its private FLWR_HOME, ended by pid) even on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

pytest.importorskip("flwr", reason='Flower is not installed: pip install -e ".[flower]"')

pytestmark = pytest.mark.flower

from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from flhelpers.config import ConfigError  # noqa: E402
from flhelpers.defenses.base import AggregationContext  # noqa: E402
from flhelpers.defenses.foolsgold import FoolsGold  # noqa: E402
from flhelpers.flower import experiment_config, federation, layout_from_arrays, robust_strategy  # noqa: E402
from flhelpers.flower.apps import train_reply  # noqa: E402
from flhelpers.models import build_model  # noqa: E402
from flhelpers.params import flatten_params, layout_of, load_flat_params  # noqa: E402
from flhelpers.registry import DEFENSES  # noqa: E402
from flhelpers.seeding import derive_seed  # noqa: E402
from processes import free_port, stop_processes_using  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUN_CONFIG = {"num-clients": 10, "attacker-ratio": 0.3, "num-server-rounds": 3,
              "set": json.dumps({"train_subset": 3000, "test_subset": 500})}
FIRST_NODE = 1000  # node ids of the stub grid: client k is node 1000 + k


class StubGrid:
    """The part of Flower's Grid a strategy's ``configure_train`` uses: the connected nodes."""

    def get_node_ids(self) -> list[int]:
        return list(range(FIRST_NODE, FIRST_NODE + RUN_CONFIG["num-clients"]))


@pytest.fixture(scope="module")
def run_config(data_root) -> dict:
    return {**RUN_CONFIG, "data-root": str(data_root)}


@pytest.fixture(autouse=True)
def task_identity():
    """The identity Flower gives the process of a ServerApp (messages are stamped with it)."""
    from flwr.supercore.task_identity import TaskIdentity

    before = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = before


def _round(strategy, server_round: int, arrays: ArrayRecord, run_config: dict):
    """One round in this process: the strategy's messages -> our ClientApp -> ``aggregate_train``."""
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), StubGrid()))
    replies = []
    for msg in messages:
        k = msg.metadata.dst_node_id - FIRST_NODE
        ctx = Context(run_id=1, node_id=msg.metadata.dst_node_id, node_config={"partition-id": k,
                      "num-partitions": run_config["num-clients"]}, state=RecordDict(), run_config=run_config)
        replies.append(train_reply(msg, ctx))
    return replies, strategy.aggregate_train(server_round, replies)


def _by_hand(replies, exp, global_arrays: ArrayRecord):
    """The updates of the replies computed without the strategy: model params, flattened by flhelpers."""
    model = build_model(exp.config.model, exp.dataset.num_classes, **exp.dataset.meta)
    model.load_state_dict(global_arrays.to_torch_state_dict())
    base = flatten_params(model)
    rows, ids, sizes = [], [], []
    for reply in sorted(replies, key=lambda m: int(m.content["metrics"]["partition-id"])):
        model.load_state_dict(reply.content["arrays"].to_torch_state_dict())
        rows.append(flatten_params(model) - base)
        ids.append(int(reply.content["metrics"]["partition-id"]))
        sizes.append(float(reply.content["metrics"]["num-examples"]))
    return torch.stack(rows), ids, torch.tensor(sizes), base, model


def test_lfighter_strategy_equals_flhelpers_lfighter_and_rejects_the_flippers(run_config):
    cfg, exp = experiment_config(run_config), federation(run_config)
    flippers = sorted(exp.attackers.tolist())
    assert len(flippers) == 3 and cfg.num_peers == 10
    strategy = robust_strategy("lfighter", exp.model, lr=cfg.lr, expected_attackers=exp.expected_attackers, seed=7)
    start = ArrayRecord(exp.model.state_dict())
    replies, (arrays, metrics) = _round(strategy, 1, start, run_config)
    assert metrics["rejected-ids"] == flippers and metrics["num-rejected"] == 3
    assert metrics["peer-ids"] == list(range(10)) and "partition-id" not in metrics
    assert metrics["flipper"] == 0.0  # share of the accepted examples that came from flippers
    assert "info.bad_cluster" in metrics

    updates, ids, sizes, base, model = _by_hand(replies, exp, start)
    assert torch.equal(strategy.last.updates, updates)
    rule = DEFENSES.get("lfighter")()
    ctx = AggregationContext(layout=layout_of(model), num_classes=10, round=0, peer_ids=torch.tensor(ids),
                             num_samples=sizes, expected_attackers=exp.expected_attackers, lr=cfg.lr,
                             global_params=base, seed=derive_seed(7, "defense", 0) % 2**31)
    ours = rule(updates, ctx)
    assert metrics["accepted"] == [int(a) for a in ours.accepted.tolist()]
    load_flat_params(model, base + ours.update)
    expected = {k: v.numpy() for k, v in model.state_dict().items()}
    for k, arr in arrays.items():
        np.testing.assert_array_equal(arr.numpy(), expected[k], err_msg=k)


def test_fedavg_strategy_accepts_everyone_and_matches_flowers_fedavg(run_config):
    cfg, exp = experiment_config(run_config), federation(run_config)
    strategy = robust_strategy("fedavg", exp.model, lr=cfg.lr)
    replies, (arrays, metrics) = _round(strategy, 1, ArrayRecord(exp.model.state_dict()), run_config)
    assert metrics["rejected-ids"] == [] and metrics["num-accepted"] == 10
    assert metrics["flipper"] == pytest.approx(0.3, abs=0.05)  # the flippers' examples were averaged in
    flower_arrays, _ = FedAvg().aggregate_train(1, replies)
    for k, arr in arrays.items():
        np.testing.assert_allclose(arr.numpy(), flower_arrays[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


def test_foolsgold_keeps_its_history_across_rounds(run_config):
    cfg, exp = experiment_config(run_config), federation(run_config)
    strategy = robust_strategy("foolsgold", exp.model, lr=cfg.lr)
    reference = FoolsGold()
    arrays = ArrayRecord(exp.model.state_dict())
    for server_round in (1, 2):
        replies, (new_arrays, metrics) = _round(strategy, server_round, arrays, run_config)
        updates, ids, sizes, base, model = _by_hand(replies, exp, arrays)
        ctx = AggregationContext(layout=layout_of(model), num_classes=10, round=server_round - 1,
                                 peer_ids=torch.tensor(ids), num_samples=sizes, lr=cfg.lr, global_params=base,
                                 seed=derive_seed(0, "defense", server_round - 1) % 2**31)
        ours = reference(updates, ctx)
        torch.testing.assert_close(strategy.last.result.weights, ours.weights, rtol=0, atol=0)
        arrays = new_arrays
    state = strategy.state_dict()["defense"]
    assert torch.equal(state["history"], reference.state_dict()["history"])
    assert state["history"].abs().sum() > 0  # two rounds of updates accumulated


#: the Beyond study's attacks whose per-round hooks the old ClientApp skipped, each set so that
#: skipping them changes the rows: timed-flip attacks from round 1 only, with probability 0.5;
#: camouflage-flip sends a clean output layer; the backdoor boosts its rows 3-fold
BEYOND_ATTACKS = {"timed-flip": {"rate": 0.5, "start_round": 1}, "camouflage-flip": {"lam": 1.0},
                  "backdoor": {"fraction": 0.5, "boost": 3.0}}


@pytest.mark.parametrize("attack", sorted(BEYOND_ATTACKS))
def test_flower_runs_the_simulators_attack(run_config, attack):
    """Two rounds through our ClientApp equal the simulator's rounds (train_attacked_round and
    poison_updates from the same global model): the same rows reach the rule, the same model results."""
    from flhelpers.fl.engine import build_experiment, select_peers, train_attacked_round
    from flhelpers.fl.guards import apply_update
    from flhelpers.params import flatten_buffers
    from flhelpers.seeding import torch_generator

    settings = {**json.loads(RUN_CONFIG["set"]), "attack": attack, "attack_kwargs": BEYOND_ATTACKS[attack]}
    config = {**run_config, "defense": "fedavg", "num-server-rounds": 2, "set": json.dumps(settings)}
    cfg, exp = experiment_config(config), federation(config)
    assert cfg.attack == attack and len(exp.attackers) == 3
    sim = build_experiment(cfg, config["data-root"])  # the simulator's own experiment, same seed
    strategy = robust_strategy("fedavg", exp.model, lr=cfg.lr)
    arrays = ArrayRecord(exp.model.state_dict())
    changed = []
    for r in (0, 1):
        global_params = flatten_arrays_of(arrays, sim.model)  # the simulator starts from Flower's W^t
        global_buffers = flatten_buffers(sim.model)
        ids = select_peers(cfg, r)
        rows, _ = train_attacked_round(sim, ids, global_params, global_buffers, r)
        rows = sim.attack.poison_updates(rows, torch.as_tensor(sim.is_attacker[ids]), r,
                                         torch_generator(cfg.seed, "attack", r), sim.layout)
        plain = torch.stack([peer_row(sim, sim.peers[k], global_params, r) for k in ids])
        changed.append(not torch.allclose(rows, plain, atol=1e-6))
        replies, (arrays, metrics) = _round(strategy, r + 1, arrays, config)
        assert strategy.last.peer_ids == ids.tolist()
        torch.testing.assert_close(strategy.last.updates, rows, rtol=0, atol=2e-6)
        new_params, _ = apply_update(global_params, strategy.last.result)
        torch.testing.assert_close(flatten_arrays_of(arrays, sim.model), new_params, rtol=0, atol=2e-6)
    assert any(changed), f"{attack}'s hooks changed no row: the test would not see them skipped"


def flatten_arrays_of(arrays: ArrayRecord, model) -> torch.Tensor:
    """The trainable parameters of ``arrays`` flattened in ``model``'s layout."""
    model.load_state_dict(arrays.to_torch_state_dict())
    return flatten_params(model).clone()


def peer_row(exp, peer, global_params: torch.Tensor, round_: int) -> torch.Tensor:
    """The row of ``peer``'s plain local training (no attack hook), as the old ClientApp sent it."""
    from flhelpers.fl.training import peer_update
    from flhelpers.params import flatten_buffers

    u, _ = peer_update(exp.model, exp.config, exp.dataset, peer, global_params,
                       flatten_buffers(exp.model), round_, exp.device)
    return u


@pytest.mark.parametrize("attack", ["alie", "ipm", "gaussian-noise"])
def test_flower_refuses_by_name_an_attack_it_cannot_run(run_config, attack):
    settings = {**json.loads(RUN_CONFIG["set"]), "attack": attack}
    with pytest.raises(ConfigError, match=rf"The attack '{attack}' rewrites the round.s updates .* `flhelpers run`"):
        federation({**run_config, "set": json.dumps(settings)})
    with pytest.raises(ConfigError, match="poisoned_rounds=1 .* Flower apps do not run"):
        experiment_config({**run_config, "set": json.dumps({**settings, "attack": "label_flip",
                                                             "poisoned_rounds": 1})})


def test_bad_strategy_arguments_are_clear_errors():
    with pytest.raises(ConfigError, match="Did you mean 'lfighter'"):
        robust_strategy("lfigter")
    with pytest.raises(ConfigError, match="not arguments of the defense 'median'"):
        robust_strategy("median", fraction_train=0.5, alpha=3)
    with pytest.raises(ConfigError, match="cannot run as a Flower strategy"):
        robust_strategy("user-elimination")
    strategy = robust_strategy("trimmed-mean", fraction_train=0.5)
    assert strategy.fraction_train == 0.5


def test_layout_is_guessed_from_a_state_dict():
    model = build_model("mnist-cnn", 10)
    guessed = layout_from_arrays({k: v.numpy() for k, v in model.state_dict().items()})
    assert guessed == layout_of(model)


@pytest.mark.slow
def test_example_runs_on_flowers_simulation_engine(data_root, tmp_path):
    """`flwr run examples/flower`: LFighter rejects the 3 flippers each round, FedAvg does not."""
    flwr_home = str(tmp_path / "flwr")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "FLWR_HOME": flwr_home, "FLHELPERS_DATA": str(data_root), "OMP_NUM_THREADS": "1",
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "RAY_USAGE_STATS_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0",
           # our own local SuperLink, not one another user left running on the default ports
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()), "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    results = {}
    try:
        for defense in ("lfighter", "fedavg"):
            out = tmp_path / f"{defense}.json"
            run_config = (f'defense="{defense}" num-server-rounds=3 result-path="{out}" '
                          f"set='{RUN_CONFIG['set']}'")
            proc = subprocess.run([str(Path(bin_dir) / "flwr"), "run", str(REPO / "examples" / "flower"),
                                   "--federation-config", "num-supernodes=10", "--run-config", run_config,
                                   "--stream"], env=env, capture_output=True, text=True, timeout=400)
            assert proc.returncode == 0 and out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
            assert f"flhelpers round 3: {defense} rejected" in proc.stdout + proc.stderr
            results[defense] = json.loads(out.read_text())
    finally:
        stop_processes_using(flwr_home)
    assert not any(flwr_home in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
    flippers = results["lfighter"]["flippers"]
    assert len(flippers) == 3
    for defense, expected in (("lfighter", flippers), ("fedavg", [])):
        rounds = results[defense]["rounds"]
        assert sorted(rounds, key=int) == ["1", "2", "3"]
        for r in rounds.values():
            assert r["train"]["rejected-ids"] == expected, (defense, r["train"])
            assert 0.0 <= r["evaluate"]["accuracy"] <= 1.0
    assert results["fedavg"]["rounds"]["3"]["train"]["flipper"] > 0.2
    assert results["lfighter"]["rounds"]["3"]["train"]["flipper"] == 0.0
