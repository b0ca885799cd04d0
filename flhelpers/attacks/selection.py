"""The choice of attackers: how many a ratio means, and which peers (seeded)."""

from __future__ import annotations

import numpy as np

from flhelpers.data.partition import Partition


def num_attackers(ratio: float, partition: Partition, source_class: int, scheme: str,
                  needs_source_holders: bool) -> int:
    """How many attackers a ratio means (the paper's setup).

    In the extreme split the ratio is a fraction of the peers holding the source class
    (40 % of the 10 class-7 peers = 4); otherwise a fraction of all peers. Rounded to nearest.
    """
    if needs_source_holders and scheme == "extreme":
        base = len(partition.holders_of(source_class))
    else:
        base = partition.num_peers
    return int(round(ratio * base))


def select_attackers(ratio: float, partition: Partition, source_class: int, scheme: str,
                     needs_source_holders: bool, seed: int) -> np.ndarray:
    """Seeded choice of attacker ids; among the source-class holders when the attack needs them."""
    count = num_attackers(ratio, partition, source_class, scheme, needs_source_holders)
    if count == 0:
        return np.array([], dtype=np.int64)
    pool = partition.holders_of(source_class) if needs_source_holders else np.arange(partition.num_peers)
    if count > len(pool):
        raise ValueError(
            f"An attacker ratio of {ratio} asks for {count} attackers but only {len(pool)} peers hold "
            f"source-class data; lower the ratio or use a split where more peers hold class {source_class}."
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=count, replace=False)).astype(np.int64)


__all__ = ["num_attackers", "select_attackers"]
