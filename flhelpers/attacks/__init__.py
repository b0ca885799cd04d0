"""Every attack, looked up by name in ``flhelpers.registry.ATTACKS``; one module each over one base.

* data poisoning: ``label_flip`` (the paper's attack, :mod:`~flhelpers.attacks.label_flip`);
* model poisoning (PAPER.md section 7), each replacing or perturbing the attackers' rows of the
  ``K x D`` update matrix, so it combines with every benchmark and rule: ``gaussian-noise`` (FFL,
  :mod:`~flhelpers.attacks.gaussian_noise`), ``ipm`` (Xie et al.'s inner-product manipulation,
  :mod:`~flhelpers.attacks.ipm`), ``alie`` (Baruch et al.'s "a little is enough",
  :mod:`~flhelpers.attacks.alie`);
* ``none``: no attacker changes anything.

:mod:`~flhelpers.attacks.base` holds :class:`Attack` (the two hooks the engine calls) and
:class:`ModelPoisoning`; :mod:`~flhelpers.attacks.selection` draws the attackers. A new attack is
a subclass of either, registered with :func:`flhelpers.register_attack`.
"""

from __future__ import annotations

from flhelpers.attacks.alie import ALittleIsEnough, alie_z
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

register_attack("label_flip", _label_flip)
register_attack("none", _none)
for _name, _factory in MODEL_POISONING_ATTACKS.items():
    register_attack(_name, _factory)

__all__ = ["ALittleIsEnough", "Attack", "GaussianNoise", "InnerProductManipulation", "LabelFlip",
           "MODEL_POISONING_ATTACKS", "ModelPoisoning", "NoAttack", "alie_z", "honest_rows", "num_attackers",
           "select_attackers"]
