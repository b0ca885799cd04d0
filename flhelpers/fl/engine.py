"""The FL simulation of Algorithm 1: config -> data -> peers' local training -> defense -> metrics.

:func:`run_experiment` is the one entry point. It validates the config and builds everything
(data, partition, attackers, model, defense) *before* any training, reuses a finished run
with the same config (the run id hashes it), resumes an unfinished one from its checkpoint,
and writes the results store (see :mod:`flhelpers.results`).

Runs that survive:

* **Checkpoint and resume.** Every ``checkpoint_every`` rounds (default 1; independent of
  ``eval_every``) the run saves the global model, the round, the metrics so far, the counters
  pending since the last evaluation, the defense's and the attack's state and the global
  generator states (:mod:`flhelpers.fl.checkpoint`); only the latest checkpoint is kept. Running
  the same config again continues from it. Every random draw is derived from
  ``(seed, purpose, round, peer)`` (:mod:`flhelpers.seeding`), so on CPU a resumed run writes a
  ``metrics.csv`` byte-identical to an uninterrupted run's (same machine, same torch thread
  count: float reductions depend on it). Wall times go to ``timings.csv``, not ``metrics.csv``.
* **Nothing half-written.** Every file is replaced atomically; ``summary.json`` is written
  last and marks the run finished. A finished run that is recomputed (``force``, ``on_round``)
  stays in place until the new one is complete (computed in ``runs/.<run-id>.recompute``, then
  swapped in), so a kill during the recomputation loses nothing.
* **Nothing silently wrong.** ``config.json`` records the data the run read (sample counts,
  the SHA-256 of the training and test tensors, the source files' sizes; not in the run id); a
  stored run recorded on other data is neither reused nor resumed (:class:`DataMismatchError`).
  A run folder whose ``config.json`` no longer hashes to its run id, or whose summary lacks the
  metrics digest, is recomputed with a warning. Two processes asked for the same run share it
  through the run's lock: one computes, the other waits and reuses.
* **Hostile updates** are handled by :mod:`flhelpers.fl.guards` (NaN/Inf rows rejected before
  the rule; a non-finite aggregate discarded); the global model never becomes non-finite.
"""

from __future__ import annotations

import platform
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from flhelpers._version import __version__
from flhelpers.attacks import Attack, select_attackers
from flhelpers.fl.device import configure_torch, resume_key, resume_problem, runtime_record
from flhelpers.fl.checkpoint import (CHECKPOINT, Progress, fingerprint, load_checkpoint, remove_checkpoint,
                                  restore_rng_states, rng_states, save_checkpoint)
from flhelpers.config import (ConfigError, ExperimentConfig, check_defense_size, check_honest_peer_left,
                              expected_attackers, make_defense, peers_per_round, validate_config)
from flhelpers.data import load_dataset
from flhelpers.data.base import DataMissingError, FLDataset, dataset_record
from flhelpers.defenses.base import AggregationContext, AggregationResult, Defense
from flhelpers.fl.guards import (apply_update, attackers_mean, average_buffers, buffer_weights,  # noqa: F401
                                 feasible_attackers, guarded_aggregate)
from flhelpers.metrics import attack_metrics, detection_counts, evaluate, summarize
from flhelpers.models import build_model
from flhelpers.params import ParamLayout, flatten_buffers, flatten_params, layout_of, load_flat_buffers, load_flat_params
from flhelpers.data.partition import Partition, make_partition
from flhelpers.registry import ATTACKS
from flhelpers.results import (CONFIG, METRICS, METRICS_DIGEST, SUMMARY, TIMINGS, atomic_write_csv,
                               atomic_write_json, atomic_write_text, check_results_dir, csv_text, is_finished,
                               read_finished_run, read_timings, remove_temporaries, run_dir, sha256_text)
from flhelpers.results import hold_run, publish_run, read_json, recompute_dir, recover_run
from flhelpers.seeding import derive_seed, torch_generator
from flhelpers.fl.training import PeerData, SequentialTrainer


