"""flhelpers: a reproducible lab for poisoning attacks and defenses in federated learning.

The heart is a faithful reproduction of *Defending against the Label-flipping Attack in
Federated Learning* (LFighter). Data flows one way::

    config -> data and partition -> peers' local training -> updates (K x D)
           -> defense -> new global model -> metrics -> tidy results -> plots

The package is organised by role (docs/architecture.md): ``attacks/`` and ``defenses/`` hold
every attack and every aggregation rule, ``fl/`` the round loop, its backends and the grid
runner, ``analysis/`` the paper's gradient views, ``plots/`` the figures. Imports only flow down
that list (tests/test_architecture.py checks it). The paper's studies are a lab beside this
library, ``flhelpers_lab``, which imports it and is never imported by it.
"""

from __future__ import annotations

import sys as _sys

try:
    import torch as _torch  # noqa: F401
except ImportError as _exc:  # the system Python, not the project's environment
    raise ModuleNotFoundError(
        f"flhelpers needs torch, which this Python ({_sys.executable}) cannot import ({_exc}). Use the project's "
        f"environment: `make install` creates .venv; then `source .venv/bin/activate`, or run "
        f"`.venv/bin/python -m flhelpers ...` (README, 'The environment').", name="torch") from _exc

from flhelpers import attacks, defenses, models  # noqa: F401,E402  (register every built-in name)
from flhelpers._version import __version__
from flhelpers.config import BENCHMARKS, ConfigError, ExperimentConfig, benchmark_config  # noqa: E402
from flhelpers.data import FLDataset, load_dataset  # noqa: E402
from flhelpers.registry import (  # noqa: E402
    ATTACKS,
    DATASETS,
    DEFENSES,
    MODELS,
    register_attack,
    register_dataset,
    register_defense,
    register_model,
)


def run_experiment(*args, **kwargs):
    """See :func:`flhelpers.fl.engine.run_experiment`."""
    from flhelpers.fl.engine import run_experiment as _run

    return _run(*args, **kwargs)


def load_results(*args, **kwargs):
    """See :func:`flhelpers.results.load_results`."""
    from flhelpers.results import load_results as _load

    return _load(*args, **kwargs)


__all__ = [
    "ATTACKS", "BENCHMARKS", "ConfigError", "DATASETS", "DEFENSES", "ExperimentConfig", "FLDataset",
    "MODELS", "__version__", "benchmark_config", "load_dataset", "load_results", "register_attack",
    "register_dataset", "register_defense", "register_model", "run_experiment",
]
