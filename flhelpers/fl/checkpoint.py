"""The latest checkpoint of an unfinished run: ``<run dir>/checkpoint.pt``, and the run's progress.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts:

* ``format``, ``run_id``: refuse a checkpoint of another run or of an older layout;
* ``round``: the last completed round; the run continues at ``round + 1``;
* ``global_params``, ``global_buffers``: the global model ``W^t`` (float buffers: BatchNorm);
* ``progress``: :class:`Progress`, the metrics rows so far, the per-round timings, the cumulative
  detection counts and the counts *pending* since the last evaluated round, so the checkpoint
  interval need not be a multiple of ``eval_every``;
* ``defense``, ``attack``: their ``state_dict()`` (FoolsGold's histories, reputations);
* ``rng``: the global python, numpy and torch generator states (:func:`rng_states`);
* ``fingerprint``: the attackers and a digest of the partition (:func:`fingerprint`);
* ``num_threads``: torch's CPU thread count (float reductions depend on it);
* ``runtime``: the device, its CUDA and cuDNN versions, the precision flags, the deterministic
  mode and the vectorized chunk (:func:`flhelpers.fl.device.resume_key`); a run is not resumed
  under different ones (the engine raises), a checkpoint without it is (written before it existed).

Random state. Every draw of the engine comes from a generator seeded by
``derive_seed(seed, purpose, round, peer, ...)`` (:mod:`flhelpers.seeding`): the partition,
the attackers, peer selection, batch order, dropout (``torch.manual_seed`` per peer and
round), model poisoning and the rules' own randomness (``ctx.seed``: k-means, FLAME's noise).
Nothing the engine computes depends on a generator's state carried over from an earlier round,
so a resumed run needs no saved generator state to match an uninterrupted one. The global
states are saved and restored anyway, so that user code relying on ``random``, ``numpy.random``
or torch's global generator (a custom attack or rule) continues where it stopped. The
partition and the attackers are rebuilt from the seed and compared with the fingerprint: a
mismatch (the data or the code changed) discards the checkpoint with a warning.

Only the latest checkpoint is kept (each save replaces the file atomically); it is loaded with
``torch.load(weights_only=True)``, so a checkpoint file cannot run code. Each checkpoint records
the SHA-256 of its contents (``sha256``, :func:`state_digest`), checked on load: ``torch.load``
does not check the zip's CRCs, so damaged bytes would otherwise resume the run from wrong
weights. A mismatch discards the checkpoint with a warning (the run restarts at round 0); a
checkpoint of an older flhelpers without the key is resumed with a warning that it is unchecked.
"""

from __future__ import annotations

import hashlib
import io
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from flhelpers.results import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"
#: layout version of the checkpoint dict; older checkpoints are ignored (the run restarts)
FORMAT = 2
#: the counters summed over the rounds since the last evaluated round (metrics.csv columns)
PENDING_KEYS = ("rounds_since_eval", "tp", "fp", "tn", "fn", "non_finite_updates", "discarded_rounds")
_CUM_KEYS = ("tp", "fp", "tn", "fn")


@dataclass
class Progress:
    """What a run has produced so far, besides the model.

    Attributes:
        rows: one dict per evaluated round (the rows of ``metrics.csv``).
        timings: one dict per completed round (the rows of ``timings.csv``).
        cum: detection counts summed over all completed rounds.
        pending: :data:`PENDING_KEYS` summed over the rounds since the last evaluated round.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    timings: list[dict[str, Any]] = field(default_factory=list)
    cum: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_CUM_KEYS, 0))
    pending: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PENDING_KEYS, 0))

    def add_round(self, counts: dict[str, int], non_finite_updates: int, discarded: bool) -> None:
        """Count one completed round: its detection counts and hostile-update counters."""
        for key in _CUM_KEYS:
            self.cum[key] += int(counts[key])
            self.pending[key] += int(counts[key])
        self.pending["rounds_since_eval"] += 1
        self.pending["non_finite_updates"] += int(non_finite_updates)
        self.pending["discarded_rounds"] += int(bool(discarded))

    def take_pending(self) -> dict[str, int]:
        """The pending counters (for an evaluated round's row), reset to zero."""
        out = dict(self.pending)
        self.pending = dict.fromkeys(PENDING_KEYS, 0)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows], "timings": [dict(t) for t in self.timings],
                "cum": dict(self.cum), "pending": dict(self.pending)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Progress":
        pending = dict.fromkeys(PENDING_KEYS, 0)
        pending.update(state["pending"])
        return cls([dict(r) for r in state["rows"]], [dict(t) for t in state["timings"]],
                   {k: int(state["cum"][k]) for k in _CUM_KEYS}, pending)


