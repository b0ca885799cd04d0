import numpy as np
import pytest
import torch

from flhelpers.data.partition import make_partition


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 10, size=5000))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "extreme"])
def test_partition_covers_every_sample_once(labels, scheme):
    p = make_partition(labels, 20, scheme, seed=1, min_samples=32)
    allidx = torch.cat(p.indices).numpy()
    assert len(allidx) == len(labels)
    assert len(np.unique(allidx)) == len(labels)
    assert p.histogram.shape == (20, 10)
    assert p.histogram.sum() == len(labels)
    assert p.sizes().min() >= 32


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "extreme"])
def test_partition_is_seeded(labels, scheme):
    a = make_partition(labels, 20, scheme, seed=3)
    b = make_partition(labels, 20, scheme, seed=3)
    c = make_partition(labels, 20, scheme, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.indices, b.indices))
    assert not all(torch.equal(x, y) for x, y in zip(a.indices, c.indices))


def test_iid_sizes_equal_and_classes_spread(labels):
    p = make_partition(labels, 10, "iid", seed=0)
    assert p.sizes().max() - p.sizes().min() <= 1
    assert (p.histogram > 0).all()


def test_extreme_one_class_per_peer_same_count_per_class(labels):
    p = make_partition(labels, 30, "extreme", seed=0)
    assert ((p.histogram > 0).sum(axis=1) == 1).all()
    assert np.array_equal(p.histogram.argmax(axis=1), np.repeat(np.arange(10), 3))
    assert len(p.holders_of(7)) == 3


def test_dirichlet_is_non_iid(labels):
    p = make_partition(labels, 10, "dirichlet", seed=0, alpha=0.1)
    share = p.histogram / p.histogram.sum(axis=1, keepdims=True)
    assert share.max(axis=1).mean() > 0.4  # far from the iid 0.1


def test_min_samples_errors_are_clear(labels):
    with pytest.raises(ValueError, match="fewer than one batch"):
        make_partition(labels, 100, "iid", seed=0, min_samples=64)
    with pytest.raises(ValueError, match="multiple of the number of classes"):
        make_partition(labels, 15, "extreme", seed=0)
    with pytest.raises(ValueError, match="Dirichlet"):
        make_partition(labels, 50, "dirichlet", seed=0, alpha=0.01, min_samples=90)
