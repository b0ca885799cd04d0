"""What a run is built from (:class:`Experiment`), built and checked before any training.

:func:`build_experiment` validates the config and builds the data, partition, attackers, model,
defense and trainer, raising :class:`~flhelpers.config.ConfigError` (or the loaders' errors) for
a setting that cannot work before a round runs. Also here: the record of a built run
(:func:`experiment_record`, its ``config.json``), the check that a stored run was computed on the
data the data root holds now (:func:`check_same_data`), and what a peer answers the server when
asked for its loss of the global model (:func:`global_loss_per_peer`, user elimination).
:mod:`flhelpers.fl.engine` runs the rounds and re-exports these names.
"""

from __future__ import annotations

import platform
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flhelpers._version import __version__
from flhelpers.attacks import Attack, select_attackers
from flhelpers.attacks.base import split_mix_option
from flhelpers.config import (ConfigError, ExperimentConfig, check_defense_size, check_honest_peer_left,
                              expected_attackers, make_defense, peers_per_round, validate_config)
from flhelpers.data import load_dataset
from flhelpers.data.base import DataMissingError, FLDataset, dataset_record
from flhelpers.data.partition import Partition, make_partition
from flhelpers.defenses.base import Defense
from flhelpers.fl.device import configure_torch, runtime_record
from flhelpers.fl.training import PeerData, SequentialTrainer
from flhelpers.models import build_model, loss_fn
from flhelpers.params import ParamLayout, layout_of, load_flat_buffers, load_flat_params
from flhelpers.registry import ATTACKS
from flhelpers.results import CONFIG, read_json
from flhelpers.seeding import derive_seed


@dataclass
class Experiment:
    """Everything a run is built from; made by :func:`build_experiment` before any training."""

    config: ExperimentConfig
    dataset: FLDataset
    partition: Partition
    attackers: np.ndarray
    attack: Attack
    defense: Defense
    model: torch.nn.Module
    layout: ParamLayout
    peers: list[PeerData]
    device: torch.device
    trainer: Any = None
    expected_attackers: int = 0
    #: (training, test) samples of the clean data set the run used, before any poisoned copies
    data_sizes: tuple[int, int] = (0, 0)
    #: :func:`flhelpers.data.base.dataset_record` of that data set (config.json's ``data``)
    data_record: dict[str, Any] = field(default_factory=dict)

    @property
    def is_attacker(self) -> np.ndarray:
        mask = np.zeros(self.config.num_peers, dtype=bool)
        mask[self.attackers] = True
        return mask


def make_trainer(exp: Experiment):
    """The training backend named by ``config.backend``."""
    backend = exp.config.backend
    if backend in ("vectorized", "auto"):
        try:
            from flhelpers.fl.vectorized import make_vectorized_trainer
        except ImportError:
            make_vectorized_trainer = None
        if make_vectorized_trainer is not None:
            trainer = make_vectorized_trainer(exp, strict=(backend == "vectorized"))
            if trainer is not None:
                return trainer
        elif backend == "vectorized":
            raise ValueError("The vectorized backend is not available in this version of flhelpers.")
    return SequentialTrainer(exp.model, exp.config, exp.dataset, exp.device)


def make_attack(cfg: ExperimentConfig, num_classes: int) -> Attack:
    """The attack ``cfg.attack`` built with ``cfg.attack_kwargs``; the option every attack takes,
    ``mix`` (:func:`flhelpers.attacks.base.split_mix_option`), sets :attr:`Attack.mix`."""
    try:
        mix, kwargs = split_mix_option(cfg.attack_kwargs)
        attack = ATTACKS.get(cfg.attack)(source_class=cfg.source_class, target_class=cfg.target_class,
                                         num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"attack {cfg.attack!r} with attack_kwargs {cfg.attack_kwargs}: {exc}") from exc
    attack.mix = mix
    return attack


def _subset(cfg: ExperimentConfig, dataset: FLDataset) -> FLDataset:
    """The seeded ``train_subset`` / ``test_subset`` of ``dataset`` the run uses (itself without them)."""
    if cfg.train_subset or cfg.test_subset:
        return dataset.subset(cfg.train_subset, cfg.test_subset, seed=derive_seed(cfg.seed, "subset") % 2**31)
    return dataset


