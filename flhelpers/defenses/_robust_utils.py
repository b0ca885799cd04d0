"""Helpers shared by the coordinate-wise rules: column chunks, true medians, distances.

The coordinate-wise rules work on a ``K x D`` matrix one block of columns at a time, so
the extra memory stays bounded (a few copies of ``K x chunk``) even for 20 updates of
ResNet18 size (``D = 11,181,642``).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

#: Elements (``K * columns``) per column block; 2**22 float32 values are 16 MiB.
DEFAULT_BLOCK_ELEMENTS = 1 << 22


def check_finite(values: torch.Tensor, what: str = "updates", allow_non_finite: bool = False) -> None:
    """Raise a ValueError when ``values`` hold NaN or +-Inf (unless ``allow_non_finite``).

    An order statistic of a column holding NaN has no meaning (NaN is unordered: numpy and torch
    sort it last, so a median or a Krum ranking computed anyway is a finite number that depends
    on where a NaN landed), and a distance to an infinite row is infinite or NaN. The rules that
    call these helpers (median, trimmed mean, Krum, Multi-Krum) therefore refuse such input; the
    engine's guard (:func:`flhelpers.fl.guards.guarded_aggregate`) removes non-finite rows before
    any rule sees them. For a 2-D ``K x D`` block the message names the offending rows.
    """
    if allow_non_finite or values.numel() == 0:
        return
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    where = ""
    if values.dim() == 2:
        rows = (~finite).any(dim=1).nonzero().flatten().tolist()
        where = f" in row(s) {rows[:10]}{' ...' if len(rows) > 10 else ''}"
    raise ValueError(f"The {what} hold NaN or +-Inf{where}, which have no meaningful order, median or distance; "
                     f"drop the non-finite rows first (flhelpers.fl.guards.guarded_aggregate does).")


def check_finite_rows(updates: torch.Tensor, what: str = "updates",
                      block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> None:
    """:func:`check_finite` on a ``K x D`` matrix one column block at a time (bounded memory)."""
    k, d = updates.shape
    for cols in column_chunks(k, d, block_elements):
        check_finite(updates[:, cols], what)


def column_chunks(
    num_rows: int, num_cols: int, block_elements: int = DEFAULT_BLOCK_ELEMENTS
) -> Iterator[slice]:
    """Slices of columns so that each block holds about ``block_elements`` values."""
    width = max(1, block_elements // max(1, num_rows))
    for start in range(0, num_cols, width):
        yield slice(start, min(num_cols, start + width))


def median_of_sorted(sorted_values: torch.Tensor, dim: int = -1, *,
                     allow_non_finite: bool = False) -> torch.Tensor:
    """The true median along ``dim`` of values already sorted along ``dim``.

    For an even count ``n`` it is the mean of the two middle values,
    ``(v_(n/2) + v_(n/2+1)) / 2`` (``torch.median`` would return the lower one); for an odd
    count ``v_((n+1)/2)``. NaN or +-Inf raise a ValueError (:func:`check_finite`) unless
    ``allow_non_finite`` (the repeated median's slope tables hold ``+inf`` on purpose).
    """
    n = sorted_values.shape[dim]
    if n == 0:
        raise ValueError("The median of an empty set is undefined.")
    check_finite(sorted_values, "values", allow_non_finite)
    hi = sorted_values.narrow(dim, n // 2, 1).squeeze(dim)
    if n % 2 == 1:
        return hi
    lo = sorted_values.narrow(dim, n // 2 - 1, 1).squeeze(dim)
    return (lo + hi) / 2


def use_numpy(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` can be handed to numpy without a copy (CPU, float32/64, no grad)."""
    return (
        tensor.device.type == "cpu"
        and tensor.dtype in (torch.float32, torch.float64)
        and not tensor.requires_grad
    )


def sort_along(tensor: torch.Tensor, dim: int, *, allow_non_finite: bool = False) -> torch.Tensor:
    """``tensor`` sorted along ``dim`` (a new tensor).

    CPU float tensors are sorted by numpy, whose vectorised sort of many short rows is
    10-50x faster than ``torch.sort`` on the CPU; other devices and dtypes use ``torch.sort``.
    NaN has no place in an order, so NaN or +-Inf raise a ValueError (:func:`check_finite`)
    unless ``allow_non_finite``.
    """
    check_finite(tensor, "values", allow_non_finite)
    if use_numpy(tensor):
        return torch.from_numpy(np.sort(tensor.numpy(), axis=dim))
    return torch.sort(tensor, dim=dim).values


def argsort_along(tensor: torch.Tensor, dim: int, *,
                  allow_non_finite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` of ``tensor`` stably sorted along ``dim`` (ties keep their order);
    numpy on the CPU, as :func:`sort_along`, which also says when non-finite values raise."""
    check_finite(tensor, "values", allow_non_finite)
    if use_numpy(tensor):
        arr = tensor.numpy()
        idx = np.argsort(arr, axis=dim, kind="stable")
        values = np.take_along_axis(arr, idx, axis=dim)
        return torch.from_numpy(values), torch.from_numpy(idx.astype(np.int64, copy=False))
    out = torch.sort(tensor, dim=dim, stable=True)
    return out.values, out.indices


def sorted_column_blocks(
    updates: torch.Tensor, block_elements: int = DEFAULT_BLOCK_ELEMENTS
) -> Iterator[tuple[slice, torch.Tensor]]:
    """For each column block, its slice and the block sorted per column: ``(K, chunk)``.

    A block holding NaN or +-Inf raises a ValueError naming the rows (:func:`check_finite`).
    """
    k, d = updates.shape
    for cols in column_chunks(k, d, block_elements):
        block = updates[:, cols]
        check_finite(block)
        yield cols, sort_along(block, dim=0, allow_non_finite=True)  # just checked


def pairwise_sq_distances(
    updates: torch.Tensor, block_elements: int = DEFAULT_BLOCK_ELEMENTS
) -> torch.Tensor:
    """Pairwise squared Euclidean distances ``||u_i - u_j||^2`` as a ``K x K`` float64 matrix.

    Uses the Gram identity ``||a - b||^2 = <a,a> + <b,b> - 2<a,b>`` on column blocks cast to
    float64 and centred by their coordinate-wise median. Distances do not change under a
    common shift, and a centre inside the honest majority keeps the identity's cancellation
    small for the honest updates even when a few others are huge (a mean would be dragged
    towards them). Memory: a few ``K x chunk`` float64 blocks. A row holding NaN or +-Inf has
    no finite distance to anything and raises a ValueError naming it (:func:`check_finite`).
    """
    k, d = updates.shape
    gram = torch.zeros(k, k, dtype=torch.float64, device=updates.device)
    for cols in column_chunks(k, d, block_elements):
        raw = updates[:, cols]
        check_finite(raw)
        # any common shift leaves the distances unchanged, so the centre is computed in the
        # input precision (cheaper to sort) and subtracted in float64
        centre = median_of_sorted(sort_along(raw, dim=0, allow_non_finite=True), dim=0,
                                  allow_non_finite=True).to(torch.float64)  # raw was just checked
        block = raw.to(torch.float64, copy=True)  # never centre the caller's tensor
        block -= centre
        gram += block @ block.t()
    sq = torch.diagonal(gram)
    dist = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min_(0)
    dist.fill_diagonal_(0)
    return dist
