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
is about 2x slower for all three paper models, ``benchmarks/ROUND_SPEED.md``) and vectorized on
CUDA when the model is supported.
"""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.overrides import TorchFunctionMode

from flhelpers.config import ExperimentConfig
from flhelpers.data.base import FLDataset
from flhelpers.fl.device import total_memory_bytes
from flhelpers.seeding import torch_generator
from flhelpers.fl.training import PeerData, batch_order, batches_per_epoch, training_autocast

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


class VectorizedUnsupported(RuntimeError):
    """The vectorized backend cannot train this model; the message says why and what to use."""


# --------------------------------------------------------------------------------------------
# Dropout with explicit masks, and an LSTM that vmap can batch
# --------------------------------------------------------------------------------------------

#: Dropout functions: function -> True for channel ("feature") dropout.
_DROPOUT_FUNCS: dict[Any, bool] = {
    F.dropout: False, torch.dropout: False, torch.nn.functional.dropout1d: True,
    F.dropout2d: True, F.dropout3d: True, torch.feature_dropout: True,
}
_LSTM_FUNCS = {torch.lstm, torch._VF.lstm}


@dataclass(frozen=True)
class DropoutCall:
    """One dropout call of a model's forward: channel dropout or not, ``p``, input shape
    without the batch dimension, dtype."""

    feature: bool
    p: float
    tail: tuple[int, ...]
    dtype: torch.dtype

    def draws(self) -> bool:
        """Whether ATen draws a mask (``0 < p < 1``); ``p = 1`` zeroes without drawing."""
        return 0.0 < self.p < 1.0


def draw_dropout_mask(call: DropoutCall, batch: int, generator: torch.Generator) -> torch.Tensor:
    """The mask ATen's CPU dropout multiplies by, drawn from ``generator``.

    ``noise ~ Bernoulli(1 - p)`` of the input's shape (channel dropout: ``(N, C, 1, ...)``),
    divided by ``1 - p`` (ATen ``_dropout_impl``); ``p = 1`` gives zeros, ``p = 0`` ones.
    """
    shape = (batch, *call.tail)
    if call.feature:
        shape = shape[:2] + (1,) * (len(shape) - 2)
    if call.p >= 1.0:
        return torch.zeros(shape, dtype=call.dtype)
    if call.p <= 0.0 or batch == 0:
        return torch.ones(shape, dtype=call.dtype)
    noise = torch.empty(shape, dtype=call.dtype).bernoulli_(1.0 - call.p, generator=generator)
    return noise.div_(1.0 - call.p)


def _mask_shape(call: DropoutCall, batch: int) -> tuple[int, ...]:
    shape = (batch, *call.tail)
    return shape[:2] + (1,) * (len(shape) - 2) if call.feature else shape


def draw_step_masks(calls: Sequence[DropoutCall], batches: Sequence[int], width: int,
                    generators: Sequence[torch.Generator], device: torch.device | str) -> list[torch.Tensor]:
    """One lockstep step's dropout masks for a group of peers, one ``(P, width, ...)`` tensor per call.

    Row ``i`` holds, for its first ``batches[i]`` samples, exactly the mask
    :func:`draw_dropout_mask` draws from ``generators[i]`` (each peer draws its calls in the
    model's order, as the sequential loop does), and zeros on the padding. All masks are drawn
    into one host buffer (pinned for CUDA) and reach ``device`` in one copy, not one small
    blocking copy per call and peer.
    """
    if not calls:
        return []
    dev = torch.device(device)
    shapes = [(len(batches), *_mask_shape(call, width)) for call in calls]
    sizes = [math.prod(shape) for shape in shapes]
    # one dtype that holds every call's mask exactly (a float32 one copied into float64 and back is unchanged)
    dtypes = {call.dtype for call in calls}
    dtype = dtypes.pop() if len(dtypes) == 1 else (torch.float64 if torch.float64 in dtypes else torch.float32)
    buffer = torch.zeros(sum(sizes), dtype=dtype, pin_memory=dev.type == "cuda" and torch.cuda.is_available())
    blocks = [flat.view(shape) for flat, shape in zip(buffer.split(sizes), shapes)]
    for i, (batch, gen) in enumerate(zip(batches, generators)):
        for call, block in zip(calls, blocks):
            if batch == 0 or call.p >= 1.0:
                continue  # no samples, or p = 1: zeros without a draw
            rows = block[i, :batch]
            if call.p <= 0.0:
                rows.fill_(1.0)
            elif rows.dtype == call.dtype:
                rows.bernoulli_(1.0 - call.p, generator=gen).div_(1.0 - call.p)
            else:
                rows.copy_(draw_dropout_mask(call, batch, gen))
    if dev.type != "cpu":
        blocks = [flat.view(shape) for flat, shape in zip(buffer.to(dev, non_blocking=True).split(sizes), shapes)]
    return [block.to(call.dtype) for block, call in zip(blocks, calls)]


def _dropout_args(args: tuple, kwargs: dict) -> tuple[torch.Tensor, float, bool]:
    x = args[0] if args else kwargs["input"]
    p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
    training = args[2] if len(args) > 2 else kwargs.get("training", kwargs.get("train", True))
    return x, float(p), bool(training)


def lstm_forward(input: torch.Tensor, hx: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
                 has_biases: bool, num_layers: int, dropout: float, train: bool,
                 bidirectional: bool, batch_first: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.lstm`` (what ``nn.LSTM`` calls) as plain tensor operations that vmap can batch.

    Per layer and direction, PyTorch's LSTM (gates in the order i, f, g, o)::

        z_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),   h_t = sigmoid(o) * tanh(c_t)

    the reverse direction runs over ``t = T-1 .. 0``; both directions share one batched matrix
    product per time step. Returns ``(output, h_n, c_n)`` as ``torch.lstm`` does.
    """
    if dropout and train and num_layers > 1:
        raise VectorizedUnsupported(
            "nn.LSTM with dropout between layers is not supported by the vectorized backend; "
            "use backend='sequential'.")
    dirs = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    if len(params) != num_layers * dirs * per:
        raise VectorizedUnsupported(
            "nn.LSTM with proj_size is not supported by the vectorized backend; use backend='sequential'.")
    x = input if batch_first else input.transpose(0, 1)  # (N, T, I)
    h0, c0 = hx
    h_out, c_out = [], []
    for layer in range(num_layers):
        ws = [params[(layer * dirs + d) * per:(layer * dirs + d + 1) * per] for d in range(dirs)]
        # input projections of every time step at once: (dirs, N, T, 4H); reverse direction flipped
        proj = []
        for d, w in enumerate(ws):
            z = torch.matmul(x, w[0].transpose(0, 1))
            if has_biases:
                z = z + (w[2] + w[3])
            proj.append(z if d == 0 else z.flip(1))
        proj = torch.stack(proj)
        w_hh_t = torch.stack([w[1].transpose(0, 1) for w in ws])  # (dirs, H, 4H)
        h = h0[layer * dirs:(layer + 1) * dirs]
        c = c0[layer * dirs:(layer + 1) * dirs]
        hidden = h.shape[-1]
        outs = []
        # unbind once: indexing proj[:, :, t] in the loop would make backward O(T^2)
        for z_in in proj.unbind(dim=2):
            z = z_in + torch.matmul(h, w_hh_t)
            s = torch.sigmoid(z)
            g = torch.tanh(z[..., 2 * hidden:3 * hidden])
            c = s[..., hidden:2 * hidden] * c + s[..., :hidden] * g
            h = s[..., 3 * hidden:] * torch.tanh(c)
            outs.append(h)
        seq = torch.stack(outs, dim=2)  # (dirs, N, T, H)
        parts = [seq[0]] + ([seq[1].flip(1)] if dirs == 2 else [])
        x = torch.cat(parts, dim=-1)
        h_out.append(h)
        c_out.append(c)
    output = x if batch_first else x.transpose(0, 1)
    return output, torch.cat(h_out), torch.cat(c_out)


def _lstm_call(args: tuple, kwargs: dict):
    if kwargs or len(args) != 9 or not isinstance(args[1], (list, tuple)):
        raise VectorizedUnsupported(
            "nn.LSTM on packed sequences is not supported by the vectorized backend; "
            "use backend='sequential'.")
    return lstm_forward(*args)


@contextmanager
def _cudnn_disabled():
    """cuDNN off (only that flag) for the duration: ``nn.LSTM`` then leaves its weights alone."""
    before = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = before


class _FunctionalHooks(TorchFunctionMode):
    """Active inside a peer's forward: dropout multiplies by the peer's pre-drawn masks (in
    call order), ``torch.lstm`` runs :func:`lstm_forward`.

    With ``record`` given (model inspection), dropout is the identity and each call is
    appended to ``record``.
    """

    def __init__(self, masks: Sequence[torch.Tensor] | None = None,
                 record: list[tuple[bool, float, tuple[int, ...], torch.dtype]] | None = None) -> None:
        super().__init__()
        self.masks, self.record, self.i = masks, record, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DROPOUT_FUNCS:
            x, p, training = _dropout_args(args, kwargs)
            if not training or p == 0.0:
                return x
            if self.record is not None:
                self.record.append((_DROPOUT_FUNCS[func], p, tuple(x.shape), x.dtype))
                return x
            mask = self.masks[self.i]
            self.i += 1
            return x * mask
        if func in _LSTM_FUNCS:
            return _lstm_call(args, kwargs)
        return func(*args, **kwargs)


class _BatchNormUpcast(TorchFunctionMode):
    """Active inside a peer's forward under bfloat16 autocast (``precision="bfloat16"``).

    vmap's BatchNorm rule needs its input in its parameters' dtype, and autocast hands it the
    bfloat16 output of a convolution. The input is cast to float32 and the output back to its own
    dtype: what CPU's eager kernel does for a bfloat16 input with float32 parameters (float
    accumulators, a bfloat16 output), so both backends run the same dtypes.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            x = args[0] if args else kwargs.pop("input")
            if x.dtype in (torch.bfloat16, torch.float16):
                return func(x.float(), *args[1:], **kwargs).to(x.dtype)
            return func(x, *args[1:], **kwargs)
        return func(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# What the backend needs to know about a model
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelTraits:
    """Facts about a model's forward, found by :func:`inspect_model`.

    Attributes:
        dropout: the dropout calls of one forward, in order.
        has_batchnorm: samples of a batch interact (BatchNorm): batches must not be padded.
        has_lstm: the forward calls ``torch.lstm`` (run as :func:`lstm_forward`).
        saved_bytes_per_sample: activation memory autograd keeps per sample (one forward).
    """

    dropout: tuple[DropoutCall, ...]
    has_batchnorm: bool
    has_lstm: bool
    saved_bytes_per_sample: float

    @property
    def needs_hooks(self) -> bool:
        return bool(self.dropout) or self.has_lstm


def _saved_bytes(fn) -> tuple[Any, int]:
    """Run ``fn`` and count the bytes of the distinct storages autograd saves for backward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
        except Exception:  # noqa: BLE001 - a tensor without storage costs nothing here
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def inspect_model(model: nn.Module, sample: torch.Tensor) -> ModelTraits:
    """Run ``model`` (train mode, copies of its buffers) on 2 and 4 samples of ``sample``
    (already prepared) and record its dropout calls, LSTMs and activation memory per sample.

    Raises :class:`VectorizedUnsupported` if a dropout input's first dimension is not the batch.
    """
    if len(sample) < 4:
        sample = sample.repeat(math.ceil(4 / len(sample)), *([1] * (sample.dim() - 1)))
    params = {n: p.detach().clone().requires_grad_(p.requires_grad) for n, p in model.named_parameters()}
    records, saved = {}, {}
    has_lstm = any(isinstance(m, nn.LSTM) for m in model.modules())
    was_training = model.training
    model.train()
    try:
        for b in (2, 4):
            buffers = {n: v.detach().clone() for n, v in model.named_buffers()}
            rec: list = []

            def run():
                with _FunctionalHooks(record=rec), _cudnn_disabled():
                    return functional_call(model, (params, buffers), (sample[:b],))

            _, saved[b] = _saved_bytes(run)
            records[b] = rec
    finally:
        model.train(was_training)
    calls = []
    for (f2, p2, s2, d2), (_, _, s4, _) in zip(records[2], records[4]):
        if len(s2) < 1 or s2[0] != 2 or s4[0] != 4 or s2[1:] != s4[1:] or (f2 and len(s2) < 3):
            raise VectorizedUnsupported(
                f"A dropout input of shape {s2} does not start with the batch dimension; the "
                f"vectorized backend cannot draw its masks. Use backend='sequential'.")
        calls.append(DropoutCall(f2, p2, tuple(s2[1:]), d2))
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return ModelTraits(tuple(calls), has_bn, has_lstm, max(saved[4] - saved[2], 0) / 2.0)


def per_sample_loss(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`flhelpers.fl.training.loss_fn` before its mean: one loss per sample."""
    if name == "bce_with_logits":
        return F.binary_cross_entropy_with_logits(logits.reshape(-1), labels.to(logits.dtype),
                                                  reduction="none")
    return F.cross_entropy(logits, labels, reduction="none")


# --------------------------------------------------------------------------------------------
# The peers' batches, step by step
# --------------------------------------------------------------------------------------------

@dataclass
class Schedule:
    """Which samples each peer of a chunk uses at each lockstep step.

    ``positions[k, s]`` are the ``B`` local positions (into peer ``k``'s data) of its batch at
    step ``s``, ``-1`` where there is no sample; ``sizes[k, s]`` is the real batch size (0 once
    peer ``k`` has taken all its ``E * ceil(n_k / B)`` steps).
    """

    positions: torch.Tensor
    sizes: np.ndarray

    @property
    def num_steps(self) -> int:
        return self.sizes.shape[1]


def steps_of(cfg: ExperimentConfig, num_samples: int) -> int:
    """Local steps of a peer with ``num_samples`` samples: ``E * S`` with ``S`` from
    :func:`flhelpers.fl.training.batches_per_epoch`."""
    return cfg.local_epochs * batches_per_epoch(cfg, num_samples)


def build_schedule(cfg: ExperimentConfig, peers: Sequence[PeerData], round_: int,
                   device: torch.device | str = "cpu") -> Schedule:
    """The lockstep :class:`Schedule` of ``peers`` in round ``round_``; epoch ``e`` of peer
    ``k`` is :func:`flhelpers.fl.training.batch_order` cut into batches of ``B`` (last one short,
    or dropped with ``drop_last``)."""
    bsz, epochs = cfg.batch_size, cfg.local_epochs
    per_epoch = [batches_per_epoch(cfg, p.num_samples) for p in peers]
    total = max([e * epochs for e in per_epoch] + [0])
    positions = torch.full((len(peers), total, bsz), -1, dtype=torch.long)
    sizes = np.zeros((len(peers), total), dtype=np.int64)
    for k, peer in enumerate(peers):
        n, s = peer.num_samples, per_epoch[k]
        used = min(n, s * bsz)  # drop_last: the tail past the last full batch is not trained on
        for e in range(epochs):
            padded = torch.full((s * bsz,), -1, dtype=torch.long)
            padded[:used] = batch_order(cfg, peer, round_, e)[:used]
            positions[k, e * s:(e + 1) * s] = padded.view(s, bsz)
            sizes[k, e * s:(e + 1) * s] = bsz
            if s:
                sizes[k, (e + 1) * s - 1] = used - (s - 1) * bsz
    return Schedule(positions.to(device), sizes)


# --------------------------------------------------------------------------------------------
# Optimizers on (C, D) tensors
# --------------------------------------------------------------------------------------------

class BatchedSGD:
    """``torch.optim.SGD`` (dampening 0, no Nesterov), one row per peer.

    ``g <- g + lambda p``; ``b <- g`` at the first step, else ``b <- mu b + g``;
    ``p <- p - eta b`` (``b = g`` without momentum). Rows with ``active = False`` keep ``p``.
    """

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buf: torch.Tensor | None = None

    @property
    def state_copies(self) -> int:
        return 1 if self.momentum else 0

    def step(self, params: torch.Tensor, grads: torch.Tensor, active: torch.Tensor) -> None:
        g = grads.add(params, alpha=self.weight_decay) if self.weight_decay else grads
        if self.momentum:
            if self.buf is None:
                self.buf = g.clone()
            else:
                self.buf.mul_(self.momentum).add_(g)
            g = self.buf
        params.addcmul_(g, active.unsqueeze(1).to(params.dtype), value=-self.lr)


class BatchedAdam:
    """``torch.optim.Adam`` (no AMSGrad), one row per peer, PyTorch's formulation.

    ``g <- g + lambda p``; ``m <- beta1 m + (1 - beta1) g``; ``v <- beta2 v + (1 - beta2) g^2``;
    ``p <- p - eta / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``, ``t`` the step
    count (the same for every peer still stepping: peers only stop at the end).
    """

    def __init__(self, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.t = 0

    state_copies = 2

    def step(self, params: torch.Tensor, grads: torch.Tensor, active: torch.Tensor) -> None:
        b1, b2 = self.betas
        g = grads.add(params, alpha=self.weight_decay) if self.weight_decay else grads
        if self.m is None:
            self.m, self.v = torch.zeros_like(params), torch.zeros_like(params)
        self.t += 1
        self.m.lerp_(g, 1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        step_size = self.lr / (1 - b1 ** self.t)
        denom = (self.v.sqrt() / math.sqrt(1 - b2 ** self.t)).add_(self.eps)
        scale = active.unsqueeze(1).to(params.dtype) * -step_size
        params.add_(self.m / denom * scale)


def make_batched_optimizer(cfg: ExperimentConfig) -> BatchedSGD | BatchedAdam:
    """The batched twin of :func:`flhelpers.fl.training.make_optimizer`."""
    if cfg.optimizer == "adam":
        return BatchedAdam(cfg.lr, cfg.weight_decay)
    return BatchedSGD(cfg.lr, cfg.momentum, cfg.weight_decay)


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

    # -- memory and chunking -----------------------------------------------------------------
    def memory_per_peer(self) -> int:
        """Estimated bytes per peer of a chunk (conservative, it sizes the chunks): parameters,
        gradients, optimizer state, two temporaries (three more for Adam) and two copies of the
        buffers, plus five times the activations autograd saves for a batch (forward
        activations, their gradients, workspace; measured up to about 4x for the BiLSTM)."""
        dim, nbuf = sum(self.param_sizes), sum(self.fbuf_sizes)
        size = next((p.element_size() for p in self.model.parameters()), 4)
        state = make_batched_optimizer(self.cfg).state_copies
        copies = 4 + state + (3 if state == 2 else 0)
        act = 5 * self.traits.saved_bytes_per_sample * self.cfg.batch_size
        return int(size * (copies * dim + 2 * nbuf) + act)

    def memory_chunk(self) -> int:
        """The default chunk: as many peers as :meth:`memory_per_peer` fits in half of the device's
        total memory (never the free memory, which varies from round to round and would change
        the numbers with it)."""
        return max(int(0.5 * total_memory_bytes(self.device) // max(self.memory_per_peer(), 1)), 1)

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
#: sequential loop on the CPU (benchmarks/ROUND_SPEED.md). Empty: on the CPU every paper
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
                                             "(benchmarks/ROUND_SPEED.md)")
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
