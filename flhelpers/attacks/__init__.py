"""Every attack, looked up by name in ``flhelpers.registry.ATTACKS``; one module each over one base.

* data poisoning: ``label_flip`` (the paper's attack, :mod:`~flhelpers.attacks.label_flip`);
* model poisoning (the paper's related systems), each replacing or perturbing the attackers' rows of the
  ``K x D`` update matrix, so it combines with every benchmark and rule: ``gaussian-noise`` (FFL,
  :mod:`~flhelpers.attacks.gaussian_noise`), ``ipm`` (Xie et al.'s inner-product manipulation,
  :mod:`~flhelpers.attacks.ipm`), ``alie`` (Baruch et al.'s "a little is enough",
  :mod:`~flhelpers.attacks.alie`);
* data poisoning beyond the paper (:mod:`~flhelpers.attacks.data_poisoning`: each
  attacks a round with probability ``rate`` and from ``start_round`` on): ``timed-flip``
  (:mod:`~flhelpers.attacks.timed_flip`), ``partial-flip`` (a share ``q`` of the source samples,
  :mod:`~flhelpers.attacks.partial_flip`), ``multi-pair-flip`` (several pairs,
  :mod:`~flhelpers.attacks.multi_pair`), ``camouflage-flip`` (an output layer blended with a
  clean update, :mod:`~flhelpers.attacks.camouflage`), ``backdoor`` (BadNets with optional model
  replacement, :mod:`~flhelpers.attacks.backdoor`);
* ``none``: no attacker changes anything.

:mod:`~flhelpers.attacks.base` holds :class:`Attack` (the two hooks the engine calls) and
:class:`ModelPoisoning`; :mod:`~flhelpers.attacks.selection` draws the attackers. A new attack is
a subclass of either, registered with :func:`flhelpers.register_attack`.
"""

from __future__ import annotations

from flhelpers.attacks.alie import ALittleIsEnough, alie_z
from flhelpers.attacks.backdoor import Backdoor
from flhelpers.attacks.camouflage import CamouflageFlip
from flhelpers.attacks.data_poisoning import DataPoisoning, data_poisoning_factory
from flhelpers.attacks.multi_pair import MultiPairFlip
from flhelpers.attacks.partial_flip import PartialFlip
from flhelpers.attacks.timed_flip import TimedFlip
from flhelpers.attacks.base import Attack, ModelPoisoning, NoAttack, honest_rows, model_poisoning_factory
from flhelpers.attacks.gaussian_noise import GaussianNoise
from flhelpers.attacks.ipm import InnerProductManipulation
from flhelpers.attacks.label_flip import LabelFlip
from flhelpers.attacks.selection import num_attackers, select_attackers
from flhelpers.registry import register_attack


def _label_flip(source_class: int, target_class: int, num_classes: int | None = None) -> Attack:
    return LabelFlip(source_class, target_class, num_classes)


def _none(**_) -> Attack:
    return NoAttack()


#: the model-poisoning attacks: name -> registry factory (called with ``source_class``,
#: ``target_class``, ``num_classes`` and ``config.attack_kwargs``)
MODEL_POISONING_ATTACKS = {cls.name: model_poisoning_factory(cls)
                           for cls in (GaussianNoise, InnerProductManipulation, ALittleIsEnough)}

#: the data-poisoning attacks of the Beyond study: name -> registry factory (called as above)
DATA_POISONING_ATTACKS = {cls.name: data_poisoning_factory(cls)
                          for cls in (TimedFlip, PartialFlip, MultiPairFlip, CamouflageFlip, Backdoor)}

register_attack("label_flip", _label_flip)
for _name, _factory in DATA_POISONING_ATTACKS.items():
    register_attack(_name, _factory)
register_attack("none", _none)
for _name, _factory in MODEL_POISONING_ATTACKS.items():
    register_attack(_name, _factory)

__all__ = ["ALittleIsEnough", "Attack", "Backdoor", "CamouflageFlip", "DATA_POISONING_ATTACKS", "DataPoisoning",
           "GaussianNoise", "MultiPairFlip", "PartialFlip", "TimedFlip", "InnerProductManipulation", "LabelFlip",
           "MODEL_POISONING_ATTACKS", "ModelPoisoning", "NoAttack", "alie_z", "honest_rows", "num_attackers",
           "select_attackers"]
