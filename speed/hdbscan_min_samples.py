"""Which scikit-learn ``min_samples`` matches the ``hdbscan`` package's default (docs/findings/mnist-extreme.md).

    pip install hdbscan && python speed/hdbscan_min_samples.py [--cases 200]

Procedure 2 of the LFighter paper uses HDBSCAN with ``min_cluster_size=2``; the authors used the
``hdbscan`` package, whose default ``min_samples`` equals ``min_cluster_size`` and counts
neighbours besides the point, while scikit-learn's counts the point itself. On random Gaussian
mixtures this script counts how often the package's labels (the same partition and the same noise
points) equal scikit-learn's with ``min_samples=3`` and with scikit-learn's default.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from sklearn.cluster import HDBSCAN


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal noise points and a one-to-one map between the cluster labels."""
    return bool(np.array_equal(a < 0, b < 0)) and len(set(zip(a.tolist(), b.tolist()))) == len(set(a)) == len(set(b))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    try:
        import hdbscan
    except ImportError:
        raise SystemExit("This comparison needs the hdbscan package: pip install hdbscan")
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(args.seed)
    matches = {"scikit-learn min_samples=3": 0, "scikit-learn default (min_samples=2)": 0}
    for _ in range(args.cases):
        k, d = int(rng.integers(8, 60)), int(rng.integers(2, 30))
        centers = rng.normal(0, 5, (int(rng.integers(2, 8)), d))
        x = centers[rng.integers(0, len(centers), k)] + rng.normal(0, rng.uniform(0.2, 3), (k, d))
        package = hdbscan.HDBSCAN(min_cluster_size=2).fit(x).labels_
        matches["scikit-learn min_samples=3"] += same_partition(package, HDBSCAN(min_cluster_size=2, min_samples=3).fit(x).labels_)
        matches["scikit-learn default (min_samples=2)"] += same_partition(package, HDBSCAN(min_cluster_size=2).fit(x).labels_)
    for name, n in matches.items():
        print(f"hdbscan package default == {name}: {n}/{args.cases}")


if __name__ == "__main__":
    main()
