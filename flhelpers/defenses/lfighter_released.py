"""The LFighter authors' released code's Procedure 1 (``najeebjebreel/LFighter``, ``aggregation.py``,
class ``LFD``): pure functions of the peers' output-layer updates.

Its neuron magnitudes (:func:`released_magnitudes`), its cluster score (:func:`cosine_matrix`,
:func:`released_dissimilarity`, :func:`released_scores`) and its filter (:func:`filter_released`).
How they differ from the paper's text (seven points) is listed in the docstring of
:class:`~flhelpers.defenses.lfighter.LFighter`, whose ``variant="released"`` (and
:class:`~flhelpers.defenses.lfighter.LFighterReleased`) applies them each round; every name here
is importable from :mod:`flhelpers.defenses.lfighter` too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flhelpers.defenses.lfighter_procedures import _distinct_rows

__all__ = [
    "cosine_matrix",
    "filter_released",
    "released_dissimilarity",
    "released_magnitudes",
    "released_scores",
]


def released_magnitudes(dw_rows: np.ndarray, has_bias: bool = True) -> np.ndarray:
    """The released code's neuron magnitudes ``M_c = sum_k ||dW_k[c]||_2 + sum_k |db_k[c]|``, ``(C,)``.

    ``dw_rows`` are the output-layer rows ``(K, C, in[+1])`` of ``dW = W_global - W_local`` (not divided
    by the learning rate), the bias in the last column when ``has_bias``. The weight row's norm and
    the bias's absolute value are summed separately (the paper: the norm of the whole row).
    """
    x = np.asarray(dw_rows, dtype=np.float64)
    if not has_bias:
        return np.linalg.norm(x, axis=-1).sum(axis=0)
    return np.linalg.norm(x[..., :-1], axis=-1).sum(axis=0) + np.abs(x[..., -1]).sum(axis=0)


def cosine_matrix(features: np.ndarray) -> np.ndarray:
    """``cos(x_i, x_j)`` for the rows of ``features``; a zero row has cosine 0 with every row,
    itself included (scikit-learn's ``cosine_similarity`` convention, which the released code uses)."""
    x = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    unit = x / np.where(norms > 0, norms, 1.0)[:, None]
    return np.clip(unit @ unit.T, -1.0, 1.0)


def released_dissimilarity(features: np.ndarray) -> float:
    """The released code's cluster score (``clusters_dissimilarity``) of one cluster, before its
    size share: ``1 - mean_i min_j (CS - I)_ij`` with ``CS`` the members' cosine matrix.

    The diagonal of ``CS - I`` is 0 and the row minimum includes it, so a cluster whose members are
    all within 90 degrees of each other scores exactly 1, and a singleton scores 1. (A zero row has
    cosine 0 with itself, so its diagonal entry is -1 and its row minimum -1.)
    """
    x = np.asarray(features, dtype=np.float64)
    if x.shape[0] == 0:
        return 0.0
    cs = cosine_matrix(x) - np.eye(x.shape[0])
    return float(1.0 - cs.min(axis=1).mean())


def released_scores(features: np.ndarray, labels: np.ndarray) -> tuple[list[float], list[float], list[int]]:
    """``ds_c = n_c / m * released_dissimilarity(cluster c)`` for ``c = 0, 1``: (scores, dissimilarities,
    sizes); the cluster with the larger score is the released code's good one."""
    x = np.asarray(features, dtype=np.float64)
    m = len(labels)
    sizes = [int(np.sum(labels == c)) for c in (0, 1)]
    dis = [released_dissimilarity(x[labels == c]) for c in (0, 1)]
    return [sizes[c] / m * dis[c] for c in (0, 1)], dis, sizes


def filter_released(features: np.ndarray, n_init: int = 10,
                    random_state: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """The released code's Procedure 1: a ``(K,)`` bool mask of bad peers and what was found.

    ``KMeans(n_clusters=2, random_state=0, n_init=10)``; cluster ``c`` of ``n_c`` of the ``m`` peers
    scores ``ds_c = n_c / m * released_dissimilarity(cluster c)``; the cluster with the larger score is
    good and the other is bad, on a tie cluster 0 is good. One cluster is always dropped, even with
    no attacker. Degenerate inputs (ours; the released code would raise): fewer than 2 peers, all
    features identical, or k-means returning one cluster: every peer accepted.
    """
    from sklearn.cluster import KMeans

    x = np.asarray(features, dtype=np.float64)
    k = x.shape[0]
    bad = np.zeros(k, dtype=bool)
    if k < 2:
        return bad, {"reason": "fewer than 2 peers: all accepted"}
    if _distinct_rows(x) < 2:
        return bad, {"reason": "all features identical: all accepted"}
    labels = np.asarray(KMeans(n_clusters=2, random_state=random_state, n_init=n_init).fit(x).labels_, dtype=int)
    info: dict[str, Any] = {"labels": labels.tolist()}
    if len(np.unique(labels)) < 2:
        info["reason"] = "k-means found a single cluster: all accepted"
        return bad, info
    scores, dis, sizes = released_scores(x, labels)
    good = 1 if scores[0] < scores[1] else 0
    info.update(scores=scores, dissimilarities=dis, cluster_sizes=sizes, bad_cluster=1 - good,
                reason="released code: the cluster with the lower size x dissimilarity is bad")
    return labels != good, info
