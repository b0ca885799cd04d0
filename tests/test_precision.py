"""``precision="bfloat16"``: local training under bfloat16 autocast, an option of both backends
(issue 18: faster on this CPU, but it changes the numbers, so never a default)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from flhelpers.config import LEGACY_VALUES, ConfigError, ExperimentConfig, benchmark_config, validate_config
from flhelpers.fl import vectorized as vz
from flhelpers.fl.engine import build_experiment, run_experiment
from flhelpers.fl.training import PeerData, SequentialTrainer, training_autocast
from flhelpers.params import flatten_buffers, flatten_params
from flhelpers.presets import BENCHMARKS, MEDIUM, QUICK


def test_float32_is_every_presets_precision_and_keeps_the_run_id():
    for table in (BENCHMARKS, MEDIUM, QUICK):
        assert all("precision" not in v for v in table.values())
    cfg = benchmark_config("cifar10-mild", "medium")
    assert cfg.precision == "float32" and LEGACY_VALUES["precision"] == "float32"
    without = cfg.to_dict()
    del without["precision"]  # a config.json written before the field existed
    assert ExperimentConfig.from_dict(without).run_id() == cfg.run_id()
    assert cfg.replace(precision="bfloat16").run_id() != cfg.run_id()


@pytest.mark.parametrize("bad", ["float16", "bf16", None, 16])
def test_an_unknown_precision_is_refused_before_training(bad):
    with pytest.raises(ConfigError, match="precision must be one of float32, bfloat16"):
        validate_config(ExperimentConfig(precision=bad))


def test_training_autocast_runs_the_forward_in_bfloat16_only_when_asked():
    lin, x, cpu = nn.Linear(4, 3), torch.randn(5, 4), torch.device("cpu")
    with training_autocast(ExperimentConfig(precision="bfloat16"), cpu):
        assert lin(x).dtype == torch.bfloat16
    with training_autocast(ExperimentConfig(), cpu):
        assert lin(x).dtype == torch.float32
    assert lin.weight.dtype == torch.float32


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.filterwarnings("ignore:CIFAR-10")
def test_bfloat16_moves_a_resnet18_update_a_little_on_both_backends(data_root):
    """The paper's ResNet18, two peers of two batches of 4: bfloat16 changes the update on both
    backends (both honour the field), deterministically, and the same way on both."""
    cfg = benchmark_config("cifar10-iid", "quick", num_peers=2, train_subset=40, test_subset=10,
                           batch_size=4, local_epochs=1, lr=0.01)
    e32 = build_experiment(cfg, data_root)
    e16 = build_experiment(cfg.replace(precision="bfloat16"), data_root)
    peers = [PeerData(p.peer_id, p.indices[:8], p.labels[:8]) for p in e32.peers]
    gp, gb = flatten_params(e32.model), flatten_buffers(e32.model)
    assert torch.equal(gp, flatten_params(e16.model))  # the same start

    def seq(e):
        return SequentialTrainer(e.model, e.config, e.dataset, e.device).train_round(peers, gp, gb, 1)[0]

    def vec(e):
        return vz.VectorizedTrainer(e.model, e.config, e.dataset, e.device).train_round(peers, gp, gb, 1)[0]

    s32, s16, v32, v16 = seq(e32), seq(e16), vec(e32), vec(e16)
    assert torch.isfinite(s16).all() and torch.isfinite(v16).all()
    assert torch.equal(seq(e16), s16) and torch.equal(vec(e16), v16)  # deterministic
    # float32: the backends differ by their reduction order only (0.2 % of the norm here, two steps
    # of batch 4 through BatchNorm); bfloat16 moves each backend's update far more (about 80 %:
    # BatchNorm over 4 samples of a 1 x 1 map amplifies 8-bit mantissas; one step of 32 images
    # from the same start moves the gradient by about a third)
    assert _rel(v32, s32) < 1e-2
    assert _rel(s16, s32) > 10 * _rel(v32, s32) and _rel(v16, v32) > 10 * _rel(v32, s32)
    # ... and both backends compute the same bfloat16 update: closer to each other than to float32
    assert _rel(v16, s16) < 0.6 * min(_rel(s16, s32), _rel(v16, v32))


@pytest.mark.filterwarnings("ignore:CIFAR-10")
def test_a_bfloat16_run_finishes_and_records_its_precision(tmp_path, data_root):
    cfg = benchmark_config("cifar10-iid", "quick", num_peers=2, train_subset=64, test_subset=100, rounds=1,
                           batch_size=16, precision="bfloat16", attacker_ratio=0.0)
    res = run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False)
    stored = json.loads((res.path / "config.json").read_text())
    assert stored["config"]["precision"] == "bfloat16"
    assert ExperimentConfig.from_dict(stored["config"]).run_id() == res.path.name == cfg.run_id()
    assert 0.0 <= json.loads((res.path / "summary.json").read_text())["accuracy"] <= 1.0
