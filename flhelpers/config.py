"""Experiment configuration, the paper's benchmarks as presets, and validation before training.

:func:`benchmark_config` gives the paper's hyperparameters (the paper's setup) for
``profile="paper"``, a ``medium`` profile (the paper's structure with fewer rounds and local
epochs, minutes per run on 2 CPU cores) and a small ``quick`` profile that runs in minutes on 2
CPU cores and still shows the attack's effect. Any field can be overridden.

:func:`validate_config` checks every setting that can be checked without data and raises a
:class:`ConfigError` that names the problem and the fix, before any training starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from flhelpers.presets import BENCHMARKS, MEDIUM, QUICK
from flhelpers.registry import ATTACKS, DATASETS, DEFENSES, MODELS, Registry

PROFILES = ("paper", "medium", "quick")
#: bumped when a code change alters the numbers of a configuration (see ExperimentConfig.run_id)
RESULTS_VERSION = 3  # 3: FoolsGold pardoning with a zero diagonal (Fung et al.)


#: Fields added after results version 3, each with the value that reproduces the behaviour
#: before it existed; at that value a field is left out of the run id (ExperimentConfig.run_id).
LEGACY_VALUES: dict[str, Any] = {"drop_last": False, "poisoned_rounds": 0, "precision": "float32",
                                 "deterministic": False, "peers_per_step": None}

#: Attack keyword arguments whose default changed after runs were computed: attack name ->
#: {argument: its new default}. A config that does not pass such an argument enters the run id
#: with the new default written out (ExperimentConfig.run_id), so its id differs from the one
#: the same config had when the absent argument meant the old behaviour, and a run computed
#: then is never reused as one of the new behaviour. A config passing the argument explicitly
#: hashes the same. ALIE's ``statistics``: absent meant "honest" (omniscient), now
#: "attackers" (Baruch et al.); no committed run used ALIE, so no committed id changes.
HASHED_KWARG_DEFAULTS: dict[str, dict[str, Any]] = {"alie": {"statistics": "attackers"}}

#: the local training's compute precisions (``ExperimentConfig.precision``)
PRECISIONS = ("float32", "bfloat16")


class ConfigError(ValueError):
    """A setting that cannot work; the message names the setting and the fix."""


def _plain_numbers(value: Any) -> Any:
    """``value`` with every numpy scalar (integer, float, bool) turned into the Python number it
    holds (``.item()``), through dicts, lists and tuples; ``value`` itself when it holds none."""
    if isinstance(value, np.generic) and isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, dict):
        items = {k: _plain_numbers(v) for k, v in value.items()}
        return items if any(items[k] is not value[k] for k in value) else value
    if isinstance(value, (list, tuple)):
        items = [_plain_numbers(v) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return items if isinstance(value, list) else tuple(items)
    return value


@dataclass
class ExperimentConfig:
    """Everything that determines a run's numbers (the run id hashes it).

    Attributes follow the paper's names: ``num_peers`` (K), ``fraction`` (C), ``rounds`` (T),
    ``local_epochs`` (E), ``batch_size`` (BS), ``lr`` (eta), ``attacker_ratio``,
    ``source_class`` and ``target_class``.

    ``drop_last``: each local epoch trains on ``floor(n_k / B)`` full batches and drops the last
    incomplete one, as the authors' peers do (``DataLoader(..., shuffle=True, drop_last=True)``
    in ``src/environment_federated.py``, ``participant_update``); the paper is silent. False
    (the default, this library's behaviour before the field existed) trains on the short last
    batch too, ``ceil(n_k / B)`` steps an epoch. The presets set it per benchmark and profile
    (:mod:`flhelpers.presets`).

    ``precision`` (default ``"float32"``): the local training's forward pass and loss in float32,
    or under ``torch.autocast(dtype=torch.bfloat16)`` with ``"bfloat16"`` (both backends:
    :func:`flhelpers.fl.training.training_autocast`). An option for speed, never a default, because
    it changes the numbers: autocast runs convolutions and matrix products in bfloat16 (8 bits of
    mantissa) while the parameters, gradients, optimizer state, the averaged model, the defenses
    and the evaluation stay float32. Under bfloat16 the two backends agree only to bfloat16's
    precision (their reduction orders differ), so a run's numbers depend on its backend too.
    The paper and the authors' code train in float32. Speed and spread measured:
    ``docs/findings/presets.md``.

    ``poisoned_rounds`` (``k``, default 0: off): a *poisoned start*. In
    rounds ``t < k`` the server's step is FedAvg over the attackers' updates only, whatever
    the defense,

        W^{t+1} = W^t + sum_{k in A_t} n_k u_k / sum_{k in A_t} n_k,

    ``A_t`` the round's attackers with a finite update (McMahan et al.'s sample-weighted mean;
    no finite attacker update: the model does not move), so from round ``k`` on the defense
    starts from a model the attackers alone have trained. The defense still runs in those
    rounds, on every candidate's update, and its aggregate is discarded: its hooks run (a
    screening rule's choice is not applied, every candidate trains, so the attackers are always
    there to average) and a stateful rule's state advances as in any round. FoolsGold therefore
    adds all the candidates' updates of the ``k`` rounds to their histories: the honest peers'
    and the attackers' histories then span the same rounds, as in a run without the option, and
    only the starting model differs (showing it the attackers' updates alone would give the
    attackers ``k`` rounds more history than the honest peers, a second change to the
    experiment). The detection counts of those rounds are the defense's own verdict. Needs
    attackers (``attacker_ratio > 0``, an attack other than ``none``) and ``k < rounds``.
    :func:`flhelpers.fl.guards.attackers_mean` computes the step.

    ``deterministic`` (default False): on CUDA, deterministic kernels only
    (``torch.use_deterministic_algorithms(True)``, ``cudnn.deterministic``, no cuDNN benchmarking,
    ``CUBLAS_WORKSPACE_CONFIG`` set before CUDA starts; an operation without a deterministic kernel
    then raises). Off, two CUDA runs of a config may differ in the last bits (atomic-add
    reductions). The CPU runs are deterministic either way. :func:`flhelpers.fl.device.configure_torch`
    applies it; config.json records it, and a run is never resumed in the other mode.

    ``peers_per_step`` (default None): the vectorized backend's chunk, the peers trained in one
    lockstep step. The chunk changes the float rounding of the updates (measured:
    ``docs/findings/presets.md``), so None chooses it once per run from the device's *total*
    memory (:meth:`flhelpers.fl.vectorized.VectorizedTrainer.memory_chunk`), never from the memory
    free at the moment; config.json records the value used.
    """

    benchmark: str = "custom"
    dataset: str = "mnist"
    model: str = "mnist-cnn"
    partition: str = "iid"
    dirichlet_alpha: float = 1.0
    num_peers: int = 100
    fraction: float = 1.0
    rounds: int = 200
    local_epochs: int = 3
    batch_size: int = 64
    drop_last: bool = False
    precision: str = "float32"
    optimizer: str = "sgd"
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    loss: str = "cross_entropy"
    attack: str = "label_flip"
    attacker_ratio: float = 0.0
    source_class: int = 7
    target_class: int = 1
    attack_kwargs: dict[str, Any] = field(default_factory=dict)
    poisoned_rounds: int = 0
    defense: str = "fedavg"
    defense_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    eval_every: int = 1
    train_subset: int | None = None
    test_subset: int | None = None
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    backend: str = "auto"
    deterministic: bool = False
    peers_per_step: int | None = None
    profile: str = "paper"
    eval_batch_size: int = 1000

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExperimentConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            hints = ", ".join(f"{u!r} -> {closest_field(str(u), sorted(names))!r}" for u in unknown)
            raise ConfigError(f"Unknown config field(s) {unknown}; did you mean: {hints}? "
                              f"Valid fields: {sorted(names)}.")
        return cls(**d)

    def __post_init__(self) -> None:
        """Numpy scalars (``np.int64(5)`` peers from an array, ``np.float64`` ratios) become the
        Python numbers they hold, also inside the keyword-argument dicts, so they pass the checks of
        :func:`validate_config` and hash like the plain numbers (the run id would otherwise hash
        ``json.dumps(default=str)`` strings)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            plain = _plain_numbers(value)
            if plain is not value:
                setattr(self, f.name, plain)

    def replace(self, **changes: Any) -> "ExperimentConfig":
        return ExperimentConfig.from_dict({**self.to_dict(), **changes})

    def run_id(self) -> str:
        """A stable hash of the resolved configuration and the results version (16 hex digits).

        ``RESULTS_VERSION`` is bumped whenever a change to flhelpers changes the numbers a
        configuration produces, so finished runs of an older version are not reused. A field
        added later (:data:`LEGACY_VALUES`) enters the hash only when it differs from the
        behaviour flhelpers had before it existed, so runs computed before keep their ids. An attack
        argument whose default changed (:data:`HASHED_KWARG_DEFAULTS`) enters the hash with its new
        default when absent, so an id of the old behaviour is never reused for the new one.
        """
        values = {k: v for k, v in self.to_dict().items()
                  if not (k in LEGACY_VALUES and v == LEGACY_VALUES[k])}
        changed = HASHED_KWARG_DEFAULTS.get(str(self.attack).strip().lower().replace("_", "-"))
        if changed and isinstance(values.get("attack_kwargs"), dict):
            values["attack_kwargs"] = {**changed, **values["attack_kwargs"]}
        text = json.dumps({**values, "results_version": RESULTS_VERSION},
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


#: names people use for a field, so that a typo of them still finds the field (CLI and Python API)
FIELD_SYNONYMS: dict[str, str] = {
    "learning_rate": "lr", "epochs": "local_epochs", "peers": "num_peers", "clients": "num_peers",
    "num_clients": "num_peers", "alpha": "dirichlet_alpha", "ratio": "attacker_ratio", "source": "source_class",
    "target": "target_class", "split": "partition", "rule": "defense", "aggregator": "defense", "bs": "batch_size",
    "wd": "weight_decay", "subset": "train_subset"}


def closest_field(name: str, fields: Sequence[str]) -> str:
    """The valid field closest to ``name``: by spelling (``difflib``'s ratio), or through a common
    synonym such as ``learning_rate`` -> ``lr`` (:data:`FIELD_SYNONYMS`)."""
    candidates = {**{f: f for f in fields}, **{k: v for k, v in FIELD_SYNONYMS.items() if v in fields}}
    best = max(candidates, key=lambda c: difflib.SequenceMatcher(None, name.lower(), c).ratio())
    return candidates[best]


def benchmark_config(benchmark: str, profile: str = "paper", **overrides: Any) -> ExperimentConfig:
    """The preset of ``benchmark`` at ``profile`` (``paper``, ``medium`` or ``quick``), then ``overrides``."""
    key = benchmark.strip().lower()
    if key not in BENCHMARKS:
        raise ConfigError(unknown_benchmark(benchmark))
    if profile not in PROFILES:
        raise ConfigError(f"Unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}.")
    values: dict[str, Any] = {**BENCHMARKS[key], "benchmark": key, "profile": profile}
    if profile == "quick":
        values.update(QUICK[key])
    elif profile == "medium":
        values.update(MEDIUM[key])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ExperimentConfig.from_dict(values)


def unknown_benchmark(name: str) -> str:
    reg: Registry = Registry("benchmark")
    for b in BENCHMARKS:
        reg.register(b, dict)
    return reg.unknown_message(name)


def _check_name(registry: Registry, name: str) -> None:
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(registry.unknown_message(name))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_kwargs(kind: str, name: str, factory: Callable, kwargs: Any, field_name: str) -> None:
    """Refuse keyword arguments the factory does not take, listing those it does."""
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{field_name} must be a dict of keyword arguments, got {kwargs!r}.")
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                     inspect.Parameter.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{field_name} {unknown} are not arguments of the {kind} {name!r}; "
            f"it accepts: {', '.join(accepted) if accepted else 'no arguments'}."
        )


