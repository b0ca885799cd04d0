"""Clear errors before any training, each asserted by its message.

Every run-level check patches the trainer so that any training would fail the test: the
errors must come first.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import flhelpers  # noqa: F401  (registers the built-ins)
from flhelpers.cli import main
from flhelpers.config import ConfigError, ExperimentConfig, benchmark_config, validate_config
from flhelpers.data.base import DataMissingError, FLDataset
from flhelpers.data.download import ChecksumError, DataCorruptError, download_url
from flhelpers.data.mnist import MNIST_FILES
from flhelpers.fl.engine import build_experiment, run_experiment
from flhelpers.fl.training import SequentialTrainer

BASE = benchmark_config("mnist-iid", "quick")


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started before the configuration error was raised")

    monkeypatch.setattr(SequentialTrainer, "train_round", fail)


def toy(num_classes: int = 3, n: int = 600) -> FLDataset:
    y = torch.arange(n) % num_classes
    return FLDataset("toy", torch.randn(n, 2), y, torch.randn(60, 2), torch.arange(60) % num_classes,
                     num_classes, tuple(str(i) for i in range(num_classes)))


def bad(match: str, **changes) -> None:
    with pytest.raises(ConfigError, match=match):
        validate_config(BASE.replace(**changes))


# ----------------------------------------------------------------------------- names


def test_unknown_benchmark_lists_names_and_suggests():
    with pytest.raises(ConfigError) as info:
        benchmark_config("mnist-idd")
    msg = str(info.value)
    assert "Unknown benchmark 'mnist-idd'" in msg and "Did you mean 'mnist-iid'?" in msg
    assert "cifar10-mild" in msg and "imdb" in msg


@pytest.mark.parametrize("field,typo,closest,listed", [
    ("defense", "lfightr", "lfighter", "multi-krum"),
    ("attack", "label-flp", "label-flip", "none"),
    ("model", "mnist-cn", "mnist-cnn", "resnet18"),
    ("dataset", "mnsit", "mnist", "cifar10"),
])
def test_unknown_names_list_valid_ones_and_suggest_the_closest(field, typo, closest, listed):
    with pytest.raises(ConfigError) as info:
        validate_config(BASE.replace(**{field: typo}))
    msg = str(info.value)
    assert f"Unknown {field} {typo!r}" in msg and f"Did you mean {closest!r}?" in msg
    assert f"Valid {field}s:" in msg and listed in msg


def test_unknown_name_without_close_match_still_lists_names():
    with pytest.raises(ConfigError, match=r"Unknown defense 'zzzz'\. Valid defenses: .*fedavg.*lfighter"):
        validate_config(BASE.replace(defense="zzzz"))


def test_cli_reports_config_errors(capsys):
    assert main(["run", "--benchmark", "mnist-iid", "--defense", "lfightr", "--no-progress"]) == 2
    assert "Did you mean 'lfighter'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1, math.nan, "0.3"])
def test_attacker_ratio_outside_zero_one(ratio):
    bad(r"attacker_ratio must be in \[0, 1\)", attacker_ratio=ratio)


def test_source_equal_to_target():
    bad("source_class and target_class are both 3; choose two different classes",
        source_class=3, target_class=3)


@pytest.mark.parametrize("field", ["source_class", "target_class"])
def test_negative_class(field):
    bad(f"{field} must be a non-negative class index", **{field: -1})


@pytest.mark.parametrize("field", ["source_class", "target_class"])
def test_class_out_of_range_for_the_dataset(field):
    other = "target_class" if field == "source_class" else "source_class"
    cfg = ExperimentConfig(dataset="mnist", num_peers=4, **{field: 3, other: 0})
    with pytest.raises(ConfigError, match=rf"{field}=3 is out of range: toy has classes 0\.\.2"):
        build_experiment(cfg, dataset=toy(3))


@pytest.mark.parametrize("peers", [1, 0, -3, 2.5])
def test_fewer_than_two_peers(peers):
    bad("num_peers must be an integer of at least 2", num_peers=peers)


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.01, math.nan])
def test_fraction_outside_zero_one(fraction):
    bad(r"fraction \(C\) must be in \(0, 1\]", fraction=fraction)


@pytest.mark.parametrize("field", ["batch_size", "local_epochs", "rounds", "eval_every"])
@pytest.mark.parametrize("value", [0, -1, 2.0, True])
def test_non_positive_integers(field, value):
    bad(f"{field} must be a positive integer, got {value!r}", **{field: value})


@pytest.mark.parametrize("field,value,match", [
    ("lr", 0.0, "lr must be a positive finite number"),
    ("lr", math.inf, "lr must be a positive finite number"),
    ("momentum", 1.0, r"momentum must be in \[0, 1\)"),
    ("weight_decay", -1e-4, "weight_decay must be a non-negative"),
    ("seed", "0", "seed must be an integer"),
    ("dirichlet_alpha", 0.0, "dirichlet_alpha must be a positive"),
    ("train_subset", 0, "train_subset must be a positive integer or None"),
    ("partition", "noniid", "Unknown partition 'noniid'"),
    ("optimizer", "rmsprop", "Unknown optimizer"),
    ("backend", "jax", "Unknown backend"),
])
def test_other_settings(field, value, match):
    changes = {field: value}
    if field == "dirichlet_alpha":
        changes["partition"] = "dirichlet"
    bad(match, **changes)


# ----------------------------------------------------------------------------- rules


@pytest.mark.parametrize("rule", ["krum", "multi-krum"])
def test_krum_needs_n_greater_than_2f_plus_2(rule):
    # 10 peers, 40 % attackers: f = 4, 10 <= 2 * 4 + 2
    with pytest.raises(ConfigError) as info:
        validate_config(BASE.replace(defense=rule, num_peers=10, attacker_ratio=0.4))
    msg = str(info.value)
    assert f"defense {rule!r} cannot run with n=10 peers per round" in msg
    assert "f=4 expected attackers" in msg and "n > 2f + 2" in msg
    validate_config(BASE.replace(defense=rule, num_peers=11, attacker_ratio=0.4))  # 11 > 10: fine


def test_krum_size_counts_the_peers_of_a_round():
    # 20 peers, C = 0.3: n = 6 per round, 4 attackers of 20 -> f = round(4 * 6 / 20) = 1: 6 > 4
    validate_config(BASE.replace(defense="krum", num_peers=20, fraction=0.3, attacker_ratio=0.2))
    with pytest.raises(ConfigError, match="n=4 peers per round"):  # C = 0.2: n = 4 <= 2 * 1 + 2
        validate_config(BASE.replace(defense="krum", num_peers=20, fraction=0.2, attacker_ratio=0.3))


def test_krum_in_the_extreme_split_is_checked_once_the_data_is_split():
    # 3 classes x 2 peers; 99 % of the 2 source holders -> 2 attackers, f = 2: n = 6 <= 6
    cfg = ExperimentConfig(partition="extreme", num_peers=6, defense="krum", attacker_ratio=0.99,
                           source_class=0, target_class=1, batch_size=16)
    validate_config(cfg)  # the attacker count of the extreme split needs the data
    with pytest.raises(ConfigError, match=r"n=6 peers per round .* f=2 expected attackers"):
        build_experiment(cfg, dataset=toy(3))


def test_defense_arguments_are_checked():
    with pytest.raises(ConfigError, match=r"defense_kwargs \['k'\] are not arguments of the defense "
                                          r"'multi-krum'; it accepts: m"):
        validate_config(BASE.replace(defense="multi-krum", defense_kwargs={"k": 3}))
    with pytest.raises(ConfigError, match="eps must be a positive finite number"):
        validate_config(BASE.replace(defense="flame", defense_kwargs={"eps": -1}))


def test_partition_impossible_for_the_data():
    cfg = ExperimentConfig(partition="extreme", num_peers=4, source_class=0, target_class=1)
    with pytest.raises(ConfigError, match="multiple of the number of classes"):
        build_experiment(cfg, dataset=toy(3))


# ----------------------------------------------------------------------------- device


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_but_absent():
    bad("device='cuda' was asked for but CUDA is not available on this machine; use device='cpu'",
        device="cuda")
    bad("device='cuda:1' was asked for but CUDA is not available", device="cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_index_out_of_range():
    bad("does not exist: this machine has", device=f"cuda:{torch.cuda.device_count()}")


def test_malformed_device():
    bad("device='gpu' is not a device name", device="gpu")


# ----------------------------------------------------------------------------- run-level


def test_run_arguments(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint_every must be an integer >= 0"):
        run_experiment(BASE, results_dir=tmp_path, checkpoint_every=-1)
    with pytest.raises(ConfigError, match="stop_after must be None or an integer >= 1"):
        run_experiment(BASE, results_dir=tmp_path, stop_after=0)


def test_errors_leave_no_run_folder(tmp_path):
    with pytest.raises(ConfigError):
        run_experiment(BASE.replace(defense="krum", num_peers=4, attacker_ratio=0.25), results_dir=tmp_path)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ----------------------------------------------------------------------------- data


def test_data_missing_says_what_and_where(tmp_path):
    cfg = BASE.replace(dataset_kwargs={"download": False})
    with pytest.raises(DataMissingError) as info:
        run_experiment(cfg, data_root=tmp_path / "data", results_dir=tmp_path / "results")
    msg = str(info.value)
    assert "MNIST data not found" in msg and str(tmp_path / "data" / "MNIST" / "raw") in msg
    for name in MNIST_FILES:
        assert name in msg
    assert "FLHELPERS_DATA" in msg
    assert not (tmp_path / "results" / "runs").exists()


def test_unreadable_data_file(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / name).write_bytes(b"\x00\x00\x08\x03 truncated")
    with pytest.raises(DataCorruptError, match="Could not read the MNIST files .* Delete the damaged files"):
        run_experiment(BASE.replace(dataset_kwargs={"download": False}), data_root=tmp_path,
                       results_dir=tmp_path / "results")


def test_checksum_mismatch_on_a_downloaded_archive(tmp_path):
    archive = tmp_path / "served.tar.gz"
    archive.write_bytes(b"half of an archive")
    dest = tmp_path / "data" / "imdb.tar.gz"
    with pytest.raises(ChecksumError) as info:
        download_url(archive.as_uri(), dest, sha256="0" * 64)
    msg = str(info.value)
    assert f"Checksum mismatch for {dest}" in msg and "expected sha256 " + "0" * 64 in msg
    assert "delete it and retry" in msg
    assert not Path(str(dest) + ".part").exists()
