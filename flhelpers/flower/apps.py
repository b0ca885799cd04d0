"""A Flower federation of our benchmarks: a ClientApp that trains a peer, a ServerApp with any rule.

The apps read the Flower run config (``[tool.flwr.app.config]`` of ``examples/flower``,
``flwr run ... --run-config``):

================== ================================================================ ============
key                meaning                                                          default
================== ================================================================ ============
benchmark          a flhelpers benchmark (``mnist-iid``, ``cifar10-mild``, ...)     mnist-iid
profile            its profile (``quick``, ``medium``, ``paper``)                   quick
defense            the server's rule (any registered flhelpers defense)             lfighter
defense-args       the rule's keyword arguments, JSON                               ``{}``
attacker-ratio     share of the clients that attack (set's attack; default: flip)   0.3
num-clients        clients in the federation (must equal the supernodes)            10
num-server-rounds  rounds                                                           3
seed               seeds the split, the flippers, the model and every batch         0
set                any other configuration field, JSON (``{"train_subset": 6000}``) ``{}``
data-root          the data sets' root on every node ("" = ``$FLHELPERS_DATA``)     ""
result-path        where the server writes the round metrics as JSON ("" = nowhere) ""
torch-threads      torch threads of each client                                     1
================== ================================================================ ============

Server and clients rebuild the same :class:`~flhelpers.fl.engine.Experiment` from this config and
the seed (:func:`federation`): the same split (client ``k`` is our peer ``k``, its
``partition-id``), the same flippers (drawn among the source-class holders, as in our
simulation), the same initial model. A client trains exactly our peer's local step
(:func:`flhelpers.fl.training.peer_update`, batch order seeded by (seed, round, peer)) and replies
with its local model and the metrics ``num-examples``, ``partition-id`` and ``flipper`` (1 for a
label flipper: simulation ground truth, so the server's round metrics show the share of
accepted examples that came from flippers). The server runs :func:`robust_strategy` with the
rule and evaluates the global model centrally after each round (accuracy, source-class accuracy,
attack success rate, and the attack's own metrics: per-pair Src-Acc/ASR, backdoor ASR).

Attacks (``set``'s ``attack`` and ``attack_kwargs``): a client runs the round hooks of the
simulator's :func:`flhelpers.fl.engine.train_attacked_round` on its own peer
(:func:`client_update`): :meth:`~flhelpers.attacks.base.Attack.round_peers` decides what it
trains this round (a ``timed-flip`` attacker sitting a round out trains on its clean data,
``camouflage-flip`` adds a clean twin) and :meth:`~flhelpers.attacks.base.Attack.merge_round`
makes the row it sends (the camouflaged output layer, the backdoor's boost). Every attack whose
hooks decide peer by peer (the label flip and all the data-poisoning attacks) therefore runs as
in the simulator. An attack that rewrites the round's whole update matrix
(:meth:`~flhelpers.attacks.base.Attack.poison_updates`: ``alie``, ``ipm``, ``gaussian-noise``)
needs every client's update, which no Flower client sees, and is refused by name
(:func:`check_flower_attack`), as is ``poisoned_rounds`` (the server's FedAvg over the attackers).
"""

from __future__ import annotations

import functools
import json
from logging import INFO
from pathlib import Path
from typing import Any, Mapping

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result
from flwr.common.logger import log

from flhelpers.attacks.base import Attack
from flhelpers.config import ConfigError, ExperimentConfig, benchmark_config, validate_config
from flhelpers.flower.strategy import robust_strategy
from flhelpers.metrics import attack_metrics, evaluate
from flhelpers.params import flatten_buffers, flatten_params, load_flat_buffers, load_flat_params
from flhelpers.results import atomic_write_json
from flhelpers.fl.training import peer_update
from flhelpers.models import loss_fn, predict

#: run config defaults (module docstring)
DEFAULTS: dict[str, Any] = {"benchmark": "mnist-iid", "profile": "quick", "defense": "lfighter", "defense-args": "{}",
                            "attacker-ratio": 0.3, "num-clients": 10, "num-server-rounds": 3, "seed": 0, "set": "{}",
                            "data-root": "", "result-path": "", "torch-threads": 1}


def _json(run_config: Mapping[str, Any], key: str) -> dict[str, Any]:
    text = run_config.get(key, DEFAULTS[key])
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as exc:
        raise ConfigError(f"Run config {key!r} must be a JSON object, got {text!r}: {exc}.") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"Run config {key!r} must be a JSON object such as '{{\"lr\": 0.01}}', got {text!r}.")
    return value


