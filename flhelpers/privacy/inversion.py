"""Gradient inversion: reconstruct a peer's training inputs from its gradient or one-step update.

The attack of Geiping, Bauermeister, Dröge and Moeller 2020 ("Inverting Gradients - How easy
is it to break privacy in federated learning?", NeurIPS), section 4: given the model ``f_W``
and an observed gradient ``g* = grad_W L(f_W(x*), y*)``, find dummy inputs ``x`` (N images) that
minimise

    R(x) = 1 - <grad_W L(f_W(x), y), g*> / (||grad_W L(f_W(x), y)|| ||g*||)  +  beta * TV(x)

(cosine distance between the whole flattened gradients, plus total variation
``TV(x) = mean |x[..., i+1, :] - x[..., i, :]| + mean |x[..., :, j+1] - x[..., :, j]|``), with Adam
on the *signed* gradient of ``R``, step size ``lr`` decayed by 10 at 3/8, 5/8 and 7/8 of the
steps, ``x`` kept inside the valid pixel box, and several random restarts of which the one with
the lowest final ``R`` is kept.

Labels ``y`` are given, or recovered from the output-layer bias gradient before the
optimisation (:func:`recover_labels`):

* one image (iDLG, Zhao, Mopuri and Bilen 2020): for cross-entropy,
  ``dL/db_c = p_c - 1[c = y]``, negative only for the true class, so ``y = argmin_c dL/db_c``;
* a batch of N (Geng et al. 2021, "Towards general deep leakage in federated learning"): with
  the batch-mean loss ``dL/db_c = mean_i p_ic - n_c / N``, so ``n_c = N (pbar_c - dL/db_c)``,
  where the mean softmax ``pbar`` is estimated from the model's outputs on random inputs;
  the counts are rounded to sum to N (largest remainders).

A peer's one-step SGD update is ``u = -lr * g``; :func:`gradient_from_update` inverts that.
The cosine loss is blind to the scale, so only the sign of the conversion matters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flhelpers.params import layout_of


@dataclass
class InversionConfig:
    """Settings of the attack.

    The defaults were tuned on the MNIST CNN (21,840 parameters) and
    :class:`flhelpers.privacy.models.SmallConvNet` on CIFAR-10, at random initialisation: 600
    steps reconstruct one image in seconds on one CPU thread. Geiping et al. used ``lr = 0.1``,
    ``tv_weight`` 1e-4 to 1e-2 and 4,800 to 24,000 steps for ResNets.

    Attributes:
        steps: Adam steps per restart.
        restarts: random initialisations; the one with the lowest final objective is kept.
        lr: Adam's step size on the inputs (with signed gradients, the per-pixel step).
        tv_weight: ``beta``, the weight of total variation.
        signed: use the sign of the input gradient (Geiping et al.'s signed Adam).
        lr_decay: divide ``lr`` by 10 at 3/8, 5/8 and 7/8 of the steps.
        boxed: clamp the inputs to the valid pixel range after each step.
        seed: seed of the initialisations.
        trace_every: record the objective every this many steps (0: never).
        init: the dummy inputs' start: ``"randn"`` (standard normal in the model's input space,
            as Geiping et al.) or ``"uniform"`` (uniform over the pixel box).
    """

    steps: int = 600
    restarts: int = 1
    lr: float = 0.3
    tv_weight: float = 2e-2
    signed: bool = True
    lr_decay: bool = True
    boxed: bool = True
    seed: int = 0
    trace_every: int = 0
    init: str = "randn"

    def __post_init__(self) -> None:
        for name in ("steps", "restarts"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"InversionConfig.{name} must be a positive integer, got {v!r}.")
        if self.lr <= 0:
            raise ValueError(f"InversionConfig.lr must be positive, got {self.lr}.")
        if self.init not in ("randn", "uniform"):
            raise ValueError(f"InversionConfig.init must be 'randn' or 'uniform', got {self.init!r}.")
        if self.tv_weight < 0:
            raise ValueError(f"InversionConfig.tv_weight must be >= 0, got {self.tv_weight}.")


@dataclass
class InversionResult:
    """The attack's answer.

    Attributes:
        inputs: ``(N, C, H, W)`` the reconstruction of the best restart, in the model's input
            space (normalised like the training batches).
        labels: ``(N,)`` the labels used (given or recovered).
        labels_recovered: whether ``labels`` were recovered from the gradient.
        loss: the final objective ``R`` of the best restart.
        restart_losses: the final objective of every restart.
        trace: the best restart's objective every ``trace_every`` steps.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    labels_recovered: bool
    loss: float
    restart_losses: list[float]
    trace: list[float] = field(default_factory=list)


