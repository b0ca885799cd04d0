"""The base of every attack: the two hooks the engine calls, and the base of the model-poisoning attacks.

An attack may poison a peer's *data* before local training (label flipping) and/or its
*update* after local training (model poisoning). The engine calls
:meth:`Attack.poison_labels` on each attacker's labels and :meth:`Attack.poison_updates` on
the stacked ``K x D`` updates of the round. :class:`ModelPoisoning` is the base of the attacks
that replace or perturb the attackers' rows of that matrix (honest before ``start_round``).

Three more hooks let an attack change what peers train on without touching any trainer (the Beyond study's attacks;
:class:`~flhelpers.attacks.data_poisoning.DataPoisoning` uses them): :meth:`Attack.poison_data`
once before training (new labels, new images appended to the data set), :meth:`Attack.round_peers`
each round (which data each peer trains on, plus extra trainings), and :meth:`Attack.merge_round`
(the rows sent, from the rows trained). The engine hands the trainer whatever ``round_peers``
returns, so the sequential and the vectorized backends train the same data. Two more say which
extra metrics a run has: :meth:`Attack.evaluation_pairs` and :meth:`Attack.stamp_trigger`.

What attackers do when a rule has the peers mix their updates pairwise (FFL's mixing,
:mod:`flhelpers.defenses.ffl`) is the attack's too: :meth:`Attack.refuses_mixing` says
which peers of a round send their own update unmixed. Every attack takes the option
``attack_kwargs={"mix": False}`` (:data:`MIX_OPTION`; the attackers decline, FFL's second attacker
strategy), read by :func:`split_mix_option` when the engine builds the attack; by default they mix
like everyone. The defenses never learn who the attackers are.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import torch

from flhelpers.params import ParamLayout


class Attack:
    """Base attack: does nothing. Subclasses override one or both hooks."""

    name = "none"
    #: attackers are drawn among the peers holding ``source_class`` data
    needs_source_holders = False
    #: whether the attackers mix their update with a partner like everyone (FFL's mixing);
    #: ``attack_kwargs={"mix": False}`` sets it False (:func:`split_mix_option`)
    mix: bool = True

    def poison_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return labels

    def poison_updates(self, updates: torch.Tensor, is_attacker: torch.Tensor, round: int,
                       generator: torch.Generator | None = None,
                       layout: "ParamLayout | None" = None) -> torch.Tensor:
        """Model poisoning: return the ``K x D`` updates the server receives.

        ``is_attacker`` is the ``(K,)`` mask of this round's attackers; ``generator`` is seeded
        per round; ``layout`` tells where each tensor of the model lies in a row.
        """
        return updates

    def poison_data(self, dataset: Any, peers: list[Any], attackers: Sequence[int],
                    seed: int) -> tuple[Any, list[Any]]:
        """Data poisoning once, before training: the data set and peers' data the run trains on.

        ``peers`` are the engine's per-peer records (``indices`` into ``dataset.train_x``,
        ``labels``, ``peer_id``), already passed through :meth:`poison_labels` for the
        ``attackers``; ``seed`` is the run seed. The default changes nothing.
        """
        return dataset, peers

    def round_peers(self, peers: list[Any], round: int) -> list[Any]:
        """The data each peer of round ``round`` trains on, in ``peers`` order; entries after
        the first ``len(peers)`` are extra trainings that :meth:`merge_round` consumes.
        The default trains every peer on its data as :meth:`poison_data` left it."""
        return peers

    def merge_round(self, updates: torch.Tensor, buffers: torch.Tensor, peers: list[Any], round: int,
                    layout: "ParamLayout | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``len(peers)`` rows the peers send, from the rows trained on :meth:`round_peers`.
        The default returns them unchanged."""
        return updates, buffers

    def refuses_mixing(self, is_attacker: torch.Tensor, round: int) -> torch.Tensor:
        """The ``(K,)`` bool mask of the round's peers that decline to mix their update with a
        partner, given the ``(K,)`` mask of the round's attackers: the attackers when
        :attr:`mix` is False (in every round, whatever an attack's ``start_round``), else nobody."""
        att = torch.as_tensor(is_attacker, dtype=torch.bool).cpu().reshape(-1)
        return att.clone() if not self.mix else torch.zeros_like(att)

    def evaluation_pairs(self) -> tuple[tuple[int, int], ...]:
        """Source -> target pairs whose Src-Acc and ASR each get a metrics column (none by default)."""
        return ()

    def stamp_trigger(self, images: torch.Tensor) -> torch.Tensor | None:
        """The images with this attack's backdoor trigger (``None``: the attack has no trigger,
        so runs have no backdoor ASR)."""
        return None

    @property
    def backdoor_target(self) -> int | None:
        """The class a triggered image should be predicted as (``None`` without a trigger)."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NoAttack(Attack):
    """No attacker changes anything (the attacker ratio is ignored)."""


def _check_start(start_round: int) -> int:
    if isinstance(start_round, bool) or int(start_round) != start_round or start_round < 0:
        raise ValueError(f"start_round must be an integer >= 0 (the first attacked round), got {start_round!r}.")
    return int(start_round)


class ModelPoisoning(Attack):
    """Base of the update-replacing attacks: honest before ``start_round``, then :meth:`poison`."""

    needs_source_holders = False

    def __init__(self, start_round: int = 0) -> None:
        self.start_round = _check_start(start_round)

    def poison_updates(self, updates: torch.Tensor, is_attacker: torch.Tensor, round: int,
                       generator: torch.Generator | None = None,
                       layout: ParamLayout | None = None) -> torch.Tensor:
        att = torch.as_tensor(is_attacker, dtype=torch.bool).to(updates.device)
        if att.shape != (updates.shape[0],):
            raise ValueError(
                f"is_attacker must be a ({updates.shape[0]},) mask, one entry per update row; "
                f"got shape {tuple(att.shape)}.")
        if round < self.start_round or not bool(att.any()):
            return updates
        return self.poison(updates, att, generator, layout)

    def poison(self, updates: torch.Tensor, is_attacker: torch.Tensor,
               generator: torch.Generator | None, layout: ParamLayout | None) -> torch.Tensor:
        raise NotImplementedError


#: the option of ``attack_kwargs`` that every attack takes: False, the attackers refuse to mix
MIX_OPTION = "mix"


def split_mix_option(attack_kwargs: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
    """``(mix, the other attack_kwargs)``: :data:`MIX_OPTION` taken out of ``attack_kwargs``
    (default True), the rest for the attack's factory.

    Raises:
        ValueError: ``mix`` is not True or False.
    """
    rest = dict(attack_kwargs)
    mix = rest.pop(MIX_OPTION, True)
    if not isinstance(mix, bool):
        raise ValueError(f"attack_kwargs {MIX_OPTION!r} must be true or false (whether the attackers mix their "
                         f"updates in FFL's mixing), got {mix!r}.")
    return mix, rest


def honest_rows(updates: torch.Tensor, is_attacker: torch.Tensor) -> torch.Tensor:
    """The honest rows; all rows when every peer of the round attacks (the attackers then
    can only use their own honestly trained updates as the estimate)."""
    honest = updates[~is_attacker]
    return honest if honest.shape[0] else updates


def model_poisoning_factory(cls: type[ModelPoisoning]):
    """A registry factory for ``cls``: drops the class arguments every attack receives and
    turns an unknown keyword (a typo in ``attack_kwargs``) into a ValueError naming the valid ones."""
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def make(source_class: int | None = None, target_class: int | None = None,
             num_classes: int | None = None, **kwargs) -> Attack:
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise ValueError(f"Unknown argument(s) {unknown} for the {cls.name!r} attack; valid: {valid}.")
        return cls(**kwargs)

    make.__doc__ = cls.__doc__
    return make


__all__ = ["Attack", "MIX_OPTION", "ModelPoisoning", "NoAttack", "honest_rows", "model_poisoning_factory",
           "split_mix_option"]
