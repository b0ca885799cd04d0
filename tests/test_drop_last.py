"""``drop_last`` (the authors' DataLoader drops the last incomplete batch of every local epoch)
and the BatchNorm batch-of-one refusal (issue 18)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from flhelpers.config import LEGACY_VALUES, ConfigError, ExperimentConfig, benchmark_config, validate_config
from flhelpers.fl.engine import build_experiment, check_batchnorm_batches, run_experiment
from flhelpers.fl.training import PeerData, batches_per_epoch, peer_update
from flhelpers.params import flatten_buffers, flatten_params
from flhelpers.presets import BENCHMARKS


@pytest.mark.parametrize("n,b,drop,expected", [(66, 32, True, 2), (66, 32, False, 3), (64, 32, True, 2),
                                               (64, 32, False, 2), (31, 32, True, 0), (33, 32, False, 2)])
def test_batches_per_epoch(n, b, drop, expected):
    cfg = ExperimentConfig(batch_size=b, drop_last=drop)
    assert batches_per_epoch(cfg, n) == expected


def test_the_paper_profile_drops_the_last_batch_everywhere():
    assert all(v["drop_last"] is True for v in BENCHMARKS.values())
    cfg = benchmark_config("cifar10-mild", "medium")
    assert cfg.drop_last is True and cfg.dataset_kwargs == {"train_batches": 5}
    assert benchmark_config("mnist-mild", "medium").drop_last is False  # committed runs: see presets


def test_drop_last_at_its_legacy_value_keeps_the_run_id_and_otherwise_changes_it():
    cfg = benchmark_config("mnist-mild", "medium", defense="fedavg", attacker_ratio=0.0)
    assert LEGACY_VALUES["drop_last"] is False and cfg.drop_last is False
    legacy = {k: v for k, v in cfg.to_dict().items() if k not in LEGACY_VALUES}
    import hashlib

    from flhelpers.config import RESULTS_VERSION
    text = json.dumps({**legacy, "results_version": RESULTS_VERSION}, sort_keys=True, default=str)
    assert cfg.run_id() == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert cfg.replace(drop_last=True).run_id() != cfg.run_id()


def test_drop_last_must_be_a_bool():
    with pytest.raises(ConfigError, match="drop_last must be True or False"):
        validate_config(ExperimentConfig(drop_last="yes"))


class _Counter(nn.Module):
    """A linear model that records the size of every training batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.sizes.append(x.shape[0])
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("drop,expected", [(True, [32, 32] * 2), (False, [32, 32, 6] * 2)])
def test_sequential_peer_trains_on_the_batches_drop_last_says(data_root, drop, expected):
    cfg = benchmark_config("mnist-iid", "quick", batch_size=32, local_epochs=2, drop_last=drop,
                           num_peers=2, train_subset=200, test_subset=10)
    exp = build_experiment(cfg, data_root)
    model = _Counter()
    peer = PeerData(0, torch.arange(70), exp.dataset.train_y[:70])
    gp = flatten_params(model)
    peer_update(model, cfg, exp.dataset, peer, gp, flatten_buffers(model), 0, torch.device("cpu"))
    assert model.sizes == expected


def test_the_issue_crash_case_finishes_and_without_drop_last_is_refused_before_training(data_root, tmp_path):
    """Issue 18: 2 peers of 33 CIFAR images at batch 32 end each epoch on one image, which
    ResNet18's 1 x 1 ``layer4`` BatchNorm cannot train on (ValueError deep in round 0)."""
    cfg = benchmark_config("cifar10-iid", "quick", num_peers=2, train_subset=66, test_subset=100, rounds=1)
    assert cfg.drop_last is True
    res = run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False)
    assert res.summary["rounds"] == 1 and np.isfinite(res.summary["test_loss"])
    record = json.loads((res.path / "config.json").read_text())
    assert record["config"]["drop_last"] is True
    assert record["train_samples"] == 66 and record["test_samples"] == 100
    bad = cfg.replace(drop_last=False)
    with pytest.raises(ConfigError, match=r"peer 0 \(33 samples\).*batch of 1 sample.*set drop_last=True"):
        run_experiment(bad, data_root=data_root, results_dir=tmp_path, progress=False)
    assert not (tmp_path / "runs" / bad.run_id()).exists()  # refused before anything was written


def test_batchnorm_check_only_refuses_batches_of_one():
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    plain = nn.Linear(3, 4)
    cfg = ExperimentConfig(batch_size=8, model="m")
    check_batchnorm_batches(cfg, bn, np.array([16, 24]))  # remainders 0: fine
    with pytest.warns(RuntimeWarning, match=r"batch of 2-7 samples.*consider drop_last=True"):
        check_batchnorm_batches(cfg, bn, np.array([16, 10, 23]))  # remainders 0, 2, 7: trains, warned
    check_batchnorm_batches(cfg, plain, np.array([17]))  # no BatchNorm: a batch of one trains
    check_batchnorm_batches(cfg.replace(drop_last=True), bn, np.array([17]))  # dropped
    with pytest.raises(ConfigError, match=r"peer 1 \(17 samples\)"):
        check_batchnorm_batches(cfg, bn, np.array([16, 17]))
    with pytest.raises(ConfigError, match="batch_size=1"):
        check_batchnorm_batches(cfg.replace(batch_size=1, drop_last=True), bn, np.array([16]))
