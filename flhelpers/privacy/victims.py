"""What an honest-but-curious server sees of a peer's update under FL, FFL and DP, and how much
of the peer's inputs a gradient-inversion attack recovers from it.

The victims, ``K`` peers (the FFL README shows two, ``k`` and ``j``), each take one SGD step
of their batch of ``N`` images from the global model: ``u_k = -lr * g_k``, ``g_k`` the gradient
of the batch-mean cross-entropy (one step of a fresh SGD-with-momentum optimizer is this step).
The server observes:

* ``"fl"`` (plain federated learning): ``u_k`` itself;
* ``"ffl"`` (fragmented FL): the mixed updates of :func:`flhelpers.defenses.ffl.mix_pairs`,
  pairs of peers having swapped a random half of their coordinates, so row ``k`` holds half of
  ``u_k`` and half of its partner's update;
* ``"dp"`` (client-level DP noise on the update the server sees, i.e. DP-FedAvg's mechanism
  with the noise added before the server looks, as by the peer itself or under secure
  aggregation): ``clip_C(u_k) + N(0, (z C)^2 I)``. Its epsilon is one round of the Gaussian
  mechanism (``q = 1``, no subsampling) at ``delta``.

The server inverts each observed row as a gradient (``g = -u / lr``) with
:func:`flhelpers.privacy.inversion.invert_gradients` and the result is scored against the
peer's true inputs (:func:`flhelpers.privacy.image_metrics.score_reconstructions`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd
import torch
from torch import nn

from flhelpers.defenses.accountant import epsilon_of
from flhelpers.defenses.dp import clip_updates
from flhelpers.params import layout_of
from flhelpers.privacy.image_metrics import score_reconstructions, to_pixels
from flhelpers.privacy.inversion import (
    InversionConfig,
    gradient_from_update,
    invert_gradients,
    label_recovery_rate,
    model_gradient,
)
from flhelpers.seeding import torch_generator

VICTIM_KINDS = ("fl", "ffl", "dp")


@dataclass(frozen=True)
class Victim:
    """One way the server observes updates.

    Attributes:
        kind: ``"fl"``, ``"ffl"`` or ``"dp"``.
        noise_multiplier: ``z`` for ``"dp"``: the noise has standard deviation ``z * C``.
        clip: ``C`` for ``"dp"``; ``None`` takes the median norm of the peers' updates.
    """

    kind: str
    noise_multiplier: float = 0.0
    clip: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in VICTIM_KINDS:
            raise ValueError(f"Unknown victim kind {self.kind!r}; valid: {', '.join(VICTIM_KINDS)}.")
        if self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}.")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be positive or None, got {self.clip}.")

    @property
    def label(self) -> str:
        if self.kind == "dp":
            return f"DP (z={self.noise_multiplier:g})"
        return self.kind.upper()


def one_step_updates(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, lr: float) -> torch.Tensor:
    """Each peer's one-step SGD update ``u_k = -lr * grad_W L(batch_k)``, ``(K, D)``.

    ``inputs`` is ``(K, N, C, H, W)`` (K peers' batches of N) and ``labels`` ``(K, N)``.
    """
    if inputs.dim() != 5 or labels.shape != inputs.shape[:2]:
        raise ValueError(f"Expected inputs (K, N, C, H, W) and labels (K, N); got {tuple(inputs.shape)} "
                         f"and {tuple(labels.shape)}.")
    return torch.stack([-lr * model_gradient(model, x, y) for x, y in zip(inputs, labels)])


def observe(victim: Victim, updates: torch.Tensor, generator: torch.Generator,
            layout=None) -> tuple[torch.Tensor, dict]:
    """The ``(K, D)`` updates the server sees under ``victim``, and facts about them."""
    if victim.kind == "fl":
        return updates.clone(), {}
    if victim.kind == "ffl":
        from flhelpers.defenses.ffl import mix_pairs

        if updates.shape[0] < 2:
            raise ValueError("FFL mixing needs at least two peers.")
        mixed, pairs = mix_pairs(updates, generator, layout)
        return mixed, {"pairs": pairs}
    clip = victim.clip if victim.clip is not None else float(updates.norm(dim=1).median())
    clipped, _ = clip_updates(updates, clip)
    noise = torch.randn(updates.shape, generator=generator, dtype=torch.float32).to(updates)
    return clipped + victim.noise_multiplier * clip * noise, {"clip": clip}


@dataclass
class StudyResult:
    """Reconstructions of every victim setting, and their scores.

    Attributes:
        table: one row per (victim, peer): ``victim``, ``kind``, ``noise_multiplier``, ``clip``,
            ``epsilon`` (DP only), ``peer``, ``psnr``, ``ssim`` (means over the peer's images,
            best match over its batch), ``label_recovery``, ``loss``, ``seconds``.
        truth: ``(K, N, C, H, W)`` the peers' inputs in pixel space ``[0, 1]``.
        reconstructions: victim label -> ``(K, N, C, H, W)`` reconstructions in pixel space.
        labels: victim label -> ``(K, N)`` the labels the attack used.
    """

    table: pd.DataFrame
    truth: torch.Tensor
    reconstructions: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: dict[str, torch.Tensor] = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """Mean PSNR, SSIM and label recovery per victim setting, in the order studied."""
        cols = ["psnr", "ssim", "label_recovery"]
        order = list(dict.fromkeys(self.table["victim"]))
        out = self.table.groupby("victim", sort=False)[cols + ["epsilon"]].mean().reindex(order)
        return out.reset_index()


def reconstruction_study(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                         victims: Sequence[Victim], lr: float = 0.01,
                         config: InversionConfig | None = None, mean: Sequence[float] | None = None,
                         std: Sequence[float] | None = None, seed: int = 0, delta: float = 1e-5,
                         known_labels: bool = False, progress: bool = False) -> StudyResult:
    """Invert every peer's observed update under each victim setting and score the results.

    Args:
        model: the global model (put in ``eval()`` here: dropout off for victim and attacker).
        inputs: ``(K, N, C, H, W)`` the peers' batches, normalised like training batches.
        labels: ``(K, N)`` their labels.
        victims: the settings to compare, e.g. ``[Victim("fl"), Victim("ffl"), Victim("dp", 0.01)]``.
        lr: the peers' learning rate (the cosine loss does not depend on it).
        config: the attack's settings (its seed is offset per peer).
        mean, std: the data set's normalisation (pixel box and pixel-space scoring).
        seed: seeds the mixing and the DP noise.
        delta: the ``delta`` of the DP victims' epsilon.
        known_labels: give the attack the true labels instead of recovering them.
        progress: print one line per inversion.
    """
    cfg = config or InversionConfig()
    model.eval()
    layout = layout_of(model)
    device = next(model.parameters()).device
    inputs, labels = inputs.to(device), labels.to(device)
    k, n = labels.shape
    updates = one_step_updates(model, inputs, labels, lr).detach()
    truth = torch.stack([to_pixels(x, mean, std) for x in inputs])
    rows, recs, labs = [], {}, {}
    for v_index, victim in enumerate(victims):
        observed, facts = observe(victim, updates, torch_generator(seed, "victim", victim.kind, v_index), layout)
        eps = epsilon_of(1.0, victim.noise_multiplier, 1, delta) if victim.kind == "dp" else float("nan")
        out_x, out_y = [], []
        for peer in range(k):
            t0 = time.perf_counter()
            peer_cfg = InversionConfig(**{**cfg.__dict__, "seed": cfg.seed + 1000 * peer})
            res = invert_gradients(model, gradient_from_update(observed[peer], lr), n, inputs.shape[2:],
                                   labels=labels[peer] if known_labels else None, config=peer_cfg,
                                   mean=mean, std=std)
            rec = to_pixels(res.inputs, mean, std)
            scores = score_reconstructions(rec, truth[peer])
            rows.append({"victim": victim.label, "kind": victim.kind,
                         "noise_multiplier": victim.noise_multiplier if victim.kind == "dp" else 0.0,
                         "clip": facts.get("clip", float("nan")), "epsilon": eps, "peer": peer,
                         "psnr": scores.mean_psnr, "ssim": scores.mean_ssim,
                         "label_recovery": label_recovery_rate(res.labels, labels[peer]),
                         "loss": res.loss, "seconds": time.perf_counter() - t0})
            if progress:
                r = rows[-1]
                print(f"{victim.label:>14s} peer {peer}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}, "
                      f"labels {r['label_recovery']:.0%} ({r['seconds']:.1f} s)")
            out_x.append(rec.cpu())
            out_y.append(res.labels)
        recs[victim.label] = torch.stack(out_x)
        labs[victim.label] = torch.stack(out_y)
    return StudyResult(pd.DataFrame(rows), truth.cpu(), recs, labs)


def sample_victim_batches(dataset, num_peers: int, batch_size: int, seed: int = 0,
                          distinct_labels: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``K`` disjoint batches of ``N`` training images, ``(K, N, C, H, W)`` normalised, and labels.

    With ``distinct_labels`` (and ``N <= classes``) each batch holds ``N`` different classes, as
    in the FFL README's figures; the choice is seeded.
    """
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(dataset.train_y), generator=g)
    used: set[int] = set()
    xs, ys = [], []
    for _ in range(num_peers):
        chosen: list[int] = []
        seen: set[int] = set()
        for i in perm.tolist():
            if i in used:
                continue
            y = int(dataset.train_y[i])
            if distinct_labels and batch_size <= dataset.num_classes and y in seen:
                continue
            chosen.append(i)
            seen.add(y)
            used.add(i)
            if len(chosen) == batch_size:
                break
        idx = torch.tensor(chosen)
        xs.append(dataset.prepare(dataset.train_x[idx]))
        ys.append(dataset.train_y[idx])
    return torch.stack(xs), torch.stack(ys)