def make_defense(cfg: ExperimentConfig):
    """The rule ``cfg.defense`` built with ``cfg.defense_kwargs``; bad arguments raise ConfigError."""
    _check_name(DEFENSES, cfg.defense)
    factory = DEFENSES.get(cfg.defense)
    _check_kwargs("defense", cfg.defense, factory, cfg.defense_kwargs, "defense_kwargs")
    try:
        return factory(**cfg.defense_kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"defense_kwargs {cfg.defense_kwargs} for defense {cfg.defense!r}: {exc}") from exc


def check_defense_size(defense: Any, cfg: ExperimentConfig, peers_per_round: int, expected: int) -> None:
    """Raise ConfigError when the rule cannot run with ``n`` peers a round and ``f`` attackers.

    Krum-type rules need ``n > 2f + 2`` (Blanchard et al. 2017).
    """
    try:
        defense.validate(peers_per_round, expected)
    except ValueError as exc:
        raise ConfigError(
            f"defense {cfg.defense!r} cannot run with n={peers_per_round} peers per round "
            f"(num_peers={cfg.num_peers} x fraction={cfg.fraction}) and f={expected} expected "
            f"attackers (attacker_ratio={cfg.attacker_ratio}): {exc}"
        ) from exc


def check_honest_peer_left(num_attackers: int, cfg: ExperimentConfig) -> None:
    """Refuse a run in which every peer is an attacker (``A = round(ratio * K) >= K``).

    With no honest peer there is nothing to defend and no honest update for a rule to keep, and
    a ratio just below 1 (0.99 of 10 peers rounds to 10) would silently mean "all peers" while
    ``attacker_ratio=1`` is refused. The largest ratio that leaves one honest peer is
    ``(K - 1) / K``.
    """
    if num_attackers >= cfg.num_peers:
        raise ConfigError(f"attacker_ratio={cfg.attacker_ratio!r} makes all {cfg.num_peers} peers attackers "
                          f"(round({cfg.attacker_ratio!r} x {cfg.num_peers}) = {num_attackers}), leaving no honest "
                          f"peer; use attacker_ratio <= {(cfg.num_peers - 1) / cfg.num_peers:.4g} "
                          f"({cfg.num_peers - 1} attackers) or more peers.")


