"""Gradient analyses of section 5.1 of the paper: what label flipping does to peers' updates.

A peer's *gradient* is ``g_k = (W^t - W_k^{t+1}) / eta = -u_k / eta`` (``u_k`` its update). Three
views of it (paper Figs 1, 2, 4, 5, 6):

* ``whole update``: all ``D`` coordinates of ``g_k``;
* ``output layer``: the output layer's weights and biases, ``C * (in + 1)`` coordinates;
* ``relevant neurons``: the rows of the source and target output neurons only, ``2 * (in + 1)``
  coordinates (with a single output neuron, IMDB, the whole output layer is relevant).

The *magnitude* of output neuron ``i`` is ``||g_{k,i}||``, the norm of its weight row and bias
(Fig 3); the *angle* between two gradients is ``arccos(a . b / (||a|| ||b||))`` (Table 1).

:class:`UpdateRecorder` is an ``on_round`` callback of :func:`flhelpers.fl.engine.run_experiment`
that keeps these (not the updates themselves, which are 11M floats per peer for ResNet18);
:func:`flhelpers.analysis.capture.capture_gradients` runs one experiment with it and stores the result under
``<results_dir>/captures/<run-id>/`` so that re-running a notebook reuses it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from flhelpers.defenses.lfighter import neuron_magnitudes
from flhelpers.params import ParamLayout, flatten_buffers

VIEWS = ("whole update", "output layer", "relevant neurons")
#: the parts of an update that Table 1 compares
PARTS = ("whole update", "output layer", "relevant neurons", "non-relevant neurons")


def gradients_of(updates: torch.Tensor, lr: float) -> torch.Tensor:
    """The paper's gradients ``(W^t - W_k^{t+1}) / eta = -u_k / eta`` of updates ``u_k``."""
    if lr <= 0:
        raise ValueError(f"lr must be positive to turn updates into gradients, got {lr}.")
    return -updates / lr


def relevant_neurons(layout: ParamLayout, source_class: int, target_class: int) -> list[int]:
    """The output neurons of the source and target classes (``[0]`` with one output neuron)."""
    if layout.num_outputs == 1:
        return [0]
    for name, c in (("source_class", source_class), ("target_class", target_class)):
        if not 0 <= c < layout.num_outputs:
            raise ValueError(f"{name}={c} is not an output neuron of a {layout.num_outputs}-output model.")
    return [int(source_class), int(target_class)]


def peer_neuron_magnitudes(updates: torch.Tensor, layout: ParamLayout, lr: float) -> np.ndarray:
    """``m_{k,i} = ||g_{k,i}||`` from flat updates: each peer's gradient norm per output neuron, ``(K, C)``
    (:func:`flhelpers.defenses.lfighter.neuron_magnitudes` of the output rows, ``g = -u / lr``)."""
    if lr <= 0:
        raise ValueError(f"lr must be positive to turn updates into gradients, got {lr}.")
    # ||-u / lr|| = ||u|| / lr: only the output rows are touched (no K x D copy)
    return (neuron_magnitudes(layout.output_rows(updates).double()) / lr).cpu().numpy()


def gradient_views(updates: torch.Tensor, layout: ParamLayout, lr: float, source_class: int,
                   target_class: int) -> dict[str, torch.Tensor]:
    """The three views of the peers' gradients (``VIEWS``), each ``(K, d)`` on the updates' device."""
    grads = gradients_of(updates, lr)
    rows = layout.output_rows(grads)
    relevant = rows[:, relevant_neurons(layout, source_class, target_class)]
    return {
        "whole update": grads,
        "output layer": rows.reshape(rows.shape[0], -1),
        "relevant neurons": relevant.reshape(rows.shape[0], -1),
    }


def pca_2d(x: torch.Tensor | np.ndarray, scale: float = 1.0,
           chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """First two principal components of the rows of ``scale * x`` ``(K, d)``, and their explained
    variance ratios.

    PCA through the ``K x K`` Gram matrix of the centred rows, ``G = X_c X_c^T = U S^2 U^T``: the
    scores are ``U S`` (the same as ``X_c V`` of the SVD ``X_c = U S V^T``). ``G`` is summed over
    blocks of ``chunk`` columns in float64, so ``d`` may be 11M (ResNet18) without a float64 copy
    of ``x``. Signs are fixed so that the largest-magnitude score of each component (the first of
    those within a relative 1e-9 of the largest) is positive
    (scikit-learn fixes signs differently; components match it up to sign). A component with no
    variance is a column of zeros.
    """
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"pca_2d needs a K x d matrix with K >= 2 rows, got shape {tuple(x.shape)}.")
    k = x.shape[0]
    gram = torch.zeros(k, k, dtype=torch.float64)
    for start in range(0, x.shape[1], chunk):
        block = x[:, start:start + chunk].to(dtype=torch.float64, device="cpu") * scale
        block -= block.mean(dim=0, keepdim=True)
        gram += block @ block.T
    evals, evecs = torch.linalg.eigh(gram)
    evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
    total = float(evals.sum())
    scores = np.zeros((k, 2))
    ratios = np.zeros(2)
    for j in range(min(2, k)):
        if total <= 0 or float(evals[j]) <= 1e-12 * total:
            continue
        col = (evecs[:, j] * evals[j].sqrt()).numpy()
        size = np.abs(col)
        first_largest = np.flatnonzero(size >= size.max() * (1 - 1e-9))[0]  # robust to ties
        if col[first_largest] < 0:
            col = -col
        scores[:, j] = col
        ratios[j] = float(evals[j]) / total
    return scores, ratios