def build_experiment(cfg: ExperimentConfig, data_root: str | Path | None = None,
                     dataset: FLDataset | None = None) -> Experiment:
    """Validate ``cfg`` and build data, partition, attackers, model and defense (no training).

    Raises :class:`~flhelpers.config.ConfigError` for a setting that cannot work, and the data
    loaders' ``DataMissingError`` / ``DataCorruptError`` for absent or damaged data, all before
    any training.
    """
    validate_config(cfg)
    configure_torch(cfg)  # precision and deterministic mode, before anything touches the device
    defense = make_defense(cfg)
    if dataset is None:
        dataset = load_dataset(cfg.dataset, data_root, **cfg.dataset_kwargs)
    for name, c in (("source_class", cfg.source_class), ("target_class", cfg.target_class)):
        if c >= dataset.num_classes:
            raise ConfigError(
                f"{name}={c} is out of range: {dataset.name} has classes 0..{dataset.num_classes - 1}.")
    check_subset_sizes(cfg, dataset, data_root)
    dataset = _subset(cfg, dataset)
    data = dataset_record(dataset)  # the clean data the run trains and is tested on
    attack = make_attack(cfg, dataset.num_classes)
    scheme = "dirichlet" if cfg.partition == "mild" else cfg.partition
    try:
        partition = make_partition(dataset.train_y, cfg.num_peers, scheme,
                                   seed=derive_seed(cfg.seed, "partition"), alpha=cfg.dirichlet_alpha,
                                   min_samples=cfg.batch_size, num_classes=dataset.num_classes)
        ratio = cfg.attacker_ratio if cfg.attack != "none" else 0.0
        attackers = select_attackers(ratio, partition, cfg.source_class, scheme,
                                     attack.needs_source_holders, seed=derive_seed(cfg.seed, "attackers"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    check_honest_peer_left(len(attackers), cfg)
    if cfg.poisoned_rounds > 0 and len(attackers) == 0:
        raise ConfigError(f"poisoned_rounds={cfg.poisoned_rounds} averages the attackers' updates, but "
                          f"attacker_ratio={cfg.attacker_ratio} selects no attacker among {cfg.num_peers} peers "
                          f"({cfg.partition} split); raise attacker_ratio or set poisoned_rounds=0.")
    expected = expected_attackers(len(attackers), cfg)
    check_defense_size(defense, cfg, peers_per_round(cfg), expected)
    device = torch.device(cfg.device)
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    num_outputs = 1 if cfg.loss == "bce_with_logits" else dataset.num_classes
    model = build_model(cfg.model, num_outputs, **dataset.meta).to(device)
    check_batchnorm_batches(cfg, model, partition.sizes())
    layout = layout_of(model)
    if device.type != "cpu":
        dataset = FLDataset(dataset.name, dataset.train_x.to(device), dataset.train_y.to(device),
                            dataset.test_x.to(device), dataset.test_y.to(device), dataset.num_classes,
                            dataset.class_names, dataset.mean, dataset.std, dataset.meta)
    is_att = set(attackers.tolist())
    peers = []
    for k, idx in enumerate(partition.indices):
        idx = idx.to(device)
        labels = dataset.train_y[idx]
        if k in is_att:
            labels = attack.poison_labels(labels)
        peers.append(PeerData(k, idx, labels))
    clean = (int(len(dataset.train_y)), int(len(dataset.test_y)))  # before any poisoned copies
    # data poisoning beyond relabelling (partial/several-pair flips, backdoor images); no-op otherwise
    dataset, peers = attack.poison_data(dataset, peers, attackers, cfg.seed)
    exp = Experiment(cfg, dataset, partition, attackers, attack, defense, model, layout, peers,
                     device, expected_attackers=expected, data_sizes=clean, data_record=data)
    exp.trainer = make_trainer(exp)
    return exp


def check_subset_sizes(cfg: ExperimentConfig, dataset: FLDataset, data_root: str | Path | None = None) -> None:
    """Refuse ``train_subset`` / ``test_subset`` larger than the data set's split.

    :meth:`FLDataset.subset` keeps a whole split when asked for more than it holds, so such a run
    would train on fewer samples than its configuration (and its run id) says.
    """
    for name, asked, held in (("train_subset", cfg.train_subset, len(dataset.train_y)),
                              ("test_subset", cfg.test_subset, len(dataset.test_y))):
        if asked is not None and asked > held:
            where = f" (data root {data_root})" if data_root is not None else ""
            raise ConfigError(f"{name}={asked} asks for more samples than the {held} that {dataset.name}{where} "
                              f"holds; use {name} <= {held}, or {name}=null for all of them.")


def check_batchnorm_batches(cfg: ExperimentConfig, model: torch.nn.Module, sizes: np.ndarray) -> None:
    """Refuse, before training, a run in which a model with BatchNorm would train on a batch of one.

    BatchNorm in training mode needs more than one value per channel: ResNet18 on 32 x 32 images
    has a 1 x 1 map in ``layer4``, so one sample is one value and the step raises deep inside a
    round. A batch of one happens when ``batch_size`` is 1, or when ``drop_last`` is False and a
    peer holds ``n_k = q B + 1`` samples (its last batch of every epoch).
    """
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    if cfg.batch_size == 1:
        raise ConfigError(f"batch_size=1 cannot train model {cfg.model!r}: its BatchNorm layers need "
                          f"at least 2 samples a batch; use batch_size >= 2.")
    if cfg.drop_last:
        return
    rest = np.asarray(sizes) % cfg.batch_size
    tiny = [int(k) for k in np.flatnonzero((rest > 1) & (rest < min(8, cfg.batch_size)))]
    if tiny:
        warnings.warn(f"{len(tiny)} peer(s) end every local epoch on a batch of {int(rest[tiny].min())}-"
                      f"{int(rest[tiny].max())} samples through {cfg.model!r}'s BatchNorm (drop_last=False); "
                      f"such steps made whole CIFAR10 rounds collapse to one class "
                      f"(results/reference/medium/last-batch/summary.md): consider drop_last=True.",
                      RuntimeWarning, stacklevel=3)
    ones = [int(k) for k in np.flatnonzero(rest == 1)]
    if ones:
        shown = ", ".join(f"peer {k} ({int(sizes[k])} samples)" for k in ones[:5])
        more = f" and {len(ones) - 5} more" if len(ones) > 5 else ""
        raise ConfigError(
            f"{shown}{more} would end every local epoch on a batch of 1 sample (batch_size="
            f"{cfg.batch_size}, drop_last=False), which model {cfg.model!r}'s BatchNorm cannot train "
            f"on; set drop_last=True (as the authors' code does) or another batch_size.")


def experiment_record(exp: Experiment) -> dict[str, Any]:
    """The run's ``config.json``: its config and run id, what was built from it and where it ran."""
    return {
        "config": exp.config.to_dict(),
        "run_id": exp.config.run_id(),
        "attackers": exp.attackers.tolist(),
        "expected_attackers": exp.expected_attackers,
        # which training set the run used (the data root may hold more or less than the config asks)
        "train_samples": exp.data_sizes[0],
        "test_samples": exp.data_sizes[1],
        # what was read: checked before the run is reused or resumed (not in the run id)
        "data": exp.data_record,
        "partition_sizes": exp.partition.sizes().tolist(),
        "partition_histogram": exp.partition.histogram.tolist(),
        "num_parameters": exp.layout.dim,
        "trainer": getattr(exp.trainer, "name", type(exp.trainer).__name__),
        "backend_reason": getattr(exp, "backend_reason", "") or f"backend={exp.config.backend!r}",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "flhelpers": __version__},
        "torch_num_threads": torch.get_num_threads(),
        "runtime": runtime_record(exp),  # device, CUDA/cuDNN, precision flags, mode, chunk (not in the run id)
    }


@torch.no_grad()
def global_loss_per_peer(exp: Experiment, peer_ids: np.ndarray, global_params: torch.Tensor,
                         global_buffers: torch.Tensor) -> np.ndarray:
    """Each peer's answer to the server's question of user elimination
    (:attr:`flhelpers.defenses.base.ServerView.peer_losses`): the mean loss of the global model on
    its local data, with its own (possibly flipped) labels, ``(len(peer_ids),)`` float64."""
    cfg, model, data = exp.config, exp.model, exp.dataset
    load_flat_params(model, global_params)
    if global_buffers.numel():
        load_flat_buffers(model, global_buffers)
    model.eval()
    # float64 sums on the device, read once: the float(loss) of every batch waited for the device
    totals = torch.zeros(len(peer_ids), dtype=torch.float64, device=exp.device)
    for row, k in enumerate(peer_ids):
        peer = exp.peers[int(k)]
        total = totals[row]
        for start in range(0, peer.num_samples, cfg.eval_batch_size):
            idx = peer.indices[start : start + cfg.eval_batch_size]
            xb = data.prepare(data.train_x[idx].to(exp.device))
            yb = peer.labels[start : start + cfg.eval_batch_size].to(exp.device)
            total += loss_fn(cfg.loss, model(xb), yb).double() * len(idx)
    sizes = np.array([max(exp.peers[int(k)].num_samples, 1) for k in peer_ids], dtype=np.float64)
    return totals.cpu().numpy() / sizes


class DataMismatchError(ValueError):
    """A stored run was computed on other data than the data root holds now (same config, same
    run id): reusing or resuming it would mix two data sets' numbers."""


def recorded_data(path: Path) -> dict[str, Any] | None:
    """The ``data`` record of the run's ``config.json``; ``None`` for runs written before flhelpers
    recorded it (nothing to compare) or when the file is unreadable (checked elsewhere)."""
    try:
        record = read_json(Path(path) / CONFIG)
    except (OSError, ValueError):
        return None
    data = record.get("data") if isinstance(record, dict) else None
    return data if isinstance(data, dict) and data else None


def _describe_data(record: dict[str, Any]) -> str:
    files = ", ".join(f"{k} {v:,} B" for k, v in sorted(record.get("source_files", {}).items()))
    return (f"{record.get('train_samples')} training / {record.get('test_samples')} test samples, training "
            f"SHA-256 {str(record.get('train_sha256'))[:12]}" + (f"; read from {files}" if files else ""))


def check_same_data(run_id: str, path: Path, recorded: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """Refuse a stored run whose recorded data differs from ``current`` (the data loaded now).

    Compared: the SHA-256 of the training and of the test tensors after subsetting. Runs without a
    record (written before it existed) pass: there is nothing to compare them with.

    Raises:
        DataMismatchError: naming both data sets and the fixes.
    """
    if not recorded:
        return
    if all(recorded.get(k) == current.get(k) for k in ("train_sha256", "test_sha256")):
        return
    raise DataMismatchError(
        f"Run {run_id} in {path} was computed on other data ({_describe_data(recorded)}) than the data root "
        f"gives now ({_describe_data(current)}); recompute it on this data with force=True (--force), or "
        f"use another results folder (--results-dir).")


def current_data(cfg: ExperimentConfig, data_root: str | Path | None, dataset: FLDataset | None,
                  run_id: str) -> dict[str, Any] | None:
    """:func:`dataset_record` of the data the run would use now, without building the run (the
    loaders' caches make this cheap in a grid); ``None``, with a warning, when the data cannot
    be loaded here (a machine holding results only): the stored run is then reused unchecked."""
    if dataset is None:
        from flhelpers.data import dataset_options
        from flhelpers.data import load_dataset as load
        from flhelpers.data.download import DataCorruptError

        kwargs = dict(cfg.dataset_kwargs)
        try:  # never download just to check a stored run
            if "download" in (dataset_options(cfg.dataset) or []):
                kwargs.setdefault("download", False)
        except ValueError:  # a data set not registered in this process: loading says so below
            pass
        try:
            dataset = load(cfg.dataset, data_root, **kwargs)
        except (DataMissingError, DataCorruptError, OSError, ValueError) as exc:  # absent, damaged, unknown here
            warnings.warn(f"Reusing run {run_id} without checking its data: the data cannot be loaded here "
                          f"({type(exc).__name__}: {exc}).", stacklevel=4)
            return None
    return dataset_record(_subset(cfg, dataset))


__all__ = ["DataMismatchError", "Experiment", "build_experiment", "check_batchnorm_batches", "check_same_data",
           "check_subset_sizes", "current_data", "experiment_record", "global_loss_per_peer", "make_attack", "make_trainer", "recorded_data"]
