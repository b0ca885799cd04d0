r"""DP-FedAvg (McMahan, Ramage, Talwar and Zhang 2018, "Learning differentially private recurrent
language models", Algorithm 1 with equal peer weights) as a wrapper around any aggregation rule.

Per round, over the $m$ updates $u_k$ the server receives:

1. clip each update to L2 norm $C$: $\operatorname{clip}_C(u) = u \min(1, C / \lVert u \rVert)$;
2. aggregate the clipped updates with the inner rule (``fedavg`` by default, unweighted, so the
   aggregate is $\frac{1}{m} \sum_k \operatorname{clip}_C(u_k)$);
3. add Gaussian noise of standard deviation $z C$ to the *sum*, i.e. $z C / m$ to the
   mean:
   $$
   \Delta = \operatorname{inner}\bigl(\operatorname{clip}_C(u_1), \dots, \operatorname{clip}_C(u_m)\bigr)
   + \mathcal{N}\bigl(0, (z C / m)^2 I\bigr)
   $$
   ($z$ = ``noise_multiplier``; the noise is drawn from a generator seeded by the round's
   ``ctx.seed``, so a resumed run draws the same noise);
4. account one step of the sampled Gaussian mechanism with sampling rate $q$ (peers per round
   / peers, read from the run's ``fraction``) in an RDP accountant
   (:mod:`flhelpers.defenses.accountant`); ``result.info["epsilon"]`` is the ``epsilon`` spent
   after this round at ``delta``.

The guarantee is user-level (a peer's whole data set) with add/remove adjacency. It is exact
for the unweighted mean (a peer moves the mean by at most ``C / m``), which is the default
inner rule here: ``inner="fedavg"`` is built with ``weighted=False`` unless ``inner_kwargs`` says
otherwise. For any other inner rule the same noise is added and the same epsilon is reported,
but a single peer may move a robust aggregate (median, Krum) by more than ``C / m``, so that
epsilon is nominal; ``info["dp_exact"]`` says which case applies. The engine's hooks
``select_peers`` and ``transform_updates`` are passed through to the inner rule, so clipping
and noise apply after, e.g., FFL's mixing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from flhelpers.config import ExperimentConfig
from flhelpers.defenses.base import (AggregationContext, AggregationResult, Defense, Screening, ServerView,
                                     Transformed, as_screening, as_transformed)
from flhelpers.defenses.accountant import CONVERSIONS, RDPAccountant, epsilon_of
from flhelpers.seeding import derive_seed


def clip_updates(updates: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u_k * min(1, C / ||u_k||) for each row, the rows' original norms)``; a zero row stays zero."""
    if not clip > 0:
        raise ValueError(f"The clipping norm C must be positive, got {clip}.")
    norms = updates.norm(dim=1)
    factor = torch.clamp(clip / torch.clamp(norms, min=torch.finfo(updates.dtype).tiny), max=1.0)
    return updates * factor.unsqueeze(1), norms


