"""Any flhelpers defense as a Flower strategy: FedAvg's protocol, our rule's aggregation.

A round of :class:`RobustStrategy` (Flower's Message API, ``flwr.serverapp``):

1. ``configure_train`` is FedAvg's (sampling, the ``server-round`` config); the strategy keeps the
   global arrays ``W^t`` it sent.
2. ``aggregate_train`` orders the valid replies by peer id (the ``id_key`` metric of each reply,
   ``partition-id`` for our ClientApp; else the Flower node id, numbered 0, 1, ... in the order
   nodes are first seen) and stacks them into our layout (:func:`stack_updates`): row ``k`` is
   client ``k``'s local model minus ``W^t`` over the model's trainable parameters, in
   ``model.named_parameters()`` order, exactly the ``K x D`` update tensor of
   :mod:`flhelpers.defenses.base`.
3. The rule's :class:`~flhelpers.defenses.base.AggregationContext` is built from the model: its
   layout (the output layer's slices, :func:`flhelpers.params.layout_of`), the number of
   classes, the round (``server_round - 1``: our rounds start at 0), the peer ids, the sample
   counts (the replies' ``num-examples``), the expected attacker count, the clients' learning
   rate and a per-round seed. The rule runs inside :func:`flhelpers.fl.guards.guarded_aggregate`
   (NaN/Inf replies rejected first), as in our simulation.
4. ``W^{t+1} = W^t + Delta``; floating buffers (BatchNorm statistics) are the sample-weighted
   mean over the accepted clients; other arrays (counters) are the first accepted client's.
5. The round's metrics: FedAvg's weighted mean of the *accepted* replies' metrics (without the
   id key), plus ``accepted`` (1/0 per peer, in ``peer-ids`` order), ``peer-ids``,
   ``rejected-ids``, ``num-accepted``, ``num-rejected`` and the rule's numeric ``info`` as
   ``info.<key>``.

The rule object lives as long as the strategy, so stateful rules (FoolsGold's history, keyed by
peer id) carry their state across rounds; :meth:`RobustStrategy.state_dict` saves it.

Choices where Flower and our simulation differ: clients reply with their local *models* (the
Flower convention), so the updates are computed on the server in float32; rules that act before
training or transform updates in the simulation (user elimination's ``select_peers``, FFL's
``transform_updates``) need our engine and are refused.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from logging import INFO
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.common.logger import log
from torch import nn

from flhelpers.config import ConfigError, ExperimentConfig, make_defense
from flhelpers.defenses.base import AggregationContext, AggregationResult, Defense
from flhelpers.fl.guards import apply_update, average_buffers, buffer_weights, guarded_aggregate
from flhelpers.params import ParamLayout, layout_of
from flhelpers.seeding import derive_seed

#: state_dict keys of BatchNorm statistics: buffers, never parameters
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def layout_from_arrays(arrays: Mapping[str, np.ndarray]) -> ParamLayout:
    """A :class:`ParamLayout` guessed from a state dict when no model is given.

    Parameters: the floating arrays that are not BatchNorm statistics, in the dict's order. The
    output layer: the last 2-D parameter (``num_outputs x in_features``) and, when the parameter
    after it is 1-D with one value per output, its bias. Pass the model to
    :func:`robust_strategy` wherever this guess could be wrong (tied weights, a convolutional head).
    """
    names, shapes, offsets, offset = [], [], [], 0
    for name, arr in arrays.items():
        if not np.issubdtype(np.asarray(arr).dtype, np.floating) or name.endswith(_BUFFER_SUFFIXES):
            continue
        names.append(name)
        shapes.append(tuple(int(s) for s in np.shape(arr)))
        offsets.append(offset)
        offset += int(np.prod(shapes[-1], dtype=np.int64))
    two_d = [i for i, s in enumerate(shapes) if len(s) == 2]
    if not two_d:
        raise ValueError("No 2-D parameter among the arrays, so the output layer cannot be found; pass "
                         "model=... to robust_strategy.")
    w = two_d[-1]
    rows = shapes[w][0]
    size = lambda i: int(np.prod(shapes[i], dtype=np.int64))  # noqa: E731
    bias = None
    if w + 1 < len(names) and shapes[w + 1] == (rows,):
        bias = slice(offsets[w + 1], offsets[w + 1] + size(w + 1))
    return ParamLayout(tuple(names), tuple(shapes), tuple(offsets), slice(offsets[w], offsets[w] + size(w)),
                       bias, rows)


def flatten_arrays(arrays: Mapping[str, np.ndarray], names: Sequence[str]) -> torch.Tensor:
    """The arrays ``names`` of a state dict as one float32 vector, in that order."""
    if not names:
        return torch.zeros(0)
    return torch.cat([torch.as_tensor(np.asarray(arrays[n]), dtype=torch.float32).reshape(-1) for n in names])


def stack_updates(local: Sequence[Mapping[str, np.ndarray]], global_arrays: Mapping[str, np.ndarray],
                  names: Sequence[str]) -> torch.Tensor:
    """``K x D``: row ``k`` is ``local[k] - global`` over the parameters ``names`` (our layout)."""
    g = flatten_arrays(global_arrays, names)
    return torch.stack([flatten_arrays(a, names) - g for a in local])


def _metric_value(value: Any) -> Any:
    """``value`` as a MetricRecord value (a number or a list of numbers of one type), else None."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = value.tolist()
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, bool, np.number)) for v in value):
        if all(isinstance(v, (int, bool, np.integer)) for v in value):
            return [int(v) for v in value]
        return [float(v) for v in value]
    return None


