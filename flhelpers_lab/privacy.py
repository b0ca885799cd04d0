"""The privacy notebook's studies: their sizes per profile, the inversion study and the accuracy cost of DP.

Sizes per profile (``quick`` for CI, ``paper`` for more effort): :class:`PrivacyProfile`.

``smoke`` runs every code path in seconds (for the notebook's own test); its numbers mean nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd

from flhelpers.config import ExperimentConfig
from flhelpers.defenses.dp import planned_epsilon, with_dp
from flhelpers.privacy.inversion import InversionConfig


@dataclass(frozen=True)
class PrivacyProfile:
    """What the privacy notebook runs.

    Attributes:
        inversion: the attack's settings (steps, restarts).
        peers: victims per study (the FFL README shows two, k and j).
        batch_sizes: images per victim (one image, and a batch of 8).
        dp_victim_noise: noise multipliers ``z`` of the DP victims in the reconstruction table.
        dp_victim_batch_noise: those also shown for the batch of 8.
        benchmark_profile: the benchmark profile the DP accuracy runs start from.
        dp_overrides: config overrides of those runs (MNIST-iid).
        dp_noise: the noise multipliers of the accuracy-vs-epsilon runs.
        dp_clip: their clipping norm ``C``.
        dp_delta: their ``delta``.
    """

    inversion: InversionConfig
    peers: int = 2
    batch_sizes: tuple[int, ...] = (1, 8)
    dp_victim_noise: tuple[float, ...] = (0.001, 0.01, 0.1)
    dp_victim_batch_noise: tuple[float, ...] = (0.01,)
    benchmark_profile: str = "quick"
    dp_overrides: dict[str, Any] = field(default_factory=dict)
    dp_noise: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
    dp_clip: float = 0.5
    dp_delta: float = 1e-5


PRIVACY_PROFILES: dict[str, PrivacyProfile] = {
    # about 4 minutes on one uncontended CPU core: 400 Adam steps per inversion; the DP runs are
    # MNIST-iid with 20 peers, 10 rounds of 300 samples per peer at lr 0.05.
    "quick": PrivacyProfile(
        inversion=InversionConfig(steps=400, restarts=1),
        dp_overrides=dict(num_peers=20, rounds=10, train_subset=6000, test_subset=5000, lr=0.05),
    ),
    "paper": PrivacyProfile(
        inversion=InversionConfig(steps=2000, restarts=4),
        dp_victim_batch_noise=(0.001, 0.01, 0.1),
        benchmark_profile="paper",
        dp_overrides=dict(lr=0.01),
        dp_noise=(0.3, 1.0, 2.0, 4.0),
        dp_clip=0.5,
    ),
    "smoke": PrivacyProfile(
        inversion=InversionConfig(steps=5, restarts=1),
        batch_sizes=(1, 2),
        dp_victim_noise=(0.01,),
        dp_overrides=dict(num_peers=4, rounds=2, train_subset=600, test_subset=200, lr=0.05),
        dp_noise=(1.0,),
    ),
}


def privacy_profile(name: str) -> PrivacyProfile:
    """The :class:`PrivacyProfile` called ``name`` (``quick``, ``paper`` or ``smoke``)."""
    if name not in PRIVACY_PROFILES:
        raise ValueError(f"Unknown privacy profile {name!r}; valid: {', '.join(PRIVACY_PROFILES)}.")
    return PRIVACY_PROFILES[name]


def victims_for(profile: PrivacyProfile, batch_size: int):
    """The victim settings the notebook compares: FL, FFL and DP at the profile's noise levels."""
    from flhelpers.privacy.victims import Victim

    noise = profile.dp_victim_noise if batch_size == 1 else profile.dp_victim_batch_noise
    return [Victim("fl"), Victim("ffl")] + [Victim("dp", float(z)) for z in noise]


def run_inversion_study(dataset, model, profile: PrivacyProfile, batch_size: int, seed: int = 0,
                        progress: bool = False):
    """One reconstruction study of the notebook: ``profile.peers`` victims with ``batch_size``
    images each (distinct labels), attacked under :func:`victims_for`; see
    :func:`flhelpers.privacy.victims.reconstruction_study`."""
    from flhelpers.privacy.victims import reconstruction_study, sample_victim_batches

    x, y = sample_victim_batches(dataset, profile.peers, batch_size, seed=seed)
    return reconstruction_study(model, x, y, victims_for(profile, batch_size), config=profile.inversion,
                                mean=dataset.mean, std=dataset.std, seed=seed, progress=progress)


def dp_accuracy_study(base: ExperimentConfig, noise_multipliers: Sequence[float], clip: float,
                      delta: float = 1e-5, data_root: str | None = None, results_dir: str = "results",
                      dataset=None, include_baseline: bool = True, progress: bool = False) -> pd.DataFrame:
    """The accuracy cost of DP: run ``base`` without DP and wrapped in DP-FedAvg at each ``z``.

    Returns one row per run: ``noise_multiplier`` (NaN without DP), ``clip``, ``epsilon`` after
    the last round (the run summary's when the engine reports it, else :func:`planned_epsilon`),
    ``delta``, ``final_accuracy`` (last evaluated round), ``accuracy``, ``source_accuracy`` and
    ``attack_success_rate`` (the summary's means over the last 10 evaluated rounds), ``run_id``.
    Finished runs are reused from ``results_dir``.
    """
    from flhelpers.fl.engine import run_experiment

    runs: list[tuple[float | None, ExperimentConfig]] = [(None, base)] if include_baseline else []
    runs += [(float(z), with_dp(base, clip, z, delta)) for z in noise_multipliers]
    rows = []
    for z, cfg in runs:
        res = run_experiment(cfg, data_root=data_root, results_dir=results_dir, dataset=dataset,
                             progress=progress)
        eps = float("nan") if z is None else res.summary.get("epsilon")
        if z is not None and eps is None:  # an engine that does not report it, or an infinite one
            eps = planned_epsilon(cfg)
        rows.append({"noise_multiplier": float("nan") if z is None else z,
                     "clip": float("nan") if z is None else float(clip), "epsilon": eps,
                     "delta": float("nan") if z is None else float(delta),
                     "final_accuracy": float(res.metrics["accuracy"].iloc[-1]),
                     "accuracy": res.summary["accuracy"], "source_accuracy": res.summary["source_accuracy"],
                     "attack_success_rate": res.summary["attack_success_rate"], "run_id": res.run_id})
    return pd.DataFrame(rows)
