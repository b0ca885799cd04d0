"""The FL simulation of Algorithm 1: config -> data -> peers' local training -> defense -> metrics.

:func:`run_experiment` is the one entry point. It validates the config and builds everything
(data, partition, attackers, model, defense: :mod:`flhelpers.fl.experiment`, whose names are
re-exported here) *before* any training, reuses a finished run with the same config (the run id
hashes it), resumes an unfinished one from its checkpoint, and writes the results store (see
:mod:`flhelpers.results`).

A round (:func:`play_round`): :func:`select_peers` draws the candidates; :func:`screen_peers` lets
the defense drop some before training; :func:`train_attacked_round` trains the rest and the attack
poisons the updates; :func:`transform_round` lets the defense transform them (FFL's mixing, in
which the attack says who declines to mix); :func:`aggregate_round` aggregates them through the
guards. The defense's hooks see a :class:`~flhelpers.defenses.base.ServerView`
(:func:`server_view`), never the :class:`Experiment` nor who the attackers are.

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

from flhelpers.config import ConfigError, ExperimentConfig, peers_per_round, validate_config  # noqa: F401
from flhelpers.data.base import FLDataset
from flhelpers.defenses.base import (AggregationContext, AggregationResult, Screening, ServerView, Transformed,
                                     as_screening, as_transformed)
from flhelpers.fl.checkpoint import (CHECKPOINT, Progress, fingerprint, load_checkpoint, remove_checkpoint,
                                     restore_rng_states, rng_states, save_checkpoint)
from flhelpers.fl.device import resume_key, resume_problem
from flhelpers.fl.experiment import (DataMismatchError, Experiment, build_experiment,  # noqa: F401 (re-exported)
                                     check_batchnorm_batches, check_same_data, check_subset_sizes, current_data,
                                     experiment_record, global_loss_per_peer, make_attack, make_trainer,
                                     recorded_data)
from flhelpers.fl.guards import (apply_update, attackers_mean, average_buffers, buffer_weights,  # noqa: F401
                                 feasible_attackers, guarded_aggregate)
from flhelpers.metrics import attack_metrics, detection_counts, evaluate, summarize
from flhelpers.metrics.evaluation import Evaluation
from flhelpers.params import flatten_buffers, flatten_params, load_flat_buffers, load_flat_params
from flhelpers.results import (CONFIG, METRICS, METRICS_DIGEST, SUMMARY, TIMINGS, atomic_write_csv,
                               atomic_write_json, atomic_write_text, check_results_dir, csv_text, is_finished,
                               read_finished_run, read_timings, remove_temporaries, run_dir, sha256_text)
from flhelpers.results import hold_run, publish_run, recompute_dir, recover_run
from flhelpers.seeding import derive_seed, torch_generator


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


def select_peers(cfg: ExperimentConfig, round_: int) -> np.ndarray:
    """Line 3-4 of Algorithm 1: ``m = max(C*K, 1)`` peers drawn at random (all when C = 1)."""
    m = peers_per_round(cfg)
    if m >= cfg.num_peers:
        return np.arange(cfg.num_peers)
    rng = np.random.default_rng(derive_seed(cfg.seed, "select", round_))
    return np.sort(rng.choice(cfg.num_peers, size=m, replace=False))


def server_view(exp: Experiment, candidates: np.ndarray, global_params: torch.Tensor, global_buffers: torch.Tensor,
                round_: int, updates: torch.Tensor | None = None,
                refuses_mixing: torch.Tensor | None = None) -> ServerView:
    """What the server knows of round ``round_``, for ``candidates`` (the defense's hooks see
    nothing else): the global model and its layout, the run's seed and sampling rate, the round's
    ``updates`` and the peers that decline to mix, where given, and ``peer_losses``, which asks the
    peers for their loss of the global model (:func:`~flhelpers.fl.experiment.global_loss_per_peer`)."""
    cfg = exp.config

    def peer_losses(ids: np.ndarray) -> np.ndarray:
        return global_loss_per_peer(exp, np.asarray(ids, dtype=np.int64), global_params, global_buffers)

    return ServerView(round=round_, candidates=np.asarray(candidates, dtype=np.int64), global_params=global_params,
                      global_buffers=global_buffers, layout=exp.layout, seed=int(cfg.seed),
                      sampling_rate=peers_per_round(cfg) / cfg.num_peers, updates=updates,
                      refuses_mixing=refuses_mixing, peer_losses=peer_losses)


def screen_peers(exp: Experiment, candidates: np.ndarray, global_params: torch.Tensor,
                 global_buffers: torch.Tensor, round_: int) -> Screening:
    """Let the defense drop peers *before* training (user elimination, FFL's reputation).

    A defense may define ``select_peers(view) -> Screening``
    (:class:`~flhelpers.defenses.base.ScreeningHook`); the kept ids come back sorted, with the
    hook's note for the round's aggregate. Dropped peers count as rejected in the detection metrics.
    """
    select = getattr(exp.defense, "select_peers", None)
    if select is None:
        return Screening(candidates)
    answer = as_screening(select(server_view(exp, candidates, global_params, global_buffers, round_)))
    kept = np.sort(answer.kept)
    if len(kept) == 0:
        raise RuntimeError(f"{exp.defense!r} dropped every peer in round {round_}.")
    if not np.isin(kept, candidates).all():
        raise RuntimeError(f"{exp.defense!r} selected peers {np.setdiff1d(kept, candidates).tolist()} that are not "
                           f"among round {round_}'s candidates.")
    return Screening(kept, answer.note)


def transform_round(exp: Experiment, updates: torch.Tensor, peer_ids: np.ndarray, global_params: torch.Tensor,
                    global_buffers: torch.Tensor, round_: int) -> Transformed:
    """The defense's ``transform_updates`` hook (:class:`~flhelpers.defenses.base.TransformHook`:
    FFL's mixing) on the round's sent updates; the peers that decline to mix are the attack's
    answer (:meth:`~flhelpers.attacks.base.Attack.refuses_mixing`). Without the hook: the updates as sent."""
    transform = getattr(exp.defense, "transform_updates", None)
    if transform is None:
        return Transformed(updates)
    refusing = exp.attack.refuses_mixing(torch.as_tensor(exp.is_attacker[peer_ids]), round_)
    return as_transformed(transform(server_view(exp, peer_ids, global_params, global_buffers, round_,
                                                updates=updates, refuses_mixing=refusing)))


def aggregate_round(exp: Experiment, updates: torch.Tensor, peer_ids: np.ndarray, global_params: torch.Tensor,
                    round_: int, screening: Any = None,
                    transform: Any = None) -> tuple[AggregationResult, AggregationContext]:
    """Build the round's context (with the notes of the defense's hooks) and aggregate with
    :func:`guarded_aggregate`."""
    cfg = exp.config
    sizes = torch.tensor([exp.peers[k].num_samples for k in peer_ids], dtype=torch.float32)
    ctx = AggregationContext(
        layout=exp.layout, num_classes=exp.dataset.num_classes, round=round_,
        peer_ids=torch.as_tensor(peer_ids), num_samples=sizes,
        expected_attackers=exp.expected_attackers, lr=cfg.lr, global_params=global_params,
        seed=derive_seed(cfg.seed, "defense", round_) % 2**31, screening=screening, transform=transform)
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
                      f"starting the run afresh.", stacklevel=4)
        return None, {}
    if state.get("num_threads") != torch.get_num_threads():
        warnings.warn(f"Resuming run {run_id} with {torch.get_num_threads()} torch threads; it was "
                      f"checkpointed with {state.get('num_threads')}. Float sums may differ in the last "
                      f"digits from an uninterrupted run.", stacklevel=4)
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


def play_round(exp: Experiment, st: _State, r: int, on_round: Callable[[RoundRecord], None] | None = None
               ) -> tuple[AggregationResult, torch.Tensor, float, float]:
    """Round ``r`` of Algorithm 1 on the run's state ``st`` (moved on: model, detection counts,
    next round): ``(result, verdict, train time, aggregation time)``, ``verdict`` the defense's
    ``accepted`` mask (the step itself may differ: ``poisoned_rounds``)."""
    cfg, is_attacker = exp.config, exp.is_attacker
    candidates = select_peers(cfg, r)
    t0 = time.perf_counter()
    screening = screen_peers(exp, candidates, st.global_params, st.global_buffers, r)
    poisoned = r < cfg.poisoned_rounds  # the defense's hooks ran; its choice is not applied
    peer_ids = candidates if poisoned else screening.kept
    updates, buffers = train_attacked_round(exp, peer_ids, st.global_params, st.global_buffers, r)
    updates = exp.attack.poison_updates(
        updates, torch.as_tensor(is_attacker[peer_ids]), r,
        torch_generator(cfg.seed, "attack", r), exp.layout)
    sent = updates  # as the peers sent them, before a defense's transform
    transformed = transform_round(exp, updates, peer_ids, st.global_params, st.global_buffers, r)
    updates = transformed.updates
    t1 = time.perf_counter()
    result, ctx = aggregate_round(exp, updates, peer_ids, st.global_params, r, screening.note, transformed.note)
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
    return result, verdict, t1 - t0, t2 - t1


def evaluate_round(exp: Experiment, st: _State, r: int, verdict: torch.Tensor,
                   result: AggregationResult) -> Evaluation:
    """Test the global model after round ``r`` and append its metrics row to ``st``."""
    cfg = exp.config
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
                             **{k: result.info[k] for k in ("epsilon", "delta") if k in result.info}})
    return ev


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
    recorded = recorded_data(path)
    if recorded:
        current = current_data(cfg, data_root, dataset, run_id)
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


def _check_run_args(checkpoint_every: Any, stop_after: Any) -> None:
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be an integer >= 0 (0: no checkpoints), got {checkpoint_every!r}.")
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int)
                                   or stop_after < 1):
        raise ConfigError(f"stop_after must be None or an integer >= 1, got {stop_after!r}.")


def _open_folder(exp: Experiment, final: Path, run_id: str, force: bool) -> Path:
    """The folder the run is computed in, made ready, with its ``config.json``: ``final``, or a
    sibling when ``final`` holds a finished run, which stays until the new one is complete. A
    checkpoint to resume must be of the data the run uses now."""
    path = final
    if is_finished(final):  # recomputed beside the finished run, which stays until the new one is complete
        path = recompute_dir(final)
        shutil.rmtree(path, ignore_errors=True)
    elif not force and (path / CHECKPOINT).is_file():  # resuming: only on the data it started on
        check_same_data(run_id, path, recorded_data(path), exp.data_record)
    path.mkdir(parents=True, exist_ok=True)
    remove_temporaries(path)
    (path / SUMMARY).unlink(missing_ok=True)  # from here on the folder holds an unfinished run
    if force:
        remove_checkpoint(path)
    atomic_write_json(path / CONFIG, experiment_record(exp))
    return path


def _start(exp: Experiment, path: Path, final: Path, run_id: str, force: bool) -> tuple[_State, dict[str, Any]]:
    """The run's state at its first round to compute: from its checkpoint, or round 0."""
    st, extra = (None, {}) if force or path != final else _resume(exp, path, run_id)
    if st is None:
        st = _State(0, flatten_params(exp.model), flatten_buffers(exp.model), Progress())
    return st, extra