def experiment_config(run_config: Mapping[str, Any]) -> ExperimentConfig:
    """The validated :class:`ExperimentConfig` the federation described by ``run_config`` runs."""
    unknown = sorted(set(run_config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"Unknown run config key(s) {unknown}; valid: {', '.join(DEFAULTS)}.")
    get = lambda key: run_config.get(key, DEFAULTS[key])  # noqa: E731
    settings = _json(run_config, "set")
    cfg = benchmark_config(str(get("benchmark")), str(get("profile"))).replace(
        defense=str(get("defense")), defense_kwargs=_json(run_config, "defense-args"),
        attacker_ratio=float(get("attacker-ratio")), num_peers=int(get("num-clients")),
        rounds=int(get("num-server-rounds")), seed=int(get("seed")), **settings)
    validate_config(cfg)
    if cfg.poisoned_rounds:
        raise ConfigError(f"poisoned_rounds={cfg.poisoned_rounds} (the server averaging the attackers' updates "
                          f"alone) is a simulator option the Flower apps do not run; remove it from 'set' or "
                          f"run the config with `flhelpers run`.")
    return cfg


def check_flower_attack(attack: Attack, cfg: ExperimentConfig) -> None:
    """Refuse an attack the Flower apps cannot run as the simulator does.

    A client sees only its own update, so it can run the per-peer hooks ``round_peers`` and
    ``merge_round`` (module docstring) but not ``poison_updates``, which rewrites the attackers'
    rows from the whole ``K x D`` matrix of the round (the omniscient model-poisoning attacks).
    Any attack that overrides it is refused by name, before any round.
    """
    if type(attack).poison_updates is not Attack.poison_updates:
        raise ConfigError(f"The attack {cfg.attack!r} rewrites the round's updates from every peer's update "
                          f"(poison_updates), which no Flower client sees, so the Flower apps cannot run it as "
                          f"the simulator does; run it with `flhelpers run`, or choose an attack that acts on "
                          f"each peer's own data (label_flip, timed-flip, partial-flip, multi-pair-flip, "
                          f"camouflage-flip, backdoor).")


@functools.lru_cache(maxsize=4)
def _experiment(config_json: str, data_root: str | None) -> Any:
    from flhelpers.fl.engine import build_experiment

    return build_experiment(ExperimentConfig.from_dict(json.loads(config_json)), data_root)


def federation(run_config: Mapping[str, Any]) -> Any:
    """The :class:`~flhelpers.fl.engine.Experiment` of ``run_config`` (data, split, flippers, model),
    built once per process (a Flower simulation reuses its client processes across rounds)."""
    cfg = experiment_config(run_config)
    root = str(run_config.get("data-root", "")) or None
    exp = _experiment(json.dumps(cfg.to_dict(), sort_keys=True), root)
    check_flower_attack(exp.attack, cfg)
    return exp


def _peer(context: Context) -> tuple[ExperimentConfig, Any, int]:
    cfg = experiment_config(context.run_config)
    k, n = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    if n != cfg.num_peers:
        raise ConfigError(f"The federation has {n} supernodes but num-clients is {cfg.num_peers}: set both to "
                          f"the same number (--federation-config num-supernodes={cfg.num_peers}).")
    torch.set_num_threads(int(context.run_config.get("torch-threads", DEFAULTS["torch-threads"])))
    return cfg, federation(context.run_config), k


def client_update(exp: Any, k: int, round_: int) -> None:
    """Peer ``k``'s round as the simulator runs it (:func:`flhelpers.fl.engine.train_attacked_round`
    for one peer), from the global model in ``exp.model``; leaves the model it sends in ``exp.model``.

    The attack's ``round_peers([peer_k], t)`` lists the data to train (``peer_k``'s own, its
    clean data when it sits the round out, plus extra trainings such as a clean twin), each
    trained from ``W^t`` by :func:`~flhelpers.fl.training.peer_update`; ``merge_round`` turns the
    rows ``u_i = W_i - W^t`` into the row ``u_k`` sent, and the client sends ``W^t + u_k``. When
    the row sent is the one trained (no attack hook changed it) the trained model is sent as it
    is, bit for bit.
    """
    cfg = exp.config
    global_params, global_buffers = flatten_params(exp.model), flatten_buffers(exp.model)
    peer = exp.peers[k]
    trained = exp.attack.round_peers([peer], round_)
    rows, buffers = [], []
    for data in trained:  # each leaves its local model W_i in exp.model
        u, b = peer_update(exp.model, cfg, exp.dataset, data, global_params, global_buffers, round_, exp.device)
        rows.append(u)
        buffers.append(b)
    sent, sent_buffers = exp.attack.merge_round(torch.stack(rows), torch.stack(buffers), [peer], round_,
                                                exp.layout)
    if len(trained) == 1 and torch.equal(sent[0], rows[0]) and torch.equal(sent_buffers[0], buffers[0]):
        return  # exp.model holds W_k^{t+1} as trained
    load_flat_params(exp.model, global_params + sent[0])
    if sent_buffers.shape[1]:
        load_flat_buffers(exp.model, sent_buffers[0])


def train_reply(msg: Message, context: Context) -> Message:
    """A client's round: our peer's local training (with the attack's per-peer hooks, as in the
    simulator: :func:`client_update`) from the received global model."""
    cfg, exp, k = _peer(context)
    arrays = next(iter(msg.content.array_records.values()))
    exp.model.load_state_dict(arrays.to_torch_state_dict())
    round_ = int(next(iter(msg.content.config_records.values()))["server-round"]) - 1
    peer = exp.peers[k]
    client_update(exp, k, round_)  # leaves the local model W_k^{t+1} in exp.model
    metrics = MetricRecord({"num-examples": int(peer.num_samples), "partition-id": k,
                            "flipper": int(k in set(exp.attackers.tolist()))})
    return Message(RecordDict({"arrays": ArrayRecord(exp.model.state_dict()), "metrics": metrics}), reply_to=msg)


@torch.no_grad()
def evaluate_reply(msg: Message, context: Context) -> Message:
    """A client's evaluation of the global model on its share of the test set (every n-th example)."""
    cfg, exp, k = _peer(context)
    exp.model.load_state_dict(next(iter(msg.content.array_records.values())).to_torch_state_dict())
    exp.model.eval()
    x, y = exp.dataset.test_x[k::cfg.num_peers], exp.dataset.test_y[k::cfg.num_peers]
    logits = exp.model(exp.dataset.prepare(x.to(exp.device)))
    loss = float(loss_fn(cfg.loss, logits, y.to(exp.device)))
    accuracy = float((predict(cfg.loss, logits) == y.to(logits.device)).float().mean()) if len(y) else float("nan")
    metrics = MetricRecord({"eval-loss": loss, "eval-acc": accuracy, "num-examples": int(len(y))})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def make_client_app() -> ClientApp:
    """The ClientApp of a federation of our benchmark (module docstring)."""
    app = ClientApp()
    app.train()(train_reply)
    app.evaluate()(evaluate_reply)
    return app


def run_server(grid: Grid, context: Context) -> Result:
    """The ServerApp's main: the federation's rule as a Flower strategy, central evaluation,
    a log line per round (accepted and rejected clients, the true flippers) and, when
    ``result-path`` is set, the round metrics as JSON."""
    cfg = experiment_config(context.run_config)
    exp = federation(context.run_config)
    flippers = sorted(int(a) for a in exp.attackers.tolist())
    strategy = robust_strategy(cfg.defense, exp.model, lr=cfg.lr, expected_attackers=exp.expected_attackers,
                               seed=cfg.seed, fraction_train=cfg.fraction, fraction_evaluate=0.0,
                               min_train_nodes=max(1, int(cfg.fraction * cfg.num_peers)),
                               min_available_nodes=cfg.num_peers, **cfg.defense_kwargs)

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        exp.model.load_state_dict(arrays.to_torch_state_dict())
        ev = evaluate(exp.model, exp.dataset, cfg.loss, cfg.source_class, cfg.target_class, cfg.eval_batch_size,
                      exp.device)
        extra = attack_metrics(exp.model, exp.dataset, exp.attack, cfg.loss, cfg.eval_batch_size, exp.device)
        return MetricRecord({"test-loss": ev.test_loss, "accuracy": ev.accuracy,
                             "source-accuracy": ev.source_accuracy, "attack-success-rate": ev.attack_success_rate,
                             **{k.replace("_", "-"): float(v) for k, v in extra.items()}})

    log(INFO, "flhelpers: %s, %d clients, flippers %s (%d -> %d), rule %s", cfg.benchmark, cfg.num_peers, flippers,
        cfg.source_class, cfg.target_class, cfg.defense)
    result = strategy.start(grid, ArrayRecord(exp.model.state_dict()), num_rounds=cfg.rounds, evaluate_fn=central)
    rounds = {}
    for r in sorted(result.train_metrics_clientapp):
        train, ev = dict(result.train_metrics_clientapp[r]), dict(result.evaluate_metrics_serverapp.get(r, {}))
        rounds[r] = {"train": train, "evaluate": ev}
        log(INFO, "flhelpers round %d: %s rejected %s (flippers %s); accuracy %.4f, source accuracy %.4f, "
            "attack success rate %.4f", r, cfg.defense, train.get("rejected-ids"), flippers,
            ev.get("accuracy", float("nan")), ev.get("source-accuracy", float("nan")),
            ev.get("attack-success-rate", float("nan")))
    path = str(context.run_config.get("result-path", ""))
    if path:
        atomic_write_json(Path(path), {"config": cfg.to_dict(), "flippers": flippers, "rounds": rounds})
    return result


def make_server_app() -> ServerApp:
    """The ServerApp of a federation of our benchmark (module docstring)."""
    app = ServerApp()
    app.main()(run_server)
    return app


__all__ = ["DEFAULTS", "check_flower_attack", "client_update", "evaluate_reply", "experiment_config", "federation", "make_client_app", "make_server_app",
           "run_server", "train_reply"]
