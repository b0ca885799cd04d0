"""The vectorized backend: all selected peers of a round trained in lockstep.

It computes what :func:`flhelpers.fl.training.peer_update` computes for each peer (PEER_UPDATE of
Algorithm 1: ``E`` local epochs of mini-batch steps from ``W^t`` with a fresh optimizer,
returning ``W_k^{t+1} - W^t``), but for a chunk of ``C`` peers at once:

* the peers' parameters are one ``(C, D)`` tensor; one step is
  ``vmap(grad(loss))(P, buffers, x, y, w, masks)`` over :func:`torch.func.functional_call`;
* the optimizer (``torch.optim.SGD`` with momentum and weight decay, ``torch.optim.Adam``)
  is applied row-wise to ``(C, D)`` state tensors, PyTorch's update rule verbatim;
* step ``s`` of peer ``k`` uses the batch the sequential loop uses: epoch
  ``e = s // S_k`` of :func:`flhelpers.fl.training.batch_order`, positions
  ``[j B, min((j+1) B, n_k))``, with ``S_k = ceil(n_k / B)`` steps an epoch, or
  ``floor(n_k / B)`` with ``drop_last`` (no short batch then); a short last batch is padded and its loss is
  ``sum_i w_i l_i`` with ``w_i = 1 / b`` on the ``b`` real samples and 0 on the padding (the
  mean over the real samples, exactly the sequential loss); a peer that has taken its
  ``E * S_k`` steps takes no further step;
* models with BatchNorm see no padding (padding would enter the batch statistics): at each
  step the peers are grouped by their real batch size, and each peer keeps its own running
  statistics (float buffers ``(C, B_f)``);
* dropout: each peer's masks are drawn from its own generator, seeded as the sequential loop
  seeds torch's global generator (``derive_seed(seed, "dropout", round, peer)``), in the
  order the model draws them, exactly as ATen does on the CPU
  (``bernoulli(1 - p) / (1 - p)``, ``(N, C, 1, ...)`` for channel dropout). On the CPU the
  updates therefore equal the sequential backend's up to float rounding, dropout included (in
  float64 to 1e-12; in float32 a rare near-tie in a max-pool or a ReLU can fall the other way,
  as it does between thread counts of the sequential backend itself); on CUDA the masks are the
  ones the CPU sequential backend draws (the sequential backend on CUDA draws from CUDA's
  generator, so there the agreement is statistical);
* ``nn.LSTM`` (whose fused kernel has no vmap rule) runs as :func:`lstm_forward`, a plain
  LSTM recurrence with both directions in one batched matrix product per time step.

Peers are processed in chunks of ``peers_per_step`` (``ExperimentConfig.peers_per_step``; by
default as many as fit in half of the device's *total* memory, :meth:`VectorizedTrainer.memory_chunk`,
chosen once per run: the chunk changes the float rounding, so it must not follow the memory free
at the moment). Peers are sorted by their step count first, so that a chunk's peers finish together.
A step's dropout masks are drawn for all peers of a group into one host buffer and copied to the
device in one transfer (:func:`draw_step_masks`).

``backend="auto"`` (:func:`backend_decision`) picks sequential on the CPU (measured: a peer's
step is compute-bound there, the loop is within a few percent of the limit, and the vmapped step
is about 2x slower for all three paper models, ``speed/ROUND_SPEED.md``) and vectorized on
CUDA when the model is supported.

This module holds the trainer (:class:`VectorizedTrainer`) and the backend policy
(:func:`backend_decision`, :func:`make_vectorized_trainer`); its parts live beside it, and every
name below stays importable from here:

* :mod:`flhelpers.fl.vmap_layers`: dropout with explicit masks, :func:`lstm_forward`, the modes
  active inside a peer's forward, the per-sample loss, :class:`VectorizedUnsupported`;
* :mod:`flhelpers.fl.vmap_memory`: :func:`inspect_model` (:class:`ModelTraits`) and the memory a
  peer needs, which sizes the chunks;
* :mod:`flhelpers.fl.vmap_schedule`: the lockstep batch schedule (:func:`build_schedule`);
* :mod:`flhelpers.fl.vmap_optim`: :class:`BatchedSGD` and :class:`BatchedAdam`.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from flhelpers.config import ExperimentConfig
from flhelpers.data.base import FLDataset
# read through this module (tests patch ``vectorized.total_memory_bytes``): see memory_chunk
from flhelpers.fl.device import total_memory_bytes
from flhelpers.fl.training import PeerData, training_autocast
from flhelpers.fl.vmap_layers import (  # noqa: F401  (re-exported: the backend's public names)
    DropoutCall,
    VectorizedUnsupported,
    _BatchNormUpcast,
    _cudnn_disabled,
    _FunctionalHooks,
    draw_dropout_mask,
    draw_step_masks,
    lstm_forward,
    per_sample_loss,
)
from flhelpers.fl.vmap_memory import ModelTraits, inspect_model, memory_chunk_size, peer_memory_bytes  # noqa: F401
from flhelpers.fl.vmap_optim import BatchedAdam, BatchedSGD, make_batched_optimizer  # noqa: F401
from flhelpers.fl.vmap_schedule import Schedule, build_schedule, steps_of  # noqa: F401
from flhelpers.seeding import torch_generator

log = logging.getLogger(__name__)

__all__ = [
    "BackendDecision",
    "BatchedAdam",
    "BatchedSGD",
    "DropoutCall",
    "ModelTraits",
    "VectorizedTrainer",
    "VectorizedUnsupported",
    "backend_decision",
    "build_schedule",
    "draw_dropout_mask",
    "draw_step_masks",
    "inspect_model",
    "lstm_forward",
    "make_vectorized_trainer",
    "per_sample_loss",
]


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------

class VectorizedTrainer:
    """Train chunks of peers in lockstep; same interface as ``SequentialTrainer``.

    Args:
        model: the scratch model (its parameters are never changed; its architecture is used
            through ``functional_call``).
        cfg: the experiment configuration (optimizer, ``lr``, ``B``, ``E``, seed, loss).
        dataset: the in-memory data set (on ``device``).
        device: where the peers train.
        peers_per_step: chunk size ``C``; ``None`` chooses it once, here, from the device's total
            memory (:meth:`memory_chunk`); the attribute holds the value used.
        traits: the model's :class:`ModelTraits` (inspected when ``None``).
    """

    name = "vectorized"
    reason = "constructed directly"

    def __init__(self, model: nn.Module, cfg: ExperimentConfig, dataset: FLDataset,
                 device: torch.device | str, peers_per_step: int | None = None,
                 traits: ModelTraits | None = None) -> None:
        if peers_per_step is not None and (not isinstance(peers_per_step, int) or peers_per_step < 1):
            raise ValueError(f"peers_per_step must be a positive integer or None, got {peers_per_step!r}.")
        self.model, self.cfg, self.dataset = model, cfg, dataset
        self.device = torch.device(device)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.param_names = [n for n, _ in named]
        self.param_shapes = [tuple(p.shape) for _, p in named]
        self.param_sizes = [p.numel() for _, p in named]
        fbufs = [(n, b) for n, b in model.named_buffers() if torch.is_floating_point(b)]
        self.fbuf_names = [n for n, _ in fbufs]
        self.fbuf_shapes = [tuple(b.shape) for _, b in fbufs]
        self.fbuf_sizes = [b.numel() for _, b in fbufs]
        self.ibufs = {n: b.detach().clone() for n, b in model.named_buffers() if not torch.is_floating_point(b)}
        if traits is None:
            traits = inspect_model(model, dataset.prepare(dataset.train_x[:4].to(self.device)))
        self.traits = traits
        # under bfloat16 autocast, vmap's BatchNorm rule needs a float32 input (_BatchNormUpcast)
        self._upcast_batchnorm = cfg.precision != "float32" and traits.has_batchnorm
        self._grad = vmap(grad(self._peer_loss, has_aux=True))
        # the chunk, fixed for the run: given, or chosen now from the total memory (needs the traits)
        self.peers_per_step: int = peers_per_step if peers_per_step is not None else self.memory_chunk()

    # -- one peer's loss, written for a single peer and batched by vmap ----------------------
    def _peer_loss(self, p_flat: torch.Tensor, fbuf_flat: torch.Tensor, ibufs: dict[str, torch.Tensor],
                   x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                   masks: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """``sum_i w_i l(f(x_i; p), y_i)`` for one peer, and its buffers after the forward.

        The buffers are copied before the forward, which updates them in place (BatchNorm's
        running statistics): in-place writes into views of a vmapped input are not reliable.
        """
        params = {n: t.view(s) for n, t, s in
                  zip(self.param_names, p_flat.split(self.param_sizes), self.param_shapes)}
        buffers = {n: v.clone() for n, v in ibufs.items()}
        if self.fbuf_sizes:
            buffers.update({n: t.reshape(s).clone() for n, t, s in
                            zip(self.fbuf_names, fbuf_flat.split(self.fbuf_sizes), self.fbuf_shapes)})
        hooks = _FunctionalHooks(masks) if self.traits.needs_hooks else nullcontext()
        # nn.LSTM would try to re-pack batched weights for cuDNN (it reads their data pointers)
        no_cudnn = _cudnn_disabled() if self.traits.has_lstm else nullcontext()
        upcast = _BatchNormUpcast() if self._upcast_batchnorm else nullcontext()
        with hooks, no_cudnn, training_autocast(self.cfg, self.device), upcast:
            logits = functional_call(self.model, (params, buffers), (x,))
            per_sample = per_sample_loss(self.cfg.loss, logits, y)
        loss = (per_sample * w).sum()
        new_f = (torch.cat([buffers[n].reshape(-1) for n in self.fbuf_names]) if self.fbuf_sizes
                 else fbuf_flat)
        return loss, (new_f, {n: buffers[n] for n in ibufs})

    # -- memory and chunking (the arithmetic: flhelpers.fl.vmap_memory) ----------------------
    def memory_per_peer(self) -> int:
        """Estimated bytes per peer of a chunk (conservative, it sizes the chunks):
        :func:`~flhelpers.fl.vmap_memory.peer_memory_bytes` of this model's parameters and float
        buffers."""
        size = next((p.element_size() for p in self.model.parameters()), 4)
        return peer_memory_bytes(self.traits, self.cfg, sum(self.param_sizes), sum(self.fbuf_sizes), size)

    def memory_chunk(self) -> int:
        """The default chunk: as many peers as :meth:`memory_per_peer` fits in half of the device's
        total memory (never the free memory, which varies from round to round and would change
        the numbers with it)."""
        # total_memory_bytes is looked up in this module, so that patching it here takes effect
        return memory_chunk_size(total_memory_bytes(self.device), self.memory_per_peer())

    def chunk_size(self, num_peers: int) -> int:
        """``peers_per_step`` (given, or :meth:`memory_chunk` chosen at construction), at most ``num_peers``."""
        return min(self.peers_per_step, max(num_peers, 1))

    # -- a round -------------------------------------------------------------------------------
    def train_round(self, peers: list[PeerData], global_params: torch.Tensor,
                    global_buffers: torch.Tensor, round_: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All peers' updates ``(K, D)`` and float buffers ``(K, B_f)``, rows in ``peers`` order."""
        k = len(peers)
        updates = torch.empty(k, global_params.numel(), dtype=global_params.dtype, device=self.device)
        buffers = torch.empty(k, sum(self.fbuf_sizes), dtype=global_params.dtype, device=self.device)
        order = sorted(range(k), key=lambda i: -steps_of(self.cfg, peers[i].num_samples))
        size = self.chunk_size(k)
        self.model.train()
        for start in range(0, k, size):
            ids = order[start:start + size]
            u, b = self.train_chunk([peers[i] for i in ids], global_params, global_buffers, round_)
            rows = torch.tensor(ids, device=self.device)
            updates.index_copy_(0, rows, u)
            if b.shape[1]:
                buffers.index_copy_(0, rows, b)
        return updates, buffers

    def train_chunk(self, peers: Sequence[PeerData], global_params: torch.Tensor,
                    global_buffers: torch.Tensor, round_: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Train one chunk of peers in lockstep: ``(C, D)`` updates and ``(C, B_f)`` buffers."""
        cfg, dev, c = self.cfg, self.device, len(peers)
        gp = global_params.detach().to(dev)
        params = gp.unsqueeze(0).repeat(c, 1)
        fbufs = (global_buffers.detach().to(dev).unsqueeze(0).repeat(c, 1) if self.fbuf_sizes
                 else torch.zeros(c, 0, device=dev))
        ibufs = {n: v.to(dev).unsqueeze(0).repeat(c, *([1] * v.dim())) for n, v in self.ibufs.items()}
        opt = make_batched_optimizer(cfg)
        sched = build_schedule(cfg, peers, round_, dev)
        nmax = max(p.num_samples for p in peers)
        index = torch.zeros(c, nmax, dtype=torch.long, device=dev)
        labels = torch.zeros(c, nmax, dtype=peers[0].labels.dtype, device=dev)
        for r, p in enumerate(peers):
            index[r, :p.num_samples] = p.indices.to(dev)
            labels[r, :p.num_samples] = p.labels.to(dev)
        gens = ([torch_generator(cfg.seed, "dropout", round_, p.peer_id) for p in peers]
                if self.traits.dropout else [])
        active_all = torch.from_numpy(sched.sizes > 0).to(dev)
        everyone = np.arange(c)
        for t in range(sched.num_steps):
            sizes = sched.sizes[:, t]
            groups = self._groups(sizes)
            if len(groups) == 1 and len(groups[0][0]) == c:
                grads = self._group_grads(everyone, None, groups[0][1], t, sizes, sched, params, fbufs,
                                          ibufs, index, labels, gens)
            else:
                grads = torch.zeros_like(params)
                for rows, width in groups:
                    rows_dev = torch.from_numpy(rows).to(dev)
                    grads.index_copy_(0, rows_dev, self._group_grads(
                        rows, rows_dev, width, t, sizes, sched, params, fbufs, ibufs, index, labels, gens))
            opt.step(params, grads, active_all[:, t])
        return params - gp, fbufs

    def _groups(self, sizes: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Peers stepping together: all active peers padded to ``B``, or (BatchNorm) one group per
        real batch size."""
        active = np.flatnonzero(sizes > 0)
        if not self.traits.has_batchnorm:
            return [(active, self.cfg.batch_size)] if len(active) else []
        return [(active[sizes[active] == s], int(s)) for s in np.unique(sizes[active])]

    def _group_grads(self, rows: np.ndarray, rows_dev: torch.Tensor | None, width: int, t: int,
                     sizes: np.ndarray, sched: Schedule, params: torch.Tensor, fbufs: torch.Tensor,
                     ibufs: dict[str, torch.Tensor], index: torch.Tensor, labels: torch.Tensor,
                     gens: list[torch.Generator]) -> torch.Tensor:
        """Gradients of the peers ``rows`` at step ``t`` (``rows_dev is None``: all rows)."""
        def sub(x: torch.Tensor) -> torch.Tensor:
            return x if rows_dev is None else x.index_select(0, rows_dev)

        pos = sub(sched.positions[:, t, :width])
        valid = pos >= 0
        safe = torch.where(valid, pos, pos[:, :1])
        x = self.dataset.train_x[sub(index).gather(1, safe)]
        x = self.dataset.prepare(x.flatten(0, 1)).unflatten(0, (len(rows), width))
        y = sub(labels).gather(1, safe)
        w = valid.to(params.dtype) / valid.sum(dim=1, keepdim=True).clamp(min=1)
        masks = draw_step_masks(self.traits.dropout, [int(sizes[r]) for r in rows], width,
                                [gens[r] for r in rows] if gens else [], self.device)
        g, (fb, ib) = self._grad(sub(params), sub(fbufs), {n: sub(v) for n, v in ibufs.items()},
                                 x, y, w, masks)
        if rows_dev is None:
            fbufs.copy_(fb)
            for n, v in ib.items():
                ibufs[n].copy_(v)
        else:
            fbufs.index_copy_(0, rows_dev, fb)
            for n, v in ib.items():
                ibufs[n].index_copy_(0, rows_dev, v)
        return g

    def check(self) -> None:
        """One tiny lockstep step (2 peers, 2 samples) to prove the model runs under vmap."""
        dev, n, c = self.device, 2, 2
        x = self.dataset.prepare(self.dataset.train_x[:n].to(dev)).unsqueeze(0).repeat(c, *([1] * (
            self.dataset.train_x.dim())))
        y = self.dataset.train_y[:n].to(dev).unsqueeze(0).repeat(c, 1)
        p = torch.cat([q.detach().reshape(-1) for q in self.model.parameters() if q.requires_grad])
        fb = [b.detach().reshape(-1) for b in self.model.buffers() if torch.is_floating_point(b)]
        fb = torch.cat(fb) if fb else torch.zeros(0, device=dev)
        gen = torch.Generator().manual_seed(0)
        masks = [torch.stack([draw_dropout_mask(call, n, gen) for _ in range(c)]).to(dev)
                 for call in self.traits.dropout]
        ib = {k: v.to(dev).unsqueeze(0).repeat(c, *([1] * v.dim())) for k, v in self.ibufs.items()}
        w = torch.full((c, n), 1.0 / n, device=dev, dtype=p.dtype)
        self.model.train()
        g, _ = self._grad(p.unsqueeze(0).repeat(c, 1), fb.unsqueeze(0).repeat(c, 1), ib, x, y, w, masks)
        if g.shape != (c, p.numel()):
            raise VectorizedUnsupported(
                f"vectorized gradients have shape {tuple(g.shape)}, expected {(c, p.numel())}.")


# --------------------------------------------------------------------------------------------
# Choosing the backend
# --------------------------------------------------------------------------------------------

#: Models (registry names) for which the vectorized backend was measured faster than the
#: sequential loop on the CPU (speed/ROUND_SPEED.md). Empty: on the CPU every paper
#: model's step is compute-bound, the loop is near the limit, and vmapped steps (grouped
#: convolutions, small batched matrix products) were about 2x slower.
CPU_VECTORIZED_FASTER: frozenset[str] = frozenset()


@dataclass(frozen=True)
class BackendDecision:
    """The backend a config gets (``sequential`` or ``vectorized``) and why."""

    backend: str
    reason: str


def backend_decision(cfg: ExperimentConfig, device: torch.device | str,
                     unsupported: str | None = None) -> BackendDecision:
    """What ``cfg.backend`` resolves to on ``device``.

    ``sequential`` and ``vectorized`` are taken as asked (``vectorized`` on an unsupported model
    is an error, raised by :func:`make_vectorized_trainer`); ``auto`` picks the fastest correct
    backend: vectorized on CUDA for supported models, sequential on the CPU (unless the model is
    in :data:`CPU_VECTORIZED_FASTER`) and for unsupported models.
    """
    device = torch.device(device)
    if cfg.backend == "sequential":
        return BackendDecision("sequential", "backend='sequential' was asked for")
    if cfg.backend == "vectorized":
        return BackendDecision("vectorized", "backend='vectorized' was asked for")
    if unsupported is not None:
        return BackendDecision("sequential", f"auto: the vectorized backend cannot train this model "
                                             f"({unsupported}), so peers are trained sequentially")
    if device.type == "cpu" and cfg.model not in CPU_VECTORIZED_FASTER:
        return BackendDecision("sequential", "auto: on the CPU a peer's step is compute-bound and the "
                                             "sequential loop is faster than a vmapped step "
                                             "(speed/ROUND_SPEED.md)")
    return BackendDecision("vectorized", f"auto: vectorized on {device.type}")


def make_vectorized_trainer(exp: Any, strict: bool) -> VectorizedTrainer | None:
    """The engine's hook: a :class:`VectorizedTrainer` for ``exp``, or ``None`` (sequential).

    With ``strict`` (``backend='vectorized'``) an unsupported model raises
    :class:`VectorizedUnsupported`; otherwise (``auto``) the choice of :func:`backend_decision`
    is logged, and a fallback from an unsupported model also warns. The reason is left in
    ``exp.backend_reason`` for the run record. ``exp.config.peers_per_step`` sets the chunk size
    (None: chosen once from the device's total memory).
    """
    cfg = exp.config
    if not strict:
        first = backend_decision(cfg, exp.device)
        if first.backend == "sequential":
            log.info("training backend: sequential (%s)", first.reason)
            exp.backend_reason = first.reason
            return None
    try:
        trainer = VectorizedTrainer(exp.model, cfg, exp.dataset, exp.device,
                                    peers_per_step=cfg.peers_per_step)
        trainer.check()
    except Exception as e:  # noqa: BLE001 - any failure means: this model cannot be vectorized
        reason = f"{type(e).__name__}: {e}"
        if strict:
            if isinstance(e, VectorizedUnsupported):
                raise
            raise VectorizedUnsupported(
                f"The vectorized backend cannot train model {cfg.model!r} ({reason}). "
                f"Use backend='sequential' (or 'auto', which falls back by itself).") from e
        decision = backend_decision(cfg, exp.device, unsupported=reason)
        warnings.warn(decision.reason, RuntimeWarning, stacklevel=2)
        log.warning("training backend: sequential (%s)", decision.reason)
        exp.backend_reason = decision.reason
        return None
    trainer.reason = backend_decision(cfg, exp.device).reason
    exp.backend_reason = trainer.reason
    log.info("training backend: vectorized (%s)", trainer.reason)
    return trainer