def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> float:
    """``arccos(a . b / (||a|| ||b||))`` in degrees, computed as ``2 atan2(||a^ - b^||, ||a^ + b^||)``
    on the unit vectors (exact near 0 and 180 degrees); 90 when either vector is zero."""
    a, b = a.double().flatten(), b.double().flatten()
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if na == 0 or nb == 0:
        return 90.0
    ua, ub = a / na, b / nb
    return math.degrees(2.0 * math.atan2(float(torch.linalg.vector_norm(ua - ub)),
                                         float(torch.linalg.vector_norm(ua + ub))))


def update_parts(gradient: torch.Tensor, layout: ParamLayout, source_class: int,
                 target_class: int) -> dict[str, torch.Tensor]:
    """One gradient ``(D,)`` cut into Table 1's ``PARTS`` (non-relevant is empty with one output neuron)."""
    rows = layout.output_rows(gradient)
    rel = relevant_neurons(layout, source_class, target_class)
    other = [i for i in range(layout.num_outputs) if i not in rel]
    return {
        "whole update": gradient,
        "output layer": rows.reshape(-1),
        "relevant neurons": rows[rel].reshape(-1),
        "non-relevant neurons": rows[other].reshape(-1),
    }


def compare_updates(good: torch.Tensor, bad: torch.Tensor, layout: ParamLayout, lr: float,
                    source_class: int, target_class: int) -> pd.DataFrame:
    """Table 1 of the paper: magnitudes of a good and a bad gradient of the same peer, and their angle.

    Rows ``magnitude (good)``, ``magnitude (bad)`` (L2 norms of the gradients ``-u / eta``) and
    ``angle (degrees)``; columns ``PARTS``. A part with no coordinates (the non-relevant neurons
    of a one-output model) is NaN.
    """
    if good.shape != bad.shape or good.dim() != 1:
        raise ValueError(f"good and bad must be two updates of the same shape (D,), got "
                         f"{tuple(good.shape)} and {tuple(bad.shape)}.")
    g = update_parts(gradients_of(good, lr), layout, source_class, target_class)
    b = update_parts(gradients_of(bad, lr), layout, source_class, target_class)
    table: dict[str, list[float]] = {}
    for part in PARTS:
        if g[part].numel() == 0:
            table[part] = [float("nan")] * 3
            continue
        table[part] = [float(torch.linalg.vector_norm(g[part].double())),
                       float(torch.linalg.vector_norm(b[part].double())),
                       angle_degrees(g[part], b[part])]
    return pd.DataFrame(table, index=["magnitude (good)", "magnitude (bad)", "angle (degrees)"])


