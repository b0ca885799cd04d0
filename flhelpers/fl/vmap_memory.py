"""What the vectorized backend (:mod:`flhelpers.fl.vectorized`) must know about a model, and how
many of its peers fit on the device at once.

:func:`inspect_model` runs the model once, on 2 and on 4 samples, and records its dropout calls,
whether it has BatchNorm or an LSTM, and the activation memory autograd saves per sample
(:class:`ModelTraits`). :func:`peer_memory_bytes` turns that into the bytes one peer of a chunk
needs, and :func:`memory_chunk_size` into the default chunk: as many peers as fit in half of the
device's *total* memory (never the free memory, which varies from round to round and would change
the float rounding with it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from flhelpers.config import ExperimentConfig
from flhelpers.fl.vmap_layers import DropoutCall, VectorizedUnsupported, _cudnn_disabled, _FunctionalHooks
from flhelpers.fl.vmap_optim import make_batched_optimizer

__all__ = ["ModelTraits", "inspect_model", "memory_chunk_size", "peer_memory_bytes"]


@dataclass(frozen=True)
class ModelTraits:
    """Facts about a model's forward, found by :func:`inspect_model`.

    Attributes:
        dropout: the dropout calls of one forward, in order.
        has_batchnorm: samples of a batch interact (BatchNorm): batches must not be padded.
        has_lstm: the forward calls ``torch.lstm`` (run as :func:`~flhelpers.fl.vmap_layers.lstm_forward`).
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


def peer_memory_bytes(traits: ModelTraits, cfg: ExperimentConfig, param_dim: int, buffer_dim: int,
                      element_size: int) -> int:
    """Estimated bytes per peer of a chunk (conservative, it sizes the chunks): parameters,
    gradients, optimizer state, two temporaries (three more for Adam) and two copies of the
    buffers, plus five times the activations autograd saves for a batch (forward
    activations, their gradients, workspace; measured up to about 4x for the BiLSTM).

    ``param_dim`` and ``buffer_dim`` are the numbers of trained parameters and of float buffer
    entries, ``element_size`` the bytes of one parameter."""
    state = make_batched_optimizer(cfg).state_copies
    copies = 4 + state + (3 if state == 2 else 0)
    act = 5 * traits.saved_bytes_per_sample * cfg.batch_size
    return int(element_size * (copies * param_dim + 2 * buffer_dim) + act)


def memory_chunk_size(total_bytes: int, per_peer: int) -> int:
    """The default chunk: as many peers of ``per_peer`` bytes as fit in half of ``total_bytes``
    (the device's total memory), at least one."""
    return max(int(0.5 * total_bytes // max(per_peer, 1)), 1)