def gradient_from_update(update: torch.Tensor, lr: float) -> torch.Tensor:
    """The gradient behind a one-step SGD update: ``g = -u / lr`` (``u = W_local - W_global``)."""
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}.")
    return -update / lr


def model_gradient(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                   create_graph: bool = False) -> torch.Tensor:
    """``grad_W mean_i CE(f_W(x_i), y_i)`` flattened in the model's parameter order, ``(D,)``.

    The model is used in whatever mode it is in; put models with dropout in ``eval()`` (as
    the victim and the attacker both do in :mod:`flhelpers.privacy.victims`).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(inputs), labels)
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    return torch.cat([g.reshape(-1) for g in grads])


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """``mean |x[.., i+1, :] - x[.., i, :]| + mean |x[.., :, j+1] - x[.., :, j]|`` (anisotropic TV)."""
    dx = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    dy = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    return dx + dy


def cosine_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``1 - <a, b> / (||a|| ||b||)`` of two flat vectors."""
    return 1 - (a * b).sum() / (a.norm() * b.norm() + eps)


def recover_labels(output_bias_gradient: torch.Tensor, num_images: int,
                   mean_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Labels of a batch from the gradient of the mean cross-entropy w.r.t. the output bias.

    ``num_images == 1``: ``argmin_c g_c`` (iDLG). Otherwise the counts
    ``n_c = N (pbar_c - g_c)`` (clipped at 0, rounded by largest remainders to sum to N), with
    ``pbar`` the model's mean softmax (uniform when not given). Returns the ``(N,)`` labels, sorted.
    """
    g = output_bias_gradient.detach().double().flatten()
    c = g.numel()
    if c < 2:
        raise ValueError("Label recovery needs an output layer with at least two classes.")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    if num_images == 1:
        return g.argmin().reshape(1)
    p = (torch.full((c,), 1.0 / c, dtype=torch.float64, device=g.device) if mean_probs is None
         else mean_probs.detach().double().to(g.device))
    est = (num_images * (p - g)).clamp(min=0)
    counts = est.floor()
    rem = est - counts
    while counts.sum() < num_images:
        i = int(rem.argmax())
        counts[i] += 1
        rem[i] = -1.0
    while counts.sum() > num_images:
        # remove from the class whose estimate is least supported
        candidates = torch.where(counts > 0, est - counts + 1, torch.full_like(est, float("inf")))
        counts[int(candidates.argmin())] -= 1
    return torch.repeat_interleave(torch.arange(c, device=counts.device), counts.long())


def label_recovery_rate(recovered: torch.Tensor, truth: torch.Tensor) -> float:
    """Share of the true labels recovered, as multisets: ``sum_c min(n_c, n'_c) / N``."""
    c = max(int(recovered.max()), int(truth.max())) + 1
    a = torch.bincount(recovered.cpu().long(), minlength=c)
    b = torch.bincount(truth.cpu().long(), minlength=c)
    return float(torch.minimum(a, b).sum()) / len(truth)


def _box(shape_c: int, mean: Sequence[float] | None, std: Sequence[float] | None,
         device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The valid input range ``[(0 - mean) / std, (1 - mean) / std]`` per channel."""
    m = torch.tensor(mean if mean is not None else [0.0] * shape_c, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std if std is not None else [1.0] * shape_c, device=device).view(1, -1, 1, 1)
    if m.numel() != shape_c or s.numel() != shape_c:
        raise ValueError(f"mean and std need one value per channel ({shape_c}).")
    return (0 - m) / s, (1 - m) / s


def invert_gradients(model: nn.Module, target_gradient: torch.Tensor, num_images: int,
                     input_shape: Sequence[int], labels: torch.Tensor | None = None,
                     config: InversionConfig | None = None, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None) -> InversionResult:
    """Reconstruct ``num_images`` inputs whose gradient matches ``target_gradient`` (see module doc).

    Args:
        model: the model the victim computed its gradient on (the round's global model).
        target_gradient: the observed gradient, ``(D,)`` in the model's parameter order (use
            :func:`gradient_from_update` for a one-step update).
        num_images: N, the victim's batch size.
        input_shape: ``(C, H, W)`` of one input.
        labels: the victim's labels, or ``None`` to recover them from the output-bias gradient.
        config: the attack's settings.
        mean, std: the data set's normalisation, which defines the valid pixel box.
    """
    cfg = config or InversionConfig()
    params = [p for p in model.parameters() if p.requires_grad]
    dim = sum(p.numel() for p in params)
    target = target_gradient.detach().reshape(-1)
    if target.numel() != dim:
        raise ValueError(f"The target gradient has {target.numel()} values but the model has {dim} "
                         f"trainable parameters; pass the gradient of this model.")
    if not torch.isfinite(target).all():
        raise ValueError("The target gradient holds NaN or Inf values.")
    device = target.device
    shape = (num_images, *tuple(int(s) for s in input_shape))
    lo, hi = _box(shape[1], mean, std, device)
    gen = torch.Generator(device="cpu").manual_seed(int(cfg.seed))
    recovered = labels is None
    if recovered:
        layout = layout_of(model)
        if layout.output_bias is None:
            raise ValueError("The model's output layer has no bias, so labels cannot be recovered; pass labels.")
        with torch.no_grad():
            probe = torch.randn(max(num_images, 16), *shape[1:], generator=gen).to(device)
            pbar = torch.softmax(model(probe.clamp(lo, hi)), dim=1).mean(0)
        labels = recover_labels(target[layout.output_bias], num_images, pbar).to(device)
    labels = labels.to(device).long()
    if labels.shape != (num_images,):
        raise ValueError(f"labels must have shape ({num_images},), got {tuple(labels.shape)}.")

    best: tuple[float, torch.Tensor, list[float]] | None = None
    losses: list[float] = []
    milestones = [int(cfg.steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    for _ in range(cfg.restarts):
        x = torch.randn(shape, generator=gen).to(device)
        if cfg.init == "uniform":
            x = lo + (hi - lo) * torch.rand(shape, generator=gen).to(device)
        if cfg.boxed:
            x = torch.max(torch.min(x, hi), lo)
        x.requires_grad_(True)
        opt = torch.optim.Adam([x], lr=cfg.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1) if cfg.lr_decay else None
        trace: list[float] = []
        for step in range(cfg.steps):
            opt.zero_grad(set_to_none=True)
            grad = model_gradient(model, x, labels, create_graph=True)
            obj = cosine_distance(grad, target) + cfg.tv_weight * total_variation(x)
            (x_grad,) = torch.autograd.grad(obj, [x])
            x.grad = x_grad.sign() if cfg.signed else x_grad
            opt.step()
            if sched is not None:
                sched.step()
            if cfg.boxed:
                with torch.no_grad():
                    x.copy_(torch.max(torch.min(x, hi), lo))
            if cfg.trace_every and step % cfg.trace_every == 0:
                trace.append(float(obj.detach()))
        final = float(cosine_distance(model_gradient(model, x.detach(), labels), target)
                      + cfg.tv_weight * total_variation(x.detach()))
        losses.append(final)
        if best is None or final < best[0]:
            best = (final, x.detach().clone(), trace)
    assert best is not None
    return InversionResult(best[1], labels.detach().cpu(), recovered, best[0], losses, best[2])
