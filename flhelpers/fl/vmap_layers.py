"""One peer's forward as the vectorized backend runs it (:mod:`flhelpers.fl.vectorized`).

What ``vmap`` cannot batch as the model calls it is put in place here, inside the forward:

* dropout multiplies by masks drawn beforehand, from each peer's own generator, exactly as ATen
  draws them on the CPU (:class:`DropoutCall`, :func:`draw_dropout_mask`, :func:`draw_step_masks`:
  one step's masks for a group of peers, in one host buffer and one copy to the device);
* ``torch.lstm`` (``nn.LSTM``'s fused kernel has no vmap rule) runs as :func:`lstm_forward`, a
  plain recurrence with both directions in one batched matrix product per time step;
* under bfloat16 autocast BatchNorm gets a float32 input (``_BatchNormUpcast``);
* the loss is kept per sample (:func:`per_sample_loss`), to be weighted by the padding mask.

:class:`VectorizedUnsupported`, the error the whole backend raises for a model it cannot train,
is defined here, at the bottom of the backend's modules.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = [
    "DropoutCall",
    "VectorizedUnsupported",
    "draw_dropout_mask",
    "draw_step_masks",
    "lstm_forward",
    "per_sample_loss",
]


class VectorizedUnsupported(RuntimeError):
    """The vectorized backend cannot train this model; the message says why and what to use."""


# --------------------------------------------------------------------------------------------
# Dropout with explicit masks
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


# --------------------------------------------------------------------------------------------
# An LSTM that vmap can batch
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# The modes active inside a peer's forward, and its loss
# --------------------------------------------------------------------------------------------

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


def per_sample_loss(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`flhelpers.fl.training.loss_fn` before its mean: one loss per sample."""
    if name == "bce_with_logits":
        return F.binary_cross_entropy_with_logits(logits.reshape(-1), labels.to(logits.dtype),
                                                  reduction="none")
    return F.cross_entropy(logits, labels, reduction="none")
