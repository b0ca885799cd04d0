"""Why FLAME swings under label flipping (the Beyond study, MNIST-Mild, 40 % attackers).

At ``medium`` FLAME's Src-Acc under the paper's flip is 45.7 %, below FedAvg's 69.1 %, and its
per-round detection counts alternate from round 5 on: a round that rejects every attacker, then one
that keeps them all and rejects about 80 % of the honest peers (:func:`flhelpers_lab.beyond.swings`).
FLAME admits a single HDBSCAN cluster of at least ``K // 2 + 1`` peers over the cosine distances of
the updates (:mod:`flhelpers.defenses.flame`). The hypothesis: the tightest group of updates fills
that cluster, and which group is tightest depends on the global model. After a round that caught the
attackers the model is clean, the flippers all push 7 -> 1 and agree with each other most; after a
round that let them in the model maps 7 to 1, and the honest peers that hold sevens all push the
same repair.

:class:`GeometryRecorder` (an ``on_round`` callback) writes, per round, the geometry of the updates
``u_k`` that FLAME clusters: the mean pairwise cosine similarity

    cos_G = mean_{i != j in G} <u_i, u_j> / (||u_i|| ||u_j||)

within the attackers (``A``), within the honest holders of the source class (``S``: at least the
iid share ``1/C`` of their samples are the source class, :func:`~flhelpers_lab.investigations.foolsgold_trap.source_holders`)
and within the other honest peers (``H``), the mean update norm of each group, and how many of each
FLAME admitted. ``tools/flame_swing_study.py`` runs it on the committed run and writes the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from flhelpers.results import append_csv_row
from flhelpers_lab.investigations.foolsgold_trap import run_source_holders

__all__ = ["GROUPS", "COLUMNS", "GeometryRecorder", "geometry_row", "mean_pairwise_cosine"]

#: attackers, honest source-class holders, other honest peers
GROUPS = ("A", "S", "H")
COLUMNS = ("round", *(f"cos_{g}" for g in GROUPS), "cos_A_S", *(f"norm_{g}" for g in GROUPS),
           *(f"admitted_{g}" for g in GROUPS), *(f"size_{g}" for g in GROUPS))


def mean_pairwise_cosine(u: torch.Tensor, v: torch.Tensor | None = None) -> float:
    """Mean cosine similarity over the pairs ``i != j`` of the rows of ``u`` (``v`` is None), or over
    all pairs of a row of ``u`` and a row of ``v``; NaN without a pair. Zero rows count as cosine 0."""
    def unit(x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        n = x.norm(dim=1, keepdim=True)
        return torch.where(n > 0, x / n.clamp_min(1e-300), torch.zeros_like(x))

    a = unit(u)
    if v is None:
        k = len(a)
        if k < 2:
            return float("nan")
        g = a @ a.T
        return float((g.sum() - g.diagonal().sum()) / (k * (k - 1)))
    b = unit(v)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    return float((a @ b.T).mean())


def geometry_row(updates: torch.Tensor, groups: dict[str, np.ndarray], admitted: np.ndarray) -> dict[str, float]:
    """Per group of :data:`GROUPS` (boolean masks over the rows of ``updates``): the mean pairwise
    cosine, the mean norm, the group's size and how many of it are ``admitted``; and the mean cosine
    between the attackers and the honest source holders (``cos_A_S``)."""
    row: dict[str, float] = {}
    for g in GROUPS:
        mask = torch.as_tensor(np.asarray(groups[g], dtype=bool))
        rows = updates[mask]
        row[f"cos_{g}"] = mean_pairwise_cosine(rows)
        row[f"norm_{g}"] = float(rows.double().norm(dim=1).mean()) if len(rows) else float("nan")
        row[f"admitted_{g}"] = int(np.asarray(admitted, dtype=bool)[np.asarray(groups[g], dtype=bool)].sum())
        row[f"size_{g}"] = int(mask.sum())
    a, s = (torch.as_tensor(np.asarray(groups[g], dtype=bool)) for g in ("A", "S"))
    row["cos_A_S"] = mean_pairwise_cosine(updates[a], updates[s])
    return row


class GeometryRecorder:
    """``on_round`` callback appending :func:`geometry_row` of each round's updates to ``path``.

    Args:
        path: the CSV to append to.
        config_path: the run's ``config.json`` (its ``partition_histogram`` gives the source holders).
        source_class: the attack's source class.
    """

    def __init__(self, path: str | Path, config_path: str | Path, source_class: int) -> None:
        self.path, self.config_path, self.source = Path(path), Path(config_path), int(source_class)
        self._holders: np.ndarray | None = None

    def __call__(self, rec: Any) -> None:
        if self._holders is None:
            self._holders = run_source_holders(self.config_path, self.source)
        ids = np.asarray(rec.peer_ids, dtype=int)
        attackers = np.asarray(rec.is_attacker, dtype=bool)
        holders = self._holders[ids] & ~attackers
        groups = {"A": attackers, "S": holders, "H": ~attackers & ~holders}
        admitted = rec.result.accepted.cpu().numpy().astype(bool)
        row = {"round": rec.round, **geometry_row(rec.updates.detach().cpu(), groups, admitted)}
        append_csv_row(self.path, COLUMNS, row)


def read_geometry(path: str | Path) -> pd.DataFrame:
    """The record at ``path``, one row per round (the last written wins)."""
    frame = pd.read_csv(path)
    return frame.drop_duplicates("round", keep="last").sort_values("round").reset_index(drop=True)
