"""LFighter's procedures as the paper writes them: pure functions of the peers' output-layer gradients.

Procedure 1 (FILTER_MILD, k-means and the size-weighted inverse density: :func:`pairwise_angles`,
:func:`cluster_inverse_density`, :func:`cluster_scores`, :func:`filter_mild`, and the repeated
passes beyond the paper, :func:`filter_mild_passes`), Procedure 2 (FILTER_EXTREME, HDBSCAN and the
clusters' top neurons: :func:`extreme_features`, :func:`concat_features`, :func:`filter_extreme`,
:func:`split_by_own_top`), the automatic choice between them (:func:`detect_distribution`) and the
neuron ranking both use (:func:`neuron_magnitudes`, :func:`top_two`).

The algorithm, and every choice where the paper is silent (singletons, zero vectors, ties,
HDBSCAN's parameters, degenerate inputs), is written in the docstring of
:mod:`flhelpers.defenses.lfighter`, whose :class:`~flhelpers.defenses.lfighter.LFighter` applies
these functions each round; every name here is importable from there too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from flhelpers.params import ParamLayout

__all__ = [
    "cluster_inverse_density",
    "cluster_scores",
    "concat_features",
    "detect_distribution",
    "extreme_features",
    "filter_extreme",
    "filter_mild",
    "filter_mild_passes",
    "neuron_magnitudes",
    "pairwise_angles",
    "split_by_own_top",
    "top_two",
]

_MIN_PEERS = 3
_SCORE_RTOL = 1e-9


# ----------------------------------------------------------------------------- neurons


def neuron_magnitudes(rows: torch.Tensor) -> torch.Tensor:
    """``||g_{k,i}||`` for output-layer gradient rows ``(K, C, in+1)``: a ``(K, C)`` tensor."""
    return torch.linalg.vector_norm(rows, dim=-1)


def top_two(magnitudes: np.ndarray) -> np.ndarray:
    """Indices of the two largest entries along the last axis, largest first; ties -> lower index."""
    order = np.argsort(-magnitudes, axis=-1, kind="stable")
    return order[..., :2]


# ----------------------------------------------------------------------------- Procedure 1


def pairwise_angles(features: np.ndarray) -> np.ndarray:
    """The angle ``theta_ij`` between ``x_i`` and ``x_j`` in radians, ``arccos(cos(x_i, x_j))``.

    Computed as ``2 atan2(||u_i - u_j||, ||u_i + u_j||)`` on the unit vectors ``u``, which equals
    the arccos of the (clipped) cosine but stays exact near 0 and pi (arccos of a cosine
    rounded to ``1 - 1e-16`` is ``1.5e-8``, not 0). ``theta_ii = 0``; a zero vector is
    orthogonal to every other vector.
    """
    x = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    unit = x / np.where(norms > 0, norms, 1.0)[:, None]
    angles = np.empty((x.shape[0], x.shape[0]))
    for i in range(x.shape[0]):
        diff = np.linalg.norm(unit - unit[i], axis=1)
        summ = np.linalg.norm(unit + unit[i], axis=1)
        angles[i] = 2.0 * np.arctan2(diff, summ)
    np.fill_diagonal(angles, 0.0)
    return angles


def cluster_inverse_density(features: np.ndarray) -> float:
    """Procedure 1's CLUSTER_INVERSE_DENSITY: ``(1/n) sum_i max_j theta_ij`` over the cluster.

    ``j`` runs over the whole cluster, ``i`` included, so a singleton (or an empty) cluster has
    inverse density 0.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.shape[0] < 2:
        return 0.0
    return float(pairwise_angles(x).max(axis=1).mean())


def cluster_scores(features: np.ndarray, labels: np.ndarray) -> tuple[list[float], list[float], list[int]]:
    """``score_c = |cl_c| / K * dns(cl_c)`` for clusters ``c = 0, 1``: (scores, inverse densities, sizes)."""
    total = len(labels)
    scores, dns, sizes = [], [], []
    for c in (0, 1):
        members = features[labels == c]
        d = cluster_inverse_density(members)
        sizes.append(int(members.shape[0]))
        dns.append(d)
        scores.append(members.shape[0] / total * d)
    return scores, dns, sizes


def _degenerate(x: np.ndarray) -> str | None:
    """Why a round's features carry no evidence of who is bad (fewer than 3 peers, or all features
    identical: every peer is then accepted), or ``None`` when they can be clustered."""
    if x.shape[0] < _MIN_PEERS:
        return f"fewer than {_MIN_PEERS} peers: all accepted"
    if _distinct_rows(x) < 2:
        return "all features identical: all accepted"
    return None


def _distinct_rows(x: np.ndarray) -> int:
    return int(np.unique(x, axis=0).shape[0])


