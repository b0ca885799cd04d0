"""A user registers a dataset, a model and a defense without editing flhelpers."""

import pytest
import torch
from torch import nn

import flhelpers
from flhelpers.config import ConfigError, ExperimentConfig
from flhelpers.data.base import FLDataset
from flhelpers.defenses.base import AggregationResult, Defense
from flhelpers.fl.engine import run_experiment


def _toy_dataset(data_root=None, n=600, **_):
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]])

    def draw(m):
        y = torch.arange(m) % 3
        return centers[y] + 0.3 * torch.randn(m, 2, generator=g), y

    tx, ty = draw(n)
    vx, vy = draw(300)
    return FLDataset("toy", tx, ty, vx, vy, 3, ("a", "b", "c"))


class _TinyNet(nn.Module):
    def __init__(self, num_outputs=3, **_):
        super().__init__()
        self.hidden = nn.Linear(2, 8)
        self.out = nn.Linear(8, num_outputs)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)))


class _FirstPeerOnly(Defense):
    name = "first-peer-only"

    def aggregate(self, updates, ctx):
        accepted = torch.zeros(updates.shape[0], dtype=torch.bool)
        accepted[0] = True
        return AggregationResult(updates[0].clone(), accepted)


@pytest.fixture(autouse=True, scope="module")
def registered():
    flhelpers.register_dataset("toy-blobs", _toy_dataset, overwrite=True)
    flhelpers.register_model("tiny-net", _TinyNet, overwrite=True)
    flhelpers.register_defense("first-peer-only", _FirstPeerOnly, overwrite=True)


def _cfg(**kw):
    base = dict(dataset="toy-blobs", model="tiny-net", num_peers=6, rounds=4, local_epochs=1,
                batch_size=16, lr=0.1, momentum=0.0, source_class=0, target_class=1)
    base.update(kw)
    return ExperimentConfig(**base)


def test_custom_dataset_model_and_defense_run_end_to_end(tmp_path):
    res = run_experiment(_cfg(defense="first-peer-only"), results_dir=tmp_path, progress=False)
    assert res.summary["accuracy"] > 0.9  # three well separated blobs
    # the custom rule accepts only the first peer each round: 5 rejected per round
    assert int(res.metrics["cum_fp"].iloc[-1]) == 5 * 4


def test_custom_names_are_listed_and_typos_suggested():
    assert "toy-blobs" in flhelpers.DATASETS.names()
    with pytest.raises(ConfigError, match="Did you mean 'tiny-net'"):
        flhelpers.fl.engine.validate_config(_cfg(model="tiny-nett"))


def test_registering_a_taken_name_needs_overwrite():
    with pytest.raises(ValueError, match="already registered"):
        flhelpers.register_defense("first-peer-only", lambda: None)