def peers_per_round(cfg: ExperimentConfig) -> int:
    """``m = max(floor(C * K), 1)``, the peers drawn each round (Algorithm 1, lines 3-4)."""
    return max(int(cfg.fraction * cfg.num_peers), 1)


def expected_attackers(num_attackers: int, cfg: ExperimentConfig) -> int:
    """``f``: the attackers expected among the ``m`` peers of a round, ``round(A * m / K)``."""
    return int(round(num_attackers * peers_per_round(cfg) / cfg.num_peers))


def validate_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device``; ConfigError for a malformed name or an absent accelerator."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"device={device!r} is not a device name; use 'cpu', 'cuda' or 'cuda:N'.") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={device!r} was asked for but CUDA is not available on this machine; "
                f"use device='cpu' or install a CUDA build of torch."
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device={device!r} does not exist: this machine has {count} CUDA "
                              f"device(s), cuda:0..cuda:{count - 1}.")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError(f"device={device!r} was asked for but MPS is not available; use 'cpu'.")
    elif dev.type != "cpu":
        raise ConfigError(f"device={device!r} is not supported; use 'cpu' or 'cuda'.")
    return dev


def validate_config(cfg: ExperimentConfig) -> None:
    """Raise :class:`ConfigError` for any setting that cannot work, before any training.

    Checked here, without data: the dataset, model, defense and attack names (the message lists
    the valid names and suggests the closest), the defense's keyword arguments, every number's
    type and range, source != target, the device, and, for splits whose attacker count does not
    depend on the data (iid, Dirichlet), whether the rule can run with ``n`` peers per round and
    ``f`` expected attackers (Krum: ``n > 2f + 2``). :func:`flhelpers.fl.engine.build_experiment`
    checks the rest once the data is loaded (class range, the extreme split's attacker count).
    """
    _check_name(DATASETS, cfg.dataset)
    _check_name(MODELS, cfg.model)
    _check_name(DEFENSES, cfg.defense)
    _check_name(ATTACKS, cfg.attack)
    if cfg.partition not in ("iid", "dirichlet", "mild", "extreme"):
        raise ConfigError(f"Unknown partition {cfg.partition!r}; valid: iid, dirichlet, mild, extreme.")
    if not _is_real(cfg.attacker_ratio) or not 0.0 <= cfg.attacker_ratio < 1.0:
        raise ConfigError(f"attacker_ratio must be in [0, 1), got {cfg.attacker_ratio!r}.")
    if not _is_int(cfg.num_peers) or cfg.num_peers < 2:
        raise ConfigError(f"num_peers must be an integer of at least 2 for federated learning, "
                          f"got {cfg.num_peers!r}.")
    if not _is_real(cfg.fraction) or not 0.0 < cfg.fraction <= 1.0:
        raise ConfigError(f"fraction (C) must be in (0, 1], got {cfg.fraction!r}.")
    if cfg.attack != "none" and cfg.partition != "extreme":  # extreme: attackers among the holders, checked with the data
        check_honest_peer_left(int(round(cfg.attacker_ratio * cfg.num_peers)), cfg)
    for name in ("batch_size", "local_epochs", "rounds", "eval_every", "eval_batch_size"):
        value = getattr(cfg, name)
        if not _is_int(value) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    if not _is_int(cfg.poisoned_rounds) or not 0 <= cfg.poisoned_rounds < cfg.rounds:
        raise ConfigError(f"poisoned_rounds must be an integer in [0, rounds) = [0, {cfg.rounds}) (the first k "
                          f"rounds average the attackers' updates only), got {cfg.poisoned_rounds!r}.")
    if cfg.poisoned_rounds > 0 and (cfg.attack == "none" or not cfg.attacker_ratio > 0):
        raise ConfigError(f"poisoned_rounds={cfg.poisoned_rounds} averages the attackers' updates, but this run "
                          f"has none (attack={cfg.attack!r}, attacker_ratio={cfg.attacker_ratio!r}); set "
                          f"attacker_ratio > 0 with an attack, or poisoned_rounds=0.")
    if not isinstance(cfg.drop_last, bool):
        raise ConfigError(f"drop_last must be True or False, got {cfg.drop_last!r}.")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)} (the local training's compute "
                          f"precision; bfloat16 is faster and changes the numbers), got {cfg.precision!r}.")
    if not _is_real(cfg.lr) or cfg.lr <= 0:
        raise ConfigError(f"lr must be a positive finite number, got {cfg.lr!r}.")
    if not _is_real(cfg.momentum) or not 0.0 <= cfg.momentum < 1.0:
        raise ConfigError(f"momentum must be in [0, 1), got {cfg.momentum!r}.")
    if not _is_real(cfg.weight_decay) or cfg.weight_decay < 0:
        raise ConfigError(f"weight_decay must be a non-negative finite number, got {cfg.weight_decay!r}.")
    if not _is_int(cfg.seed):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}.")
    if cfg.optimizer not in ("sgd", "adam"):
        raise ConfigError(f"Unknown optimizer {cfg.optimizer!r}; valid: sgd, adam.")
    if cfg.loss not in ("cross_entropy", "bce_with_logits"):
        raise ConfigError(f"Unknown loss {cfg.loss!r}; valid: cross_entropy, bce_with_logits.")
    for name in ("source_class", "target_class"):
        value = getattr(cfg, name)
        if not _is_int(value) or value < 0:
            raise ConfigError(f"{name} must be a non-negative class index, got {value!r}.")
    if cfg.source_class == cfg.target_class:
        raise ConfigError(
            f"source_class and target_class are both {cfg.source_class}; choose two different classes."
        )
    if cfg.backend not in ("sequential", "vectorized", "auto"):
        raise ConfigError(f"Unknown backend {cfg.backend!r}; valid: sequential, vectorized, auto.")
    if not isinstance(cfg.deterministic, bool):
        raise ConfigError(f"deterministic must be True or False, got {cfg.deterministic!r}.")
    if cfg.peers_per_step is not None and (not _is_int(cfg.peers_per_step) or cfg.peers_per_step < 1):
        raise ConfigError(f"peers_per_step must be None (chosen from the device's memory) or a positive "
                          f"integer (the vectorized backend's peers a step), got {cfg.peers_per_step!r}.")
    validate_device(cfg.device)
    if not _is_real(cfg.dirichlet_alpha) or cfg.dirichlet_alpha <= 0:  # on every split: a bad value is a typo
        raise ConfigError(f"dirichlet_alpha must be a positive finite number, got {cfg.dirichlet_alpha!r} "
                          f"(e.g. --set dirichlet_alpha=0.5; it only acts with partition dirichlet).")
    for name in ("train_subset", "test_subset"):
        value = getattr(cfg, name)
        if value is not None and (not _is_int(value) or value <= 0):
            raise ConfigError(f"{name} must be a positive integer or None, got {value!r}.")
    for name in ("attack_kwargs", "dataset_kwargs"):
        if not isinstance(getattr(cfg, name), dict):
            raise ConfigError(f"{name} must be a dict of keyword arguments, got {getattr(cfg, name)!r}.")
    defense = make_defense(cfg)
    if cfg.partition != "extreme":
        ratio = cfg.attacker_ratio if cfg.attack != "none" else 0.0
        check_defense_size(defense, cfg, peers_per_round(cfg),
                           expected_attackers(int(round(ratio * cfg.num_peers)), cfg))
