"""The defense hooks (issue 31): typed, narrow, and blind to who attacks.

Every registered rule's hooks (``select_peers``, ``transform_updates``, ``aggregate``, whichever
it has) follow the Protocols of :mod:`flhelpers.defenses.base`, and no hook takes the run's
``Experiment`` or the ground truth ``is_attacker``. The engine's side: hooks see a
:class:`~flhelpers.defenses.base.ServerView`, their notes reach the round's aggregate, and who
declines to mix is the attack's answer. No data set is needed.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import flhelpers  # noqa: F401  (registers the built-in rules)
from flhelpers.attacks import GaussianNoise
from flhelpers.config import ExperimentConfig
from flhelpers.defenses.base import (HOOKS, AggregationContext, AggregationResult, Defense, Screening, ServerView,
                                     Transformed)
from flhelpers.fl.engine import aggregate_round, screen_peers, server_view, transform_round
from flhelpers.params import layout_of
from flhelpers.registry import DEFENSES

FORBIDDEN = {"exp", "experiment", "is_attacker"}
RULES = DEFENSES.names()
LAYOUT = layout_of(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))  # D = 16 + 10 = 26


def _hooks(cls: type) -> list[str]:
    return [h for h in HOOKS if callable(getattr(cls, h, None))]


def test_every_rule_is_a_class_with_an_aggregate():
    assert "user-elimination" in RULES and "ffl" in RULES and "ffl-mixing" in RULES
    for name in RULES:
        cls = DEFENSES.get(name)
        assert inspect.isclass(cls) and issubclass(cls, Defense), name
        assert "aggregate" in _hooks(cls), name


@pytest.mark.parametrize("name", RULES)
def test_hooks_match_the_protocols(name):
    cls = DEFENSES.get(name)
    for hook in _hooks(cls):
        protocol = HOOKS[hook]
        want = inspect.signature(getattr(protocol, hook))
        got = inspect.signature(getattr(cls, hook))
        assert [(p.name, p.kind) for p in got.parameters.values()] == \
            [(p.name, p.kind) for p in want.parameters.values()], f"{name}.{hook}{got} is not {hook}{want}"
        hints, wanted = typing.get_type_hints(getattr(cls, hook)), typing.get_type_hints(getattr(protocol, hook))
        for param in list(want.parameters)[1:]:
            if param in hints:  # annotated: with the Protocol's type
                assert hints[param] == wanted[param], f"{name}.{hook}: {param} is {hints[param]}"
        assert isinstance(cls(), protocol), f"{name} built with its defaults is no {protocol.__name__}"


@pytest.mark.parametrize("name", RULES)
def test_no_hook_sees_the_experiment_or_the_attackers(name):
    cls = DEFENSES.get(name)
    for hook in _hooks(cls):
        params = set(inspect.signature(getattr(cls, hook)).parameters)
        assert not params & FORBIDDEN, f"{name}.{hook} takes {sorted(params & FORBIDDEN)}"
    assert "attackers_mix" not in inspect.signature(cls).parameters  # the attack's option now


def test_the_view_is_frozen_and_the_context_carries_the_notes():
    view = ServerView(3, np.arange(4), torch.zeros(LAYOUT.dim), torch.zeros(0), LAYOUT)
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.round = 4  # type: ignore[misc]
    assert view.updates is None and view.peer_losses is None and view.refuses_mixing is None
    ctx = AggregationContext(LAYOUT, 2, screening="s", transform="t")
    assert (ctx.screening, ctx.transform) == ("s", "t")


# ----------------------------------------------------------------------------- the engine's side


class _Spy(Defense):
    """Keeps every 3rd candidate, adds 1 to every update; notes what it saw."""

    name = "test-spy"

    def __init__(self) -> None:
        self.views: list[ServerView] = []

    def select_peers(self, view: ServerView) -> Screening:
        self.views.append(view)
        kept = view.candidates[::3]
        return Screening(kept[::-1], note={"kept": kept.tolist(), "losses": view.peer_losses(kept).tolist()})

    def transform_updates(self, view: ServerView) -> Transformed:
        self.views.append(view)
        return Transformed(view.updates + 1, note="mixed")

    def aggregate(self, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
        accepted = torch.ones(updates.shape[0], dtype=torch.bool)
        return AggregationResult(updates.mean(0), accepted, info={"notes": (ctx.screening, ctx.transform)})


def _exp(defense: Defense, attack=None, num_peers: int = 10, fraction: float = 1.0):
    cfg = ExperimentConfig(num_peers=num_peers, fraction=fraction, seed=5)
    attackers = np.array([1, 6])
    mask = np.zeros(num_peers, dtype=bool)
    mask[attackers] = True
    peers = [SimpleNamespace(num_samples=10 + k) for k in range(num_peers)]
    return SimpleNamespace(config=cfg, layout=LAYOUT, defense=defense, attack=attack or GaussianNoise(),
                           is_attacker=mask, peers=peers, dataset=SimpleNamespace(num_classes=2),
                           expected_attackers=0)


def test_hooks_see_a_server_view_and_their_notes_reach_the_aggregate(monkeypatch):
    import flhelpers.fl.engine as engine

    asked = []
    monkeypatch.setattr(engine, "global_loss_per_peer",
                        lambda exp, ids, gp, gb: asked.append(ids.tolist()) or ids.astype(np.float64) / 10)
    spy, attack = _Spy(), GaussianNoise()
    attack.mix = False
    exp = _exp(spy, attack, fraction=0.5)
    gp, gb = torch.zeros(LAYOUT.dim), torch.zeros(0)
    screening = screen_peers(exp, np.arange(10), gp, gb, 2)
    assert screening.kept.tolist() == [0, 3, 6, 9]  # sorted by the engine
    assert screening.note == {"kept": [0, 3, 6, 9], "losses": [0.0, 0.3, 0.6, 0.9]} and asked == [[0, 3, 6, 9]]
    view = spy.views[-1]
    assert isinstance(view, ServerView) and view.round == 2 and view.seed == 5 and view.sampling_rate == 0.5
    assert view.layout is LAYOUT and view.global_params is gp and view.updates is None
    updates = torch.randn(4, LAYOUT.dim)
    transformed = transform_round(exp, updates, screening.kept, gp, gb, 2)
    assert torch.equal(transformed.updates, updates + 1) and transformed.note == "mixed"
    view = spy.views[-1]
    assert view.candidates.tolist() == [0, 3, 6, 9] and view.updates is updates
    assert view.refuses_mixing.tolist() == [False, False, True, False]  # peer 6 attacks and declines
    result, ctx = aggregate_round(exp, transformed.updates, screening.kept, gp, 2, screening.note, transformed.note)
    assert result.info["notes"] == (screening.note, "mixed") and ctx.peer_ids.tolist() == [0, 3, 6, 9]


def test_screening_must_keep_someone_among_the_candidates():
    class Empty(_Spy):
        def select_peers(self, view):
            return np.array([], dtype=np.int64)

    class Stranger(_Spy):
        def select_peers(self, view):
            return np.array([0, 42])

    gp, gb = torch.zeros(LAYOUT.dim), torch.zeros(0)
    with pytest.raises(RuntimeError, match="dropped every peer"):
        screen_peers(_exp(Empty()), np.arange(4), gp, gb, 0)
    with pytest.raises(RuntimeError, match=r"\[42\]"):
        screen_peers(_exp(Stranger()), np.arange(4), gp, gb, 0)
    fedavg = DEFENSES.get("fedavg")()
    plain = screen_peers(_exp(fedavg), np.arange(4), gp, gb, 0)  # no hook: everyone, no note
    assert plain.kept.tolist() == [0, 1, 2, 3] and plain.note is None
    u = torch.randn(4, LAYOUT.dim)
    assert transform_round(_exp(fedavg), u, plain.kept, gp, gb, 0).updates is u


def test_wrappers_pass_their_inner_rules_notes_on():
    """user-elimination around ffl: the inner FFL's Q1 (its screening note) reaches FFL's
    aggregate through the wrapper, and the elimination record reaches the info."""
    rule = DEFENSES.get("user-elimination")(inner="ffl", inner_kwargs={"warmup": 0}, separation_test=False)
    rule.inner.reputation = {k: float(k) for k in range(8)}
    view = server_view(SimpleNamespace(config=ExperimentConfig(num_peers=8, seed=1), layout=LAYOUT),
                       np.arange(8), torch.zeros(LAYOUT.dim), torch.zeros(0), 0)
    view = dataclasses.replace(view, peer_losses=lambda ids: np.where(np.isin(ids, [2, 5]), 3.0, 0.1))
    screening = rule.select_peers(view)
    eliminated = screening.note.record["eliminated"]
    assert eliminated == [2, 5]
    q1 = screening.note.inner
    assert q1 == pytest.approx(np.quantile([0, 1, 3, 4, 6, 7], 0.25))
    assert screening.kept.tolist() == [3, 4, 6, 7]
    u = torch.randn(4, LAYOUT.dim)
    mixed = rule.transform_updates(dataclasses.replace(view, candidates=screening.kept, updates=u))
    ctx = AggregationContext(LAYOUT, 2, 0, torch.as_tensor(screening.kept), screening=screening.note,
                             transform=mixed.note)
    res = rule(mixed.updates, ctx)
    assert res.info["q1"] == q1 and res.info["elimination"]["eliminated"] == [2, 5]
    assert sorted(p for pair in res.info["pairs"] for p in pair) == [3, 4, 6, 7]