def good_and_bad_update(experiment: Any, peer_id: int, global_params: torch.Tensor,
                        round_: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same peer's update from the same global model with honest and with flipped labels.

    The paper's Table 1 experiment: peer ``peer_id`` trains on its true labels (good update), then
    on the labels its attack flips (bad update), with the same batch order and dropout seeds
    (:func:`flhelpers.fl.training.peer_update`). Training-mode BatchNorm normalises with batch
    statistics, so the starting buffers do not change the update.
    """
    from flhelpers.fl.training import PeerData, peer_update

    exp = experiment
    if not 0 <= peer_id < len(exp.peers):
        raise ValueError(f"peer_id={peer_id} is not a peer of this run (0..{len(exp.peers) - 1}).")
    peer = exp.peers[peer_id]
    true_labels = exp.dataset.train_y[peer.indices]
    flipped = exp.attack.poison_labels(true_labels)
    if bool((flipped == true_labels).all()):
        raise ValueError(f"The attack changes none of peer {peer_id}'s labels (it holds no source-class "
                         f"sample): choose a peer that holds the source class.")
    model = copy.deepcopy(exp.model)
    buffers = flatten_buffers(model)
    params = global_params.to(exp.device)
    out = []
    for labels in (true_labels, flipped):
        u, _ = peer_update(model, exp.config, exp.dataset, PeerData(peer.peer_id, peer.indices, labels),
                           params, buffers.to(exp.device), round_, exp.device)
        out.append(u.detach().cpu())
    return out[0], out[1]


@dataclass
class UpdateRecorder:
    """An ``on_round`` callback that keeps the gradient analyses of every round.

    * every round: each peer's output-neuron magnitudes (Fig 3);
    * rounds in ``pca_rounds`` (``None``: the last round of the run, ``rounds - 1``): the first two
      principal components of the three gradient views (Figs 1, 2, 4-6), and, when
      ``keep_for_comparison``, the global model and the first attacker's update, for Table 1.
    """

    layout: ParamLayout
    lr: float
    source_class: int
    target_class: int
    pca_rounds: Sequence[int] = ()
    keep_for_comparison: bool = True
    magnitudes: list[dict[str, Any]] = field(default_factory=list)
    pca: list[dict[str, Any]] = field(default_factory=list)
    kept: dict[str, Any] = field(default_factory=dict)

    def __call__(self, record: Any) -> None:
        updates = record.updates.detach()
        mags = peer_neuron_magnitudes(updates, self.layout, self.lr)
        accepted = record.result.accepted.cpu().numpy().astype(bool)
        for row, (pid, att) in enumerate(zip(record.peer_ids, record.is_attacker)):
            for neuron in range(mags.shape[1]):
                self.magnitudes.append({"round": int(record.round), "peer_id": int(pid),
                                        "is_attacker": bool(att), "neuron": neuron,
                                        "magnitude": float(mags[row, neuron])})
        if int(record.round) not in set(self.pca_rounds):
            return
        rows = self.layout.output_rows(updates)
        relevant = rows[:, relevant_neurons(self.layout, self.source_class, self.target_class)]
        # the views of gradient_views, scaled by -1/lr inside pca_2d (no K x D copy)
        views = {"whole update": updates, "output layer": rows.reshape(rows.shape[0], -1),
                 "relevant neurons": relevant.reshape(rows.shape[0], -1)}
        for view, x in views.items():
            scores, ratios = pca_2d(x, scale=-1.0 / self.lr)
            for row, (pid, att) in enumerate(zip(record.peer_ids, record.is_attacker)):
                self.pca.append({"round": int(record.round), "view": view, "peer_id": int(pid),
                                 "is_attacker": bool(att), "accepted": bool(accepted[row]),
                                 "pc1": scores[row, 0], "pc2": scores[row, 1],
                                 "explained_pc1": ratios[0], "explained_pc2": ratios[1]})
        attackers = np.flatnonzero(np.asarray(record.is_attacker, dtype=bool))
        if self.keep_for_comparison and len(attackers) and record.context.global_params is not None:
            row = int(attackers[0])
            self.kept = {"round": int(record.round), "peer_id": int(record.peer_ids[row]),
                         "bad_update": updates[row].cpu().clone(),
                         "global_params": record.context.global_params.detach().cpu().clone()}


def magnitude_trace(magnitudes: pd.DataFrame, source_class: int, target_class: int) -> pd.DataFrame:
    """Fig 3's curves: per round, the mean gradient magnitude of the source neuron, the target
    neuron and the non-relevant neurons (mean over those neurons), over all peers.

    Returns a tidy frame ``round, neuron, magnitude`` with ``neuron`` in ``source neuron (c)``,
    ``target neuron (c)`` and ``non-relevant neurons (mean)``; with one output neuron only
    ``output neuron``.
    """
    need = {"round", "neuron", "magnitude"}
    if not need <= set(magnitudes.columns):
        raise ValueError(f"magnitudes needs columns {sorted(need)}, got {list(magnitudes.columns)}.")
    num = int(magnitudes["neuron"].max()) + 1
    per = magnitudes.groupby(["round", "neuron"], as_index=False)["magnitude"].mean()
    if num == 1:
        return per.assign(neuron="output neuron")[["round", "neuron", "magnitude"]]
    name = {source_class: f"source neuron ({source_class})", target_class: f"target neuron ({target_class})"}
    per["neuron"] = per["neuron"].map(lambda i: name.get(int(i), "non-relevant neurons (mean)"))
    order = [*name.values(), "non-relevant neurons (mean)"]
    per["neuron"] = pd.Categorical(per["neuron"], categories=order, ordered=True)
    out = per.groupby(["round", "neuron"], as_index=False, observed=True)["magnitude"].mean()
    out["neuron"] = out["neuron"].astype(str)
    return out


__all__ = ["PARTS", "VIEWS", "UpdateRecorder", "angle_degrees", "compare_updates", "good_and_bad_update", "gradient_views",
           "gradients_of", "magnitude_trace", "peer_neuron_magnitudes", "pca_2d", "relevant_neurons", "update_parts"]