def rng_states() -> dict[str, Any]:
    """The global python, numpy and torch (CPU and CUDA) generator states, in checkpointable form."""
    key, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"key": str(key), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_states(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["key"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _as_tuple(obj: Any) -> Any:
    return tuple(_as_tuple(x) for x in obj) if isinstance(obj, (list, tuple)) else obj


def fingerprint(partition_indices: Sequence[torch.Tensor], attackers: Sequence[int]) -> dict[str, Any]:
    """The attackers and a SHA-256 of every peer's sample indices, to check a resumed run's setup."""
    h = hashlib.sha256()
    for idx in partition_indices:
        arr = np.ascontiguousarray(torch.as_tensor(idx).cpu().numpy().astype(np.int64))
        h.update(len(arr).to_bytes(8, "little"))
        h.update(arr.tobytes())
    return {"partition_sha256": h.hexdigest(), "attackers": [int(a) for a in attackers]}


#: checkpoint key holding :func:`state_digest` of the rest of the checkpoint
DIGEST = "sha256"


def _digest_update(h: "hashlib._Hash", obj: Any) -> None:
    """Feed ``obj`` to ``h``: its type, then its contents (tensors and arrays as dtype, shape
    and bytes; containers element by element; dict keys in their order)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"A{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B") if a.size and a.dtype != object else repr(a.tolist()).encode())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            _digest_update(h, key)
            _digest_update(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for value in obj:
            _digest_update(h, value)
    elif isinstance(obj, (set, frozenset)):  # no stable order of its own
        h.update(f"S{len(obj)}".encode())
        for value in sorted(obj, key=repr):
            _digest_update(h, value)
    elif isinstance(obj, (bytes, bytearray)):
        h.update(f"B{len(obj)}".encode())
        h.update(bytes(obj))
    else:  # str, int, float, bool, None: their repr is exact (floats round-trip)
        text = repr(obj)
        h.update(f"{type(obj).__name__}{len(text)}:".encode())
        h.update(text.encode())


def state_digest(state: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's contents (every key but :data:`DIGEST`).

    ``torch.load`` does not check the CRCs of the zip archive it reads, so bytes damaged on disk
    would load as different weights or counters and the run would continue from them; the digest
    is computed over what was saved and again over what was loaded, so any change that reaches
    the loaded values is caught.
    """
    h = hashlib.sha256()
    _digest_update(h, {k: v for k, v in state.items() if k != DIGEST})
    return h.hexdigest()


def save_checkpoint(run_path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (with ``format`` and its :func:`state_digest` added) to
    ``<run_path>/checkpoint.pt`` atomically."""
    state = {**state, "format": FORMAT}
    state[DIGEST] = state_digest(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(run_path) / CHECKPOINT, buf.getvalue())


def load_checkpoint(run_path: Path, run_id: str | None = None) -> dict[str, Any] | None:
    """The saved state, or ``None`` when there is none or it cannot be used.

    A checkpoint that cannot be read (damaged, written by something else), has another
    ``format``, or belongs to another ``run_id`` is ignored with a warning, and the run
    starts afresh: an unusable checkpoint must never block a run.
    """
    path = Path(run_path) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means "unusable"
        warnings.warn(f"Ignoring unreadable checkpoint {path}: {exc}; starting the run afresh.",
                      stacklevel=2)
        return None
    problem = None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        problem = f"it has format {state.get('format') if isinstance(state, dict) else None}, expected {FORMAT}"
    elif DIGEST in state and state[DIGEST] != state_digest(state):
        problem = "its contents do not match their SHA-256 (the file was damaged after it was written)"
    elif run_id is not None and state.get("run_id") != run_id:
        problem = f"it belongs to run {state.get('run_id')!r}, not {run_id!r}"
    elif DIGEST not in state:
        warnings.warn(f"Checkpoint {path} records no SHA-256 (written by an older flhelpers), so damage to it "
                      f"cannot be detected; resuming from it unchecked.", stacklevel=2)
    if problem:
        warnings.warn(f"Ignoring checkpoint {path}: {problem}; starting the run afresh.", stacklevel=2)
        return None
    return state


def remove_checkpoint(run_path: Path) -> None:
    """Delete the run's checkpoint, if any."""
    path = Path(run_path) / CHECKPOINT
    if path.exists():
        path.unlink()