@dataclass
class RoundRecord:
    """What a round produced, handed to ``on_round`` callbacks (plots of peers' gradients).

    ``discarded`` is True when the aggregate was non-finite and the global model did not move.
    """

    round: int
    peer_ids: np.ndarray
    is_attacker: np.ndarray
    updates: torch.Tensor
    result: AggregationResult
    context: AggregationContext
    discarded: bool = False


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


@dataclass
class RunResult:
    """A run's folder, summary, per-round metrics and resolved config.

    ``summary`` is empty for an unfinished run (``stop_after``); ``timings`` holds the per-round
    wall times (``timings.csv``); ``extra`` holds ``experiment`` for a computed run and
    ``resumed_from`` (the first round computed here) when it continued from a checkpoint.
    """

    run_id: str
    path: Path
    summary: dict[str, Any]
    metrics: pd.DataFrame
    config: ExperimentConfig
    reused: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    timings: pd.DataFrame | None = None


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


def _make_attack(cfg: ExperimentConfig, num_classes: int) -> Attack:
    try:
        return ATTACKS.get(cfg.attack)(source_class=cfg.source_class, target_class=cfg.target_class,
                                       num_classes=num_classes, **cfg.attack_kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"attack {cfg.attack!r} with attack_kwargs {cfg.attack_kwargs}: {exc}") from exc


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
    attack = _make_attack(cfg, dataset.num_classes)
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


def select_peers(cfg: ExperimentConfig, round_: int) -> np.ndarray:
    """Line 3-4 of Algorithm 1: ``m = max(C*K, 1)`` peers drawn at random (all when C = 1)."""
    m = peers_per_round(cfg)
    if m >= cfg.num_peers:
        return np.arange(cfg.num_peers)
    rng = np.random.default_rng(derive_seed(cfg.seed, "select", round_))
    return np.sort(rng.choice(cfg.num_peers, size=m, replace=False))


def screen_peers(exp: Experiment, candidates: np.ndarray, global_params: torch.Tensor,
                 global_buffers: torch.Tensor, round_: int) -> tuple[np.ndarray, np.ndarray]:
    """Let the defense drop peers *before* training (user elimination, FFL's reputation).

    A defense may define ``select_peers(candidates, experiment, global_params, global_buffers,
    round) -> kept ids``; dropped peers count as rejected in the detection metrics.
    """
    select = getattr(exp.defense, "select_peers", None)
    if select is None:
        return candidates, np.array([], dtype=np.int64)
    kept = np.sort(np.asarray(select(candidates, exp, global_params, global_buffers, round_), dtype=np.int64))
    if len(kept) == 0:
        raise RuntimeError(f"{exp.defense!r} dropped every peer in round {round_}.")
    return kept, np.setdiff1d(candidates, kept)


def aggregate_round(exp: Experiment, updates: torch.Tensor, peer_ids: np.ndarray,
                    global_params: torch.Tensor, round_: int) -> tuple[AggregationResult, AggregationContext]:
    """Build the round's context and aggregate with :func:`guarded_aggregate`."""
    cfg = exp.config
    sizes = torch.tensor([exp.peers[k].num_samples for k in peer_ids], dtype=torch.float32)
    ctx = AggregationContext(
        layout=exp.layout, num_classes=exp.dataset.num_classes, round=round_,
        peer_ids=torch.as_tensor(peer_ids), num_samples=sizes,
        expected_attackers=exp.expected_attackers, lr=cfg.lr, global_params=global_params,
        seed=derive_seed(cfg.seed, "defense", round_) % 2**31)
    return guarded_aggregate(exp.defense, updates, ctx), ctx