class DPFedAvg(Defense):
    """Clip, aggregate with ``inner``, add Gaussian noise ``N(0, (zC/m)^2)``, account the privacy.

    Args:
        inner: the registered name of the rule that aggregates the clipped updates.
        clip: ``C``, the L2 clipping norm of each update.
        noise_multiplier: ``z``; the noise on the sum has standard deviation ``z * C``.
        delta: the ``delta`` at which ``epsilon`` is reported.
        sampling_rate: ``q``; ``None`` reads ``max(int(fraction * K), 1) / K`` from the run in
            ``select_peers`` (``view.sampling_rate``; 1, no amplification, outside the engine).
        inner_kwargs: keyword arguments of the inner rule.
        conversion: RDP to ``(epsilon, delta)`` conversion, ``"improved"`` or ``"classic"``.
    """

    name = "dp"

    def __init__(self, inner: str = "fedavg", clip: float = 1.0, noise_multiplier: float = 1.0,
                 delta: float = 1e-5, sampling_rate: float | None = None,
                 inner_kwargs: dict[str, Any] | None = None, conversion: str = "improved") -> None:
        from flhelpers.registry import DEFENSES

        if str(inner).strip().lower() == self.name:
            raise ValueError("dp cannot wrap itself; choose a plain rule such as fedavg or median.")
        if not float(clip) > 0:
            raise ValueError(f"dp needs a clipping norm clip > 0, got {clip}.")
        if not float(noise_multiplier) >= 0:
            raise ValueError(f"dp needs noise_multiplier >= 0, got {noise_multiplier}.")
        if not 0.0 < float(delta) < 1.0:
            raise ValueError(f"dp needs 0 < delta < 1, got {delta}; 1e-5 or 1 / peers^1.1 are common.")
        if sampling_rate is not None and not 0.0 < float(sampling_rate) <= 1.0:
            raise ValueError(f"dp needs a sampling_rate in (0, 1] (peers per round / peers), got {sampling_rate}.")
        if conversion not in CONVERSIONS:
            raise ValueError(f"Unknown conversion {conversion!r}; valid: {', '.join(CONVERSIONS)}.")
        kwargs = dict(inner_kwargs or {})
        self.inner_name = str(inner)
        if self.inner_name.strip().lower() == "fedavg":
            kwargs.setdefault("weighted", False)
        self.inner = DEFENSES.get(inner)(**kwargs)
        self.inner_kwargs = kwargs
        self.needs_attacker_count = self.inner.needs_attacker_count
        self.clip = float(clip)
        self.noise_multiplier = float(noise_multiplier)
        self.delta = float(delta)
        self.sampling_rate = None if sampling_rate is None else float(sampling_rate)
        self._run_rate: float | None = None
        self.accountant = RDPAccountant(conversion=conversion)

    @property
    def dp_exact(self) -> bool:
        """Whether the reported epsilon is a guarantee (unweighted FedAvg inside) or nominal."""
        return type(self.inner).__name__ == "FedAvg" and not getattr(self.inner, "weighted", True)

    @property
    def q(self) -> float:
        """The sampling rate used by the accountant."""
        if self.sampling_rate is not None:
            return self.sampling_rate
        return self._run_rate if self._run_rate is not None else 1.0

    def validate(self, num_peers: int, expected_attackers: int) -> None:
        self.inner.validate(num_peers, expected_attackers)

    def select_peers(self, view: ServerView) -> Screening:
        """Learn ``q = max(int(C K), 1) / K`` from the run (``view.sampling_rate``), then let the
        inner rule select (its note is passed on to it)."""
        self._run_rate = view.sampling_rate
        inner_select = getattr(self.inner, "select_peers", None)
        if inner_select is not None:
            return as_screening(inner_select(view))
        return Screening(np.asarray(view.candidates, dtype=np.int64))

    def transform_updates(self, view: ServerView) -> Transformed:
        """The inner rule's transform (e.g. ``ffl-mixing``), if it has one."""
        inner_transform = getattr(self.inner, "transform_updates", None)
        if inner_transform is None:
            return Transformed(view.updates)
        return as_transformed(inner_transform(view))

    def noise(self, dim: int, num_updates: int, seed: int, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The round's noise on the mean: ``N(0, (z C / m)^2 I_dim)`` from ``seed``."""
        g = torch.Generator().manual_seed(derive_seed(seed, "dp-noise"))
        std = self.noise_multiplier * self.clip / num_updates
        return (std * torch.randn(dim, generator=g, dtype=torch.float32)).to(device=device, dtype=dtype)

    def aggregate(self, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
        m = updates.shape[0]
        clipped, norms = clip_updates(updates, self.clip)
        res = self.inner(clipped, ctx)
        update = res.update + self.noise(updates.shape[1], m, ctx.seed, updates.device, res.update.dtype)
        self.accountant.step(self.q, self.noise_multiplier)
        epsilon = self.accountant.epsilon(self.delta)
        info = {**res.info, "epsilon": epsilon, "delta": self.delta, "dp_steps": self.accountant.steps,
                "sampling_rate": self.q, "noise_multiplier": self.noise_multiplier, "clip": self.clip,
                "clipped": int((norms > self.clip).sum()), "median_norm": float(norms.median()),
                "dp_exact": self.dp_exact}
        return AggregationResult(update, res.accepted, res.weights, info)

    def epsilon(self) -> float:
        """The epsilon spent so far at ``delta``."""
        return self.accountant.epsilon(self.delta)

    def state_dict(self) -> dict[str, Any]:
        return {"accountant": self.accountant.state_dict(), "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accountant.load_state_dict(state.get("accountant", {}))
        self.inner.load_state_dict(state.get("inner", {}))

    def __repr__(self) -> str:
        return (f"DPFedAvg(inner={self.inner!r}, clip={self.clip}, noise_multiplier={self.noise_multiplier}, "
                f"delta={self.delta})")


def with_dp(cfg: ExperimentConfig, clip: float, noise_multiplier: float, delta: float = 1e-5,
            **dp_kwargs: Any) -> ExperimentConfig:
    """``cfg`` with its defense wrapped in DP-FedAvg: ``defense="dp"``, ``inner=cfg.defense``.

    >>> from flhelpers.config import benchmark_config
    >>> with_dp(benchmark_config("mnist-iid", "quick", defense="median"), 0.5, 1.0).defense_kwargs["inner"]
    'median'
    """
    if cfg.defense == DPFedAvg.name:
        raise ValueError("This config already uses the dp defense; change its defense_kwargs instead.")
    kwargs = {"inner": cfg.defense, "clip": float(clip), "noise_multiplier": float(noise_multiplier),
              "delta": float(delta), **dp_kwargs}
    if cfg.defense_kwargs:
        kwargs["inner_kwargs"] = dict(cfg.defense_kwargs)
    return cfg.replace(defense=DPFedAvg.name, defense_kwargs=kwargs)


def planned_epsilon(cfg: ExperimentConfig, rounds: int | None = None) -> float:
    """The epsilon a ``dp`` run of ``cfg`` will have spent after ``rounds`` (default: all) rounds.

    The accountant's answer depends only on ``q``, ``z``, the number of rounds and ``delta``,
    so it is known before training; :class:`DPFedAvg` reports the same value round by round.
    """
    if cfg.defense != DPFedAvg.name:
        raise ValueError(f"planned_epsilon needs a config with defense='dp', got {cfg.defense!r}; "
                         f"use with_dp(cfg, clip, noise_multiplier).")
    kw = cfg.defense_kwargs
    q = kw.get("sampling_rate") or max(int(cfg.fraction * cfg.num_peers), 1) / cfg.num_peers
    return epsilon_of(q, float(kw.get("noise_multiplier", 1.0)), cfg.rounds if rounds is None else rounds,
                      float(kw.get("delta", 1e-5)), conversion=kw.get("conversion", "improved"))