def filter_mild(features: np.ndarray, seed: int = 0, n_init: int = 10) -> tuple[np.ndarray, dict[str, Any]]:
    """Procedure 1 (FILTER_MILD): a ``(K,)`` bool mask of bad peers and what was found.

    k-means with two clusters; the cluster with the lower size-weighted inverse density is bad.
    See the docstring of :mod:`flhelpers.defenses.lfighter` for ties and degenerate inputs (then
    nobody is bad).
    """
    from sklearn.cluster import KMeans

    x = np.asarray(features, dtype=np.float64)
    k = x.shape[0]
    bad = np.zeros(k, dtype=bool)
    if (why := _degenerate(x)) is not None:
        return bad, {"reason": why}
    km = KMeans(n_clusters=2, random_state=int(seed) % 2**32, n_init=n_init).fit(x)
    labels = np.asarray(km.labels_, dtype=int)
    info: dict[str, Any] = {"labels": labels.tolist()}
    if len(np.unique(labels)) < 2:
        info["reason"] = "k-means found a single cluster: all accepted"
        return bad, info
    scores, dns, sizes = cluster_scores(x, labels)
    info.update(scores=scores, inverse_densities=dns, cluster_sizes=sizes)
    if math.isclose(scores[0], scores[1], rel_tol=_SCORE_RTOL, abs_tol=0.0):
        if sizes[0] == sizes[1]:
            info.update(bad_cluster=None, reason="equal scores and equal sizes: all accepted")
            return bad, info
        bad_cluster = int(np.argmin(sizes))  # tie in score: the smaller cluster is bad
        info["reason"] = "equal scores: the smaller cluster is bad"
    else:
        bad_cluster = int(np.argmin(scores))
        info["reason"] = "the cluster with the lower score is bad"
    info["bad_cluster"] = bad_cluster
    bad = labels == bad_cluster
    return bad, info


def filter_mild_passes(rows: np.ndarray, passes: int, seed: int = 0,
                       n_init: int = 10) -> tuple[np.ndarray, dict[str, Any]]:
    """Procedure 1 repeated on the peers it kept (an option beyond the paper).

    Pass 1 is Procedure 1. Each further pass takes the two largest neurons of the summed
    magnitudes over the peers kept so far, clusters those peers on them and drops the bad
    cluster, so attackers flipping a second pair (whose neurons pass 1 did not look at) meet a
    pass of their own. Peeling stops early when a pass's neurons are those of an earlier pass
    (nothing new to look at), or when it would leave half of the peers or fewer (LFighter assumes
    an honest majority). ``rows`` are the gradient rows ``(K, C, in+1)``; returns the bad mask and
    ``info`` with ``source_target`` (pass 1's neurons, as Procedure 1 reports them) and, per pass
    made, ``pass_neurons`` and ``pass_rejected``.
    """
    k = rows.shape[0]
    bad = np.zeros(k, dtype=bool)
    info: dict[str, Any] = {"pass_neurons": [], "pass_rejected": []}
    for p in range(passes):
        kept = np.flatnonzero(~bad)
        pair = top_two(np.linalg.norm(rows[kept], axis=-1).sum(axis=0))
        if any(set(pair.tolist()) == set(q) for q in info["pass_neurons"]):
            info["stopped"] = f"pass {p + 1}: neurons {pair.tolist()} already clustered on"
            break
        found_bad, found = filter_mild(rows[kept][:, pair, :].reshape(len(kept), -1), seed=seed + p, n_init=n_init)
        if p == 0:
            info.update(found)
            info["source_target"] = [int(i) for i in pair]
        elif int((~found_bad).sum()) <= k / 2:
            info["stopped"] = f"pass {p + 1}: would keep {int((~found_bad).sum())} of {k} peers"
            break
        bad[kept[found_bad]] = True
        info["pass_neurons"].append([int(i) for i in pair])
        info["pass_rejected"].append(int(found_bad.sum()))
    return bad, info


# ----------------------------------------------------------------------------- Procedure 2