def train_attacked_round(exp: Experiment, peer_ids: np.ndarray, global_params: torch.Tensor,
                         global_buffers: torch.Tensor, round_: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The round's ``(K, D)`` updates and buffers: the trainer trains the data the attack hands it
    for this round (:meth:`Attack.round_peers`: clean data for an attacker sitting the round out,
    extra clean twins for camouflage), and the attack merges the rows back to one per peer
    (:meth:`Attack.merge_round`). For the paper's attacks both are the identity."""
    peers = [exp.peers[k] for k in peer_ids]
    trained = exp.attack.round_peers(peers, round_)
    updates, buffers = exp.trainer.train_round(trained, global_params, global_buffers, round_)
    return exp.attack.merge_round(updates, buffers, peers, round_, exp.layout)


# ----------------------------------------------------------------------------- the run


def _config_record(exp: Experiment) -> dict[str, Any]:
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


@dataclass
class _State:
    """The mutable state of a run between rounds."""

    next_round: int
    global_params: torch.Tensor
    global_buffers: torch.Tensor
    progress: Progress


def _resume(exp: Experiment, path: Path, run_id: str) -> tuple[_State | None, dict[str, Any]]:
    """The state saved in the run's checkpoint, restored into ``exp``; ``None`` when there is none."""
    state = load_checkpoint(path, run_id)
    if state is None:
        return None, {}
    expected = fingerprint(exp.partition.indices, exp.attackers)
    if state.get("fingerprint") != expected:
        warnings.warn(f"Ignoring checkpoint of run {run_id}: the partition or the attackers rebuilt "
                      f"from the seed differ from the checkpoint's (the data or flhelpers changed); "
                      f"starting the run afresh.", stacklevel=3)
        return None, {}
    if state.get("num_threads") != torch.get_num_threads():
        warnings.warn(f"Resuming run {run_id} with {torch.get_num_threads()} torch threads; it was "
                      f"checkpointed with {state.get('num_threads')}. Float sums may differ in the last "
                      f"digits from an uninterrupted run.", stacklevel=3)
    problem = resume_problem(state.get("runtime"), resume_key(exp))
    if problem:
        raise ConfigError(f"Refusing to resume run {run_id} from its checkpoint under another device or mode "
                          f"({problem}): its rounds would mix two setups' numbers. Resume it where it started, "
                          f"or start it afresh with force=True (--force).")
    exp.defense.load_state_dict(state["defense"])
    exp.attack.load_state_dict(state["attack"])
    restore_rng_states(state["rng"])
    return _State(int(state["round"]) + 1, state["global_params"].to(exp.device),
                  state["global_buffers"].to(exp.device), Progress.from_state(state["progress"])), \
        {"resumed_from": int(state["round"]) + 1}


def _save(exp: Experiment, path: Path, run_id: str, st: _State) -> None:
    """Write the partial metrics and timings (for monitoring), then the checkpoint."""
    if st.progress.rows:
        atomic_write_csv(path / METRICS, pd.DataFrame(st.progress.rows))
    atomic_write_csv(path / TIMINGS, pd.DataFrame(st.progress.timings))
    save_checkpoint(path, {
        "run_id": run_id, "round": st.next_round - 1,
        "global_params": st.global_params.detach().cpu().clone(),
        "global_buffers": st.global_buffers.detach().cpu().clone(),
        "progress": st.progress.state_dict(),
        "defense": exp.defense.state_dict(), "attack": exp.attack.state_dict(),
        "rng": rng_states(), "fingerprint": fingerprint(exp.partition.indices, exp.attackers),
        "num_threads": torch.get_num_threads(), "runtime": resume_key(exp)})


def _public(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != METRICS_DIGEST}


class DataMismatchError(ValueError):
    """A stored run was computed on other data than the data root holds now (same config, same
    run id): reusing or resuming it would mix two data sets' numbers."""


def _recorded_data(path: Path) -> dict[str, Any] | None:
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


def _current_data(cfg: ExperimentConfig, data_root: str | Path | None, dataset: FLDataset | None,
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


def _reuse(cfg: ExperimentConfig, path: Path, run_id: str, data_root: str | Path | None = None,
           dataset: FLDataset | None = None) -> RunResult | None:
    """The finished run at ``path``, checked (digest, config, data); ``None`` when damaged.

    Raises:
        DataMismatchError: the run was computed on other data than the data root holds now.
    """
    try:
        summary, metrics = read_finished_run(path)
    except ValueError as exc:
        warnings.warn(f"Recomputing run {run_id}: {exc}", stacklevel=3)
        return None
    recorded = _recorded_data(path)
    if recorded:
        current = _current_data(cfg, data_root, dataset, run_id)
        if current is not None:
            check_same_data(run_id, path, recorded, current)
    remove_checkpoint(path)  # a crash after the summary was written can leave one behind
    return RunResult(run_id, path, _public(summary), metrics, cfg, reused=True, timings=read_timings(path))


def run_experiment(cfg: ExperimentConfig, data_root: str | Path | None = None,
                   results_dir: str | Path = "results", force: bool = False, progress: bool = True,
                   dataset: FLDataset | None = None, checkpoint_every: int = 1,
                   on_round: Callable[[RoundRecord], None] | None = None,
                   stop_after: int | None = None,
                   after_round: Callable[[Progress], bool] | None = None) -> RunResult:
    """Run (or reuse, or resume) the experiment ``cfg`` and return its results.

    * A finished run with this config (its ``summary.json`` exists and matches its
      ``metrics.csv``) is returned as it is (``reused=True``), unless ``force`` or ``on_round``.
    * An unfinished run with a checkpoint continues from the round after it, unless ``force``;
      ``on_round`` then sees only the rounds computed in this call (``extra["resumed_from"]``
      is the first of them). A finished run recomputed for ``on_round`` starts at round 0.
    * Otherwise the run starts at round 0.

    A finished run recomputed (``force``, ``on_round``) stays in place, readable and reusable,
    until the new one is complete: the new one is computed in the hidden sibling folder
    ``runs/.<run-id>.recompute`` and swapped in at the end (:func:`flhelpers.results.publish_run`),
    so a kill or an error during the recomputation loses nothing. A stored run recorded on other
    data than the data root holds now (``config.json``'s ``data``: the SHA-256 of the training
    and test tensors) is neither reused nor resumed (:class:`DataMismatchError`) unless ``force``.

    The run holds ``runs/<run-id>.lock`` while it computes (:func:`flhelpers.results.hold_run`):
    a second process asked for the same run waits, with a warning naming the holder, and then
    reuses (or resumes) what the first wrote. A caller that already holds the lock in this
    thread (``claim_run`` around the call) is not made to wait for itself.

    Args:
        cfg: the configuration; its hash is the run id.
        data_root: where the data sets are (argument, else ``$FLHELPERS_DATA``, else ``./data``).
        results_dir: the results store's root (a folder path; ``None``, a file or, for a run to
            compute, a read-only folder raise a ConfigError before any data is loaded).
        force: recompute from round 0 even when a finished run or a checkpoint exists.
        progress: show a tqdm bar over rounds.
        dataset: an already loaded data set (skips loading).
        checkpoint_every: rounds between checkpoints (0 disables checkpointing); independent of
            ``cfg.eval_every``.
        on_round: called after every aggregation with a :class:`RoundRecord`.
        stop_after: stop after this many rounds (unfinished, checkpointed unless
            ``checkpoint_every == 0``): for tests and demos. A finished run recomputed so stays
            finished; the stopped recomputation is in ``runs/.<run-id>.recompute`` (the
            result's ``path``).
        after_round: called at the end of every round with the run's :class:`Progress` (metrics
            rows and timings so far, this round's included); returning True stops the run there,
            as ``stop_after`` does (a budgeted script writes them out and stops when time is up).

    Raises:
        DataMismatchError: the stored run was computed on other data (see above).
    """
    check_results_dir(results_dir, writable=False)  # None, a file: one clear line before the lock
    run_id = cfg.run_id()
    path = run_dir(results_dir, run_id)
    if force or on_round is not None or not is_finished(path):  # a run to compute needs a writable store:
        check_results_dir(results_dir)  # said before the lock creates runs/ (root may write anywhere)
    with hold_run(results_dir, run_id):
        recover_run(path)  # a swap of a recomputed run that a kill interrupted
        return _run_experiment(cfg, data_root, results_dir, force, progress, dataset, checkpoint_every,
                               on_round, stop_after, after_round)


def _run_experiment(cfg: ExperimentConfig, data_root: str | Path | None = None,
                    results_dir: str | Path = "results", force: bool = False, progress: bool = True,
                    dataset: FLDataset | None = None, checkpoint_every: int = 1,
                    on_round: Callable[[RoundRecord], None] | None = None,
                    stop_after: int | None = None,
                    after_round: Callable[[Progress], bool] | None = None) -> RunResult:
    """:func:`run_experiment` inside the run's lock."""
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be an integer >= 0 (0: no checkpoints), got {checkpoint_every!r}.")
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int)
                                   or stop_after < 1):
        raise ConfigError(f"stop_after must be None or an integer >= 1, got {stop_after!r}.")
    check_results_dir(results_dir, writable=False)  # None, a file: one clear line before anything else
    run_id = cfg.run_id()
    path = run_dir(results_dir, run_id)
    if is_finished(path) and not force and on_round is None:
        reused = _reuse(cfg, path, run_id, data_root, dataset)
        if reused is not None:
            return reused
    check_results_dir(results_dir)  # a run to compute must be writable: say so before loading data
    exp = build_experiment(cfg, data_root, dataset)
    final = path
    if is_finished(final):  # recomputed beside the finished run, which stays until the new one is complete
        path = recompute_dir(final)
        shutil.rmtree(path, ignore_errors=True)
    elif not force and (path / CHECKPOINT).is_file():  # resuming: only on the data it started on
        check_same_data(run_id, path, _recorded_data(path), exp.data_record)
    path.mkdir(parents=True, exist_ok=True)
    remove_temporaries(path)
    (path / SUMMARY).unlink(missing_ok=True)  # from here on the folder holds an unfinished run
    if force:
        remove_checkpoint(path)
    atomic_write_json(path / CONFIG, _config_record(exp))

    st, extra = (None, {}) if force or path != final else _resume(exp, path, run_id)
    if st is None:
        st = _State(0, flatten_params(exp.model), flatten_buffers(exp.model), Progress())
    is_attacker = exp.is_attacker
    bar = tqdm(range(st.next_round, cfg.rounds), desc=f"{cfg.benchmark} {cfg.defense} {cfg.attacker_ratio:.0%}",
               disable=not progress, initial=st.next_round, total=cfg.rounds, leave=False)
    for r in bar:
        candidates = select_peers(cfg, r)
        t0 = time.perf_counter()
        peer_ids, _ = screen_peers(exp, candidates, st.global_params, st.global_buffers, r)
        poisoned = r < cfg.poisoned_rounds  # the defense's hooks ran; its choice is not applied
        if poisoned:
            peer_ids = candidates
        updates, buffers = train_attacked_round(exp, peer_ids, st.global_params, st.global_buffers, r)
        updates = exp.attack.poison_updates(
            updates, torch.as_tensor(is_attacker[peer_ids]), r,
            torch_generator(cfg.seed, "attack", r), exp.layout)
        sent = updates  # as the peers sent them, before a defense's transform
        transform = getattr(exp.defense, "transform_updates", None)
        if transform is not None:
            updates = transform(updates, peer_ids, is_attacker[peer_ids], r)
        t1 = time.perf_counter()
        result, ctx = aggregate_round(exp, updates, peer_ids, st.global_params, r)
        verdict = result.accepted  # the defense's, for the detection counts
        if poisoned:  # ExperimentConfig.poisoned_rounds: the attackers' FedAvg is the step
            result = attackers_mean(sent, torch.as_tensor(is_attacker[peer_ids]), ctx.num_samples, result)
        st.global_params, discarded = apply_update(st.global_params, result)
        if not discarded:
            st.global_buffers = average_buffers(st.global_buffers, buffers, buffer_weights(result, ctx.num_samples),
                                                result.accepted)
        t2 = time.perf_counter()
        if on_round is not None:
            on_round(RoundRecord(r, peer_ids, is_attacker[peer_ids], updates, result, ctx, discarded))
        in_round = np.isin(candidates, peer_ids)
        accepted_all = np.zeros(len(candidates), dtype=bool)
        accepted_all[in_round] = verdict.cpu().numpy()[np.searchsorted(peer_ids, candidates[in_round])]
        st.progress.add_round(detection_counts(accepted_all, is_attacker[candidates]),
                              int(result.info.get("non_finite", 0)), discarded)
        st.next_round = r + 1
        last = r == cfg.rounds - 1
        eval_time = 0.0
        if (r + 1) % cfg.eval_every == 0 or last:
            t3 = time.perf_counter()
            load_flat_params(exp.model, st.global_params)
            if st.global_buffers.numel():
                load_flat_buffers(exp.model, st.global_buffers)
            ev = evaluate(exp.model, exp.dataset, cfg.loss, cfg.source_class, cfg.target_class,
                          cfg.eval_batch_size, exp.device)
            st.progress.rows.append({"round": r, **ev.as_row(), **attack_metrics(
                                         exp.model, exp.dataset, exp.attack, cfg.loss, cfg.eval_batch_size,
                                         exp.device), **st.progress.take_pending(),
                                     **{f"cum_{k}": v for k, v in st.progress.cum.items()},
                                     "accepted": int(verdict.sum()),
                                     # privacy spent so far, when the rule is differentially private
                                     **{k: result.info[k] for k in ("epsilon", "delta")
                                        if k in result.info}})
            eval_time = time.perf_counter() - t3
            bar.set_postfix(acc=f"{ev.accuracy:.3f}", src=f"{ev.source_accuracy:.3f}",
                            asr=f"{ev.attack_success_rate:.3f}")
        st.progress.timings.append({"round": r, "train_time": t1 - t0, "aggregation_time": t2 - t1,
                                    "eval_time": eval_time})
        asked = after_round is not None and bool(after_round(st.progress))  # called after the last round too
        stopping = not last and (asked or (stop_after is not None and r + 1 >= stop_after))
        if checkpoint_every and not last and ((r + 1) % checkpoint_every == 0 or stopping):
            _save(exp, path, run_id, st)
        if stopping:
            bar.close()
            return RunResult(run_id, path, {}, pd.DataFrame(st.progress.rows), cfg,
                             extra={**extra, "unfinished": True, "next_round": r + 1, "experiment": exp},
                             timings=pd.DataFrame(st.progress.timings))
    bar.close()
    return _publish(_finish(exp, path, run_id, st, extra), final)


def _publish(result: RunResult, final: Path) -> RunResult:
    """Swap a finished run recomputed in :func:`flhelpers.results.recompute_dir` into its place."""
    if result.path != final:
        publish_run(result.path, final)
        result.path = final
    return result


def _finish(exp: Experiment, path: Path, run_id: str, st: _State, extra: dict[str, Any]) -> RunResult:
    """Write metrics.csv, timings.csv, then summary.json (the finished mark), then drop the checkpoint."""
    metrics = pd.DataFrame(st.progress.rows)
    timings = pd.DataFrame(st.progress.timings)
    summary = summarize(metrics, timings=timings)
    text = csv_text(metrics)
    atomic_write_text(path / METRICS, text)
    atomic_write_csv(path / TIMINGS, timings)
    # in summarize()'s key order, so a reused run's summary has the order of a fresh one
    atomic_write_json(path / SUMMARY, {**summary, METRICS_DIGEST: sha256_text(text)}, sort_keys=False)
    remove_checkpoint(path)
    return RunResult(run_id, path, summary, metrics, exp.config, extra={**extra, "experiment": exp},
                     timings=timings)