def info_metrics(info: Mapping[str, Any], prefix: str = "info.") -> dict[str, Any]:
    """The numeric entries of a rule's ``info`` (nested dicts flattened with dots) as metrics."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, Mapping):
            out.update(info_metrics(value, f"{prefix}{key}."))
            continue
        converted = _metric_value(value)
        if converted is not None:
            out[f"{prefix}{key}"] = converted
    return out


@dataclass
class RoundAggregation:
    """What the rule saw and answered in a round (``RobustStrategy.last``), for inspection."""

    round: int
    peer_ids: list[int]
    updates: torch.Tensor
    context: AggregationContext
    result: AggregationResult


class RobustStrategy(FedAvg):
    """Flower's FedAvg protocol with a flhelpers rule as the aggregation (module docstring).

    Args:
        defense: the rule (a :class:`~flhelpers.defenses.base.Defense`).
        layout: the model's parameter layout (:func:`flhelpers.params.layout_of`); ``None``
            guesses it from the first global arrays (:func:`layout_from_arrays`).
        num_classes: classes of the task (default: the output layer's size, 2 for one logit).
        lr: the clients' learning rate ``eta`` (LFighter's gradients are ``-update / eta``).
        expected_attackers: ``f``, for rules that need it (Krum, Trimmed Mean).
        seed: seeds the rule's own randomness, per round.
        id_key: the reply metric that holds a client's stable id (``partition-id``).
        **fedavg_kwargs: FedAvg's arguments (``fraction_train``, ``min_available_nodes``, ...).
    """

    def __init__(self, defense: Defense, layout: ParamLayout | None = None, num_classes: int | None = None,
                 lr: float = 1.0, expected_attackers: int = 0, seed: int = 0, id_key: str = "partition-id",
                 **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        self.defense, self.layout, self.num_classes = defense, layout, num_classes
        self.lr, self.expected_attackers, self.seed, self.id_key = lr, expected_attackers, seed, id_key
        self.last: RoundAggregation | None = None
        self._global: ArrayRecord | None = None
        self._node_index: dict[int, int] = {}

    def summary(self) -> None:
        log(INFO, "\t├──> flhelpers defense: %r (expected attackers %d, lr %g)", self.defense,
            self.expected_attackers, self.lr)
        super().summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._global = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def state_dict(self) -> dict[str, Any]:
        """The rule's state and the node numbering, to save between server restarts."""
        return {"defense": self.defense.state_dict(), "node_index": dict(self._node_index)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.defense.load_state_dict(state["defense"])
        self._node_index = {int(k): int(v) for k, v in state.get("node_index", {}).items()}

    def _peer_ids(self, replies: Sequence[Message]) -> list[int]:
        metrics = [next(iter(m.content.metric_records.values())) for m in replies]
        if all(self.id_key in r for r in metrics):
            ids = [int(r[self.id_key]) for r in metrics]
            if len(set(ids)) != len(ids):
                raise ValueError(f"Two replies carry the same {self.id_key!r}: {sorted(ids)}.")
            return ids
        for node in sorted(m.metadata.src_node_id for m in replies):
            self._node_index.setdefault(int(node), len(self._node_index))
        return [self._node_index[int(m.metadata.src_node_id)] for m in replies]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the replies with the rule; the round's metrics say whom it accepted."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        if self._global is None:
            raise RuntimeError("aggregate_train before configure_train: the strategy does not know W^t.")
        ids = self._peer_ids(valid)
        order = np.argsort(ids, kind="stable")
        valid, ids = [valid[j] for j in order], [ids[j] for j in order]
        contents = [m.content for m in valid]
        key = next(iter(contents[0].array_records))
        global_np = {k: v.numpy() for k, v in self._global.items()}
        local_np = [{k: v.numpy() for k, v in c[key].items()} for c in contents]
        if self.layout is None:
            self.layout = layout_from_arrays(global_np)
        layout = self.layout
        num_classes = self.num_classes or (layout.num_outputs if layout.num_outputs > 1 else 2)
        sizes = torch.tensor([float(next(iter(c.metric_records.values()))[self.weighted_by_key]) for c in contents])
        updates = stack_updates(local_np, global_np, layout.names)
        global_params = flatten_arrays(global_np, layout.names)
        r = server_round - 1
        ctx = AggregationContext(layout=layout, num_classes=num_classes, round=r, peer_ids=torch.tensor(ids),
                                 num_samples=sizes, expected_attackers=self.expected_attackers, lr=self.lr,
                                 global_params=global_params, seed=derive_seed(self.seed, "defense", r) % 2**31)
        result = guarded_aggregate(self.defense, updates, ctx)
        new_params, discarded = apply_update(global_params, result)
        self.last = RoundAggregation(server_round, ids, updates, ctx, result)
        accepted = result.accepted.cpu().bool()
        arrays = self._new_arrays(global_np, local_np, new_params, buffer_weights(result, sizes), accepted, discarded)
        metrics = self._round_metrics(contents, ids, accepted, result)
        log(INFO, "aggregate_train: %r accepted %d of %d clients; rejected ids %s", self.defense,
            int(accepted.sum()), len(ids), metrics["rejected-ids"])
        return arrays, metrics

    def _new_arrays(self, global_np: dict[str, np.ndarray], local_np: list[dict[str, np.ndarray]],
                    new_params: torch.Tensor, sizes: torch.Tensor, accepted: torch.Tensor,
                    discarded: bool) -> ArrayRecord:
        layout = self.layout
        assert layout is not None
        out: dict[str, np.ndarray] = {}
        for name, shape, offset in zip(layout.names, layout.shapes, layout.offsets):
            n = int(np.prod(shape, dtype=np.int64))
            out[name] = new_params[offset:offset + n].reshape(shape).numpy().astype(global_np[name].dtype)
        buffers = [k for k, v in global_np.items() if k not in out and np.issubdtype(v.dtype, np.floating)]
        if buffers and not discarded:
            stacked = torch.stack([flatten_arrays(a, buffers) for a in local_np])
            mean = average_buffers(flatten_arrays(global_np, buffers), stacked, sizes, accepted)
            offset = 0
            for k in buffers:
                n = global_np[k].size
                out[k] = mean[offset:offset + n].reshape(global_np[k].shape).numpy().astype(global_np[k].dtype)
                offset += n
        first = int(accepted.nonzero()[0]) if bool(accepted.any()) and not discarded else None
        for k, v in global_np.items():
            if k not in out:
                out[k] = v if first is None else local_np[first][k]
        return ArrayRecord({k: Array(np.ascontiguousarray(out[k])) for k in global_np})

    def _round_metrics(self, contents: list, ids: list[int], accepted: torch.Tensor,
                       result: AggregationResult) -> MetricRecord:
        kept = [c for c, a in zip(contents, accepted.tolist()) if a]
        metrics = self.train_metrics_aggr_fn(kept, self.weighted_by_key) if kept else MetricRecord()
        if self.id_key in metrics:
            del metrics[self.id_key]
        metrics["accepted"] = [int(a) for a in accepted.tolist()]
        metrics["peer-ids"] = [int(i) for i in ids]
        metrics["rejected-ids"] = [int(i) for i, a in zip(ids, accepted.tolist()) if not a]
        metrics["num-accepted"] = int(accepted.sum())
        metrics["num-rejected"] = len(ids) - int(accepted.sum())
        for k, v in info_metrics(result.info).items():
            metrics[k] = v
        return metrics


def robust_strategy(defense: str | Defense, model: nn.Module | None = None, *, num_classes: int | None = None,
                    lr: float = 1.0, expected_attackers: int = 0, seed: int = 0, id_key: str = "partition-id",
                    **kwargs: Any) -> RobustStrategy:
    """A Flower strategy that aggregates with the flhelpers rule ``defense``.

    ``kwargs`` that FedAvg takes (``fraction_train``, ``fraction_evaluate``,
    ``min_available_nodes``, ``weighted_by_key``, ...) configure the protocol; every other
    keyword goes to the rule (``robust_strategy("trimmed-mean", beta=0.1)``), checked as in our
    simulation (an unknown rule or argument names the closest valid one). ``model`` gives the
    parameter layout and the output layer (recommended); ``lr`` is the clients' learning rate.
    """
    fedavg_args = set(inspect.signature(FedAvg.__init__).parameters) - {"self"}
    strategy_kwargs = {k: v for k, v in kwargs.items() if k in fedavg_args}
    defense_kwargs = {k: v for k, v in kwargs.items() if k not in fedavg_args}
    if isinstance(defense, Defense):
        if defense_kwargs:
            raise ConfigError(f"Arguments {sorted(defense_kwargs)} are neither FedAvg's nor usable with an "
                              f"already built rule {defense!r}; pass the rule's name instead.")
        rule = defense
    else:
        rule = make_defense(ExperimentConfig(defense=defense, defense_kwargs=defense_kwargs))
    hooks = [h for h in ("select_peers", "transform_updates") if hasattr(rule, h)]
    if hooks:
        raise ConfigError(f"The rule {rule!r} acts inside our simulation ({', '.join(hooks)}) and cannot run as a "
                          f"Flower strategy; choose a rule that only aggregates (e.g. lfighter, flame, median).")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ConfigError(f"lr must be the clients' positive learning rate, got {lr!r}.")
    if isinstance(expected_attackers, bool) or not isinstance(expected_attackers, int) or expected_attackers < 0:
        raise ConfigError(f"expected_attackers must be an integer >= 0, got {expected_attackers!r}.")
    layout = layout_of(model) if model is not None else None
    return RobustStrategy(rule, layout, num_classes, float(lr), expected_attackers, seed, id_key, **strategy_kwargs)


__all__ = ["RobustStrategy", "RoundAggregation", "flatten_arrays", "info_metrics", "layout_from_arrays",
           "robust_strategy", "stack_updates"]