def extreme_features(rows: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Procedure 2's input: each peer's gradient rows of its own two largest neurons, *in place*.

    ``rows`` is ``(K, C, in+1)``, ``pairs`` ``(K, 2)``. Every other neuron's row is zeroed and the
    result flattened to ``(K, C*(in+1))``, so a feature keeps *which* neurons its rows belong to.
    Concatenating the two rows instead (``[g_{k,imax1_k}, g_{k,imax2_k}]``) loses that: an
    attacker training source images under the target label then has nearly the same feature as
    an honest source-class peer (the rows differ only in their neuron index, early in training
    both are ``-(1 - p) h`` for the same source images) and the two merge into one cluster. With
    the neuron identity kept, the attackers form a cluster whose mean's largest neuron is the
    target class, which Procedure 2 compares with the target-class peers' cluster - the paper's
    own account of why it works ("provided that the number of attackers is less than the number
    of peers of the target class").
    """
    k = rows.shape[0]
    keep = np.zeros(rows.shape[:2], dtype=bool)
    keep[np.arange(k)[:, None], pairs] = True
    return np.where(keep[:, :, None], rows, 0.0).reshape(k, -1)


def concat_features(rows: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Procedure 2's input read literally: ``[g_{k,imax1_k}, g_{k,imax2_k}]``, shape ``(K, 2*(in+1))``.

    The two rows are concatenated in the order of their magnitudes; *which* neurons they belong
    to is lost (compare :func:`extreme_features`).
    """
    k = rows.shape[0]
    return rows[np.arange(k)[:, None], pairs].reshape(k, -1)


def filter_extreme(features: np.ndarray, output_grads: np.ndarray, min_samples: int | None = None,
                   own_tops: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Procedure 2 (FILTER_EXTREME): a ``(K,)`` bool mask of bad peers and what was found.

    ``features`` is ``(K, F)`` (each peer's rows of its own two largest neurons);
    ``output_grads`` is ``(K, C, in+1)``, the peers' output-layer gradient rows.
    HDBSCAN(min_cluster_size=2); clusters sharing the top neuron of their mean gradient: all but
    the largest are bad; noise is bad. Degenerate inputs: nobody is bad (the docstring of
    :mod:`flhelpers.defenses.lfighter`).

    ``own_tops`` (``(K,)``, each peer's own largest neuron ``imax1_k``; not the paper's rule, see
    :class:`~flhelpers.defenses.lfighter.LFighter`'s ``split_by_own_top``): every HDBSCAN cluster
    is first split into the groups of members that share their own largest neuron, so that no
    cluster mixes peers whose updates stand for different classes; the rule above then runs on
    those groups.
    """
    from sklearn.cluster import HDBSCAN

    x = np.asarray(features, dtype=np.float64)
    k = x.shape[0]
    bad = np.zeros(k, dtype=bool)
    if (why := _degenerate(x)) is not None:
        return bad, {"reason": why}
    labels = np.asarray(HDBSCAN(min_cluster_size=2, min_samples=min_samples, copy=True).fit(x).labels_, dtype=int)
    info: dict[str, Any] = {"labels": labels.tolist()}
    if np.all(labels < 0):
        info["reason"] = "HDBSCAN labelled every peer noise: all accepted"
        return bad, info
    if own_tops is not None:
        labels = split_by_own_top(labels, np.asarray(own_tops, dtype=int))
        info.update(hdbscan_labels=info["labels"], labels=labels.tolist())
    clusters = sorted(int(c) for c in np.unique(labels) if c >= 0)
    sizes = {c: int(np.sum(labels == c)) for c in clusters}
    tops: dict[int, int] = {}
    for c in clusters:
        mean_rows = output_grads[labels == c].mean(axis=0)  # (C, in+1)
        tops[c] = int(np.argmax(np.linalg.norm(mean_rows, axis=-1)))  # ties -> lower index
    bad_clusters: list[int] = []
    for neuron in sorted(set(tops.values())):
        group = [c for c in clusters if tops[c] == neuron]
        largest = max(sizes[c] for c in group)
        bad_clusters += [c for c in group if sizes[c] < largest]
    bad = (labels < 0) | np.isin(labels, bad_clusters)
    info.update(
        cluster_sizes={str(c): sizes[c] for c in clusters},
        cluster_top_neuron={str(c): tops[c] for c in clusters},
        bad_clusters=sorted(bad_clusters),
        noise=int(np.sum(labels < 0)),
        reason="smaller clusters sharing a top neuron, and noise, are bad",
    )
    return bad, info


def split_by_own_top(labels: np.ndarray, own_tops: np.ndarray) -> np.ndarray:
    """Cluster labels refined so that each cluster's members share their own largest neuron.

    Members of cluster ``c`` whose own largest neuron is ``t`` get one new label per ``(c, t)``
    pair, numbered in order of ``(c, t)``; noise (``-1``) stays noise.
    """
    out = np.full_like(labels, -1)
    pairs = sorted({(int(c), int(t)) for c, t in zip(labels, own_tops) if c >= 0})
    for new_label, (c, t) in enumerate(pairs):
        out[(labels == c) & (own_tops == t)] = new_label
    return out


# ----------------------------------------------------------------------------- which procedure


def detect_distribution(layout: ParamLayout, rows: torch.Tensor) -> tuple[str, dict[str, Any]]:
    """``"extreme"`` or ``"iid"`` from the signs of the peers' output-bias gradients.

    ``rows`` are the output-layer gradient rows ``(K, C, in+1)`` (bias in the last column) or
    whole ``K x D`` gradients.

    Peer ``k`` holds class ``i`` when ``grad_bias[k, i] < 0``. Extreme when more than half of the
    peers hold exactly one class. One or two output neurons, or no bias: ``"iid"``.
    """
    if layout.num_outputs == 1:
        return "iid", {"distribution_rule": "single output neuron"}
    if layout.num_outputs == 2:
        return "iid", {"distribution_rule": "two output neurons: bias signs are uninformative"}
    if layout.output_bias is None:
        return "iid", {"distribution_rule": "output layer has no bias"}
    bias = rows[:, :, -1] if rows.dim() == 3 else rows[:, layout.output_bias]
    held = (bias < 0).sum(dim=1)
    share = float((held == 1).double().mean())
    kind = "extreme" if share > 0.5 else "iid"
    return kind, {"distribution_rule": "bias-gradient signs", "share_holding_one_class": share}