def _run_experiment(cfg: ExperimentConfig, data_root: str | Path | None = None,
                    results_dir: str | Path = "results", force: bool = False, progress: bool = True,
                    dataset: FLDataset | None = None, checkpoint_every: int = 1,
                    on_round: Callable[[RoundRecord], None] | None = None,
                    stop_after: int | None = None,
                    after_round: Callable[[Progress], bool] | None = None) -> RunResult:
    """:func:`run_experiment` inside the run's lock: reuse, or build, then the round loop."""
    _check_run_args(checkpoint_every, stop_after)
    check_results_dir(results_dir, writable=False)  # None, a file: one clear line before anything else
    run_id = cfg.run_id()
    final = run_dir(results_dir, run_id)
    if is_finished(final) and not force and on_round is None:
        reused = _reuse(cfg, final, run_id, data_root, dataset)
        if reused is not None:
            return reused
    check_results_dir(results_dir)  # a run to compute must be writable: say so before loading data
    exp = build_experiment(cfg, data_root, dataset)
    path = _open_folder(exp, final, run_id, force)
    st, extra = _start(exp, path, final, run_id, force)
    bar = tqdm(range(st.next_round, cfg.rounds), desc=f"{cfg.benchmark} {cfg.defense} {cfg.attacker_ratio:.0%}",
               disable=not progress, initial=st.next_round, total=cfg.rounds, leave=False)
    for r in bar:
        result, verdict, train_time, aggregation_time = play_round(exp, st, r, on_round)
        last = r == cfg.rounds - 1
        eval_time = 0.0
        if (r + 1) % cfg.eval_every == 0 or last:
            t3 = time.perf_counter()
            ev = evaluate_round(exp, st, r, verdict, result)
            eval_time = time.perf_counter() - t3
            bar.set_postfix(acc=f"{ev.accuracy:.3f}", src=f"{ev.source_accuracy:.3f}",
                            asr=f"{ev.attack_success_rate:.3f}")
        st.progress.timings.append({"round": r, "train_time": train_time, "aggregation_time": aggregation_time,
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
