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
:func:`capture_gradients` runs one experiment with it and stores the result under
``<results_dir>/captures/<run-id>/`` so that re-running a notebook reuses it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from flhelpers.config import ExperimentConfig
from flhelpers.defenses.lfighter import neuron_magnitudes
from flhelpers.params import ParamLayout, flatten_buffers
from flhelpers.results import atomic_write_csv, atomic_write_json, read_json

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


@dataclass
class GradientCapture:
    """The gradient analyses of one run (see :func:`capture_gradients`).

    Attributes:
        run_id: the captured run.
        config: its configuration.
        magnitudes: one row per round, peer and output neuron: ``round, peer_id, is_attacker,
            neuron, magnitude``.
        pca: one row per PCA round, view and peer: ``round, view, peer_id, is_attacker, accepted,
            held_class, pc1, pc2, explained_pc1, explained_pc2``.
        comparison: Table 1 for the first attacker at the last PCA round (``None`` without attackers).
        comparison_peer: that peer's id and the round, ``{"peer_id": .., "round": ..}``.
    """

    run_id: str
    config: ExperimentConfig
    magnitudes: pd.DataFrame
    pca: pd.DataFrame
    comparison: pd.DataFrame | None
    comparison_peer: dict[str, int] | None
    reused: bool = False

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_csv(folder / "magnitudes.csv", self.magnitudes)
        atomic_write_csv(folder / "pca.csv", self.pca)
        if self.comparison is not None:
            atomic_write_csv(folder / "comparison.csv", self.comparison.reset_index(names="measure"))
        atomic_write_json(folder / "capture.json", {"run_id": self.run_id, "config": self.config.to_dict(),
                                                    "comparison_peer": self.comparison_peer})

    @classmethod
    def load(cls, folder: Path) -> "GradientCapture":
        meta = read_json(folder / "capture.json")
        comparison = None
        if (folder / "comparison.csv").is_file():
            comparison = pd.read_csv(folder / "comparison.csv").set_index("measure")
            comparison.index.name = None
        return cls(meta["run_id"], ExperimentConfig.from_dict(meta["config"]),
                   pd.read_csv(folder / "magnitudes.csv"), pd.read_csv(folder / "pca.csv"),
                   comparison, meta["comparison_peer"], reused=True)


def capture_folder(cfg: ExperimentConfig, results_dir: str | Path = "results",
                   pca_rounds: Iterable[int] | None = None) -> Path:
    """Where the capture of ``cfg`` (PCA at ``pca_rounds``, default the last round) is stored:
    ``<results_dir>/captures/<run-id>-r<rounds>/``; it is complete once ``capture.json`` exists."""
    rounds = sorted(set(pca_rounds)) if pca_rounds is not None else [cfg.rounds - 1]
    return Path(results_dir) / "captures" / f"{cfg.run_id()}-r{'_'.join(map(str, rounds))}"


def capture_gradients(cfg: ExperimentConfig, data_root: str | Path | None = None,
                      results_dir: str | Path = "results", pca_rounds: Iterable[int] | None = None,
                      compare: bool = True, force: bool = False, progress: bool = True) -> GradientCapture:
    """Run ``cfg`` once with an :class:`UpdateRecorder` and keep its gradient analyses.

    The run itself lands in the results store like any other (a grid with the same config
    reuses it). The analyses are written to ``<results_dir>/captures/<run-id>/`` and read back
    on the next call unless ``force`` (a run with ``on_round`` always recomputes, so this is what
    makes re-running a notebook cheap).

    Args:
        cfg: the run to capture (e.g. FedAvg with 30 % attackers).
        pca_rounds: rounds whose updates are projected by PCA; default the last round.
        compare: also compute Table 1 (:func:`good_and_bad_update`, :func:`compare_updates`) for
            the first attacker at the last PCA round.
    """
    from flhelpers.fl.engine import run_experiment

    rounds = sorted(set(pca_rounds)) if pca_rounds is not None else [cfg.rounds - 1]
    for r in rounds:
        if not 0 <= r < cfg.rounds:
            raise ValueError(f"pca round {r} is outside the run's rounds 0..{cfg.rounds - 1}.")
    folder = capture_folder(cfg, results_dir, rounds)
    if not force and (folder / "capture.json").is_file():
        return GradientCapture.load(folder)
    holder: dict[str, UpdateRecorder] = {}

    def on_round(record: Any) -> None:
        if "rec" not in holder:
            holder["rec"] = UpdateRecorder(record.context.layout, cfg.lr, cfg.source_class, cfg.target_class,
                                           pca_rounds=rounds, keep_for_comparison=compare)
        holder["rec"](record)

    result = run_experiment(cfg, data_root=data_root, results_dir=results_dir, force=True,
                            progress=progress, on_round=on_round)
    rec = holder["rec"]
    exp = result.extra.get("experiment")
    pca = pd.DataFrame(rec.pca)
    if exp is not None and len(pca):
        held = exp.partition.histogram.argmax(axis=1)
        pca.insert(5, "held_class", held[pca["peer_id"].to_numpy()])
    comparison, peer = None, None
    if compare and rec.kept and exp is not None:
        good, bad = good_and_bad_update(exp, rec.kept["peer_id"], rec.kept["global_params"], rec.kept["round"])
        comparison = compare_updates(good, bad, exp.layout, cfg.lr, cfg.source_class, cfg.target_class)
        peer = {"peer_id": rec.kept["peer_id"], "round": rec.kept["round"]}
    capture = GradientCapture(result.run_id, cfg, pd.DataFrame(rec.magnitudes), pca, comparison, peer)
    capture.save(folder)
    return capture


def _capture_in_worker(cfg: ExperimentConfig, data_root: str | Path | None, results_dir: str | Path,
                       threads: int) -> GradientCapture:
    torch.set_num_threads(threads)
    return capture_gradients(cfg, data_root, results_dir, progress=False)


def capture_all(configs: Sequence[ExperimentConfig], data_root: str | Path | None = None,
                results_dir: str | Path = "results", workers: int = 1, force: bool = False) -> list[GradientCapture]:
    """:func:`capture_gradients` for several runs (last round's PCA, Table 1), in ``configs`` order.

    Captures already stored are read back (unless ``force``); the others run in up to ``workers``
    processes (each with ``cores // workers`` torch threads), as :func:`flhelpers.fl.grid.run_grid` does.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}.")
    out: list[GradientCapture | None] = [None] * len(configs)
    todo = []
    for i, cfg in enumerate(configs):
        folder = capture_folder(cfg, results_dir)
        if not force and (folder / "capture.json").is_file():
            out[i] = GradientCapture.load(folder)
        else:
            todo.append(i)
    if workers == 1 or len(todo) < 2:
        for i in todo:
            out[i] = capture_gradients(configs[i], data_root, results_dir, progress=False)
    else:
        threads = max(1, torch.get_num_threads() // workers)
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {i: pool.submit(_capture_in_worker, configs[i], data_root, results_dir, threads)
                       for i in todo}
            for i, future in futures.items():
                out[i] = future.result()
    return [c for c in out if c is not None]


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


__all__ = ["PARTS", "VIEWS", "GradientCapture", "UpdateRecorder", "angle_degrees", "capture_all", "capture_gradients",
           "compare_updates", "good_and_bad_update", "gradient_views", "gradients_of", "magnitude_trace",
           "peer_neuron_magnitudes", "pca_2d", "relevant_neurons", "update_parts"]
