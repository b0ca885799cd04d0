"""Grids of runs: compute a list of configurations, reusing finished runs and resuming unfinished ones.

:func:`run_grid` runs a list of configurations one after another with a progress bar (or in
worker processes, or on Ray). A run whose configuration already finished is read back, not
recomputed, and an unfinished one resumes from its checkpoint
(:func:`flhelpers.fl.engine.run_experiment`), so re-running a grid only computes what is
missing. A :class:`~flhelpers.fl.executors.RunRecorder` (``recorder``) records each run it
computes besides the run's own files (per-round records, gradient captures), in whichever process
or machine computes it. :func:`load_summary_rows` and :func:`grid_rounds` read a grid's runs back.

:func:`make_grid` builds the configurations ``defenses x attacker ratios x seeds`` of a
benchmark (default: the paper's seven defenses at its ratios 0-50 %). Which of them each
notebook runs (the paper's plans) is the lab's business (``flhelpers_lab.paper``).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
import warnings
from typing import Any, Iterable, Sequence

import pandas as pd
import torch

from flhelpers.config import ConfigError, ExperimentConfig, benchmark_config, validate_config
from flhelpers.defenses import PAPER_DEFENSES
from flhelpers.presets import PAPER_RATIOS
from flhelpers.fl.executors import RunRecorder, RunRecording
from flhelpers.results import check_results_dir, is_finished, read_json, run_dir

#: the columns of a run's summary that tables and figures use
SUMMARY_METRICS = ("test_loss", "accuracy", "source_accuracy", "attack_success_rate", "source_accuracy_cv",
                   "detection_tpr", "detection_fpr", "train_time_per_round", "aggregation_time_per_round")


def make_grid(benchmark: str, profile: str = "quick", defenses: Sequence[str] | None = None,
              attacker_ratios: Sequence[float] | None = None, seeds: Sequence[int] = (0,),
              clean_defenses: Sequence[str] | None = None, **overrides: Any) -> list[ExperimentConfig]:
    """The configurations ``defenses x attacker_ratios x seeds`` of ``benchmark`` at ``profile``.

    ``defenses`` default to the paper's seven rules (:data:`flhelpers.defenses.PAPER_DEFENSES`) and
    ``attacker_ratios`` to the paper's 0-50 % (:data:`flhelpers.presets.PAPER_RATIOS`);
    ``clean_defenses``, when given, are the only rules run at ratio 0. ``overrides`` (e.g.
    ``rounds``, ``num_peers``; ``None`` values are ignored) apply to every configuration. A
    combination the rule cannot run (Multi-Krum needs ``n > 2f + 2``, so not at 50 % attackers)
    is left out with a warning that names it; any other invalid setting raises.
    """
    defenses = tuple(PAPER_DEFENSES) if defenses is None else tuple(defenses)
    ratios = PAPER_RATIOS if attacker_ratios is None else tuple(attacker_ratios)
    if not defenses or not ratios or not seeds:
        raise ValueError("A grid needs at least one defense, one attacker ratio and one seed.")
    configs, skipped = [], []
    for s in seeds:
        for r in ratios:
            for d in defenses:
                if clean_defenses is not None and r == 0 and d not in clean_defenses:
                    continue
                cfg = benchmark_config(benchmark, profile, defense=d, attacker_ratio=float(r), seed=int(s),
                                       **overrides)
                try:
                    validate_config(cfg)
                except ConfigError as exc:
                    if "cannot run with" not in str(exc):
                        raise
                    skipped.append(f"{d} at {float(r):.0%}")
                    continue
                configs.append(cfg)
    if skipped:
        warnings.warn(f"{benchmark}: skipped {', '.join(sorted(set(skipped)))}: the rule cannot run with that "
                      f"many expected attackers among the peers of a round (e.g. Krum needs n > 2f + 2).",
                      stacklevel=2)
    return configs


def _config_columns(cfg: ExperimentConfig) -> dict[str, Any]:
    return {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
            for k, v in cfg.to_dict().items()}


def _describe(cfg: ExperimentConfig) -> str:
    return f"{cfg.benchmark}, {cfg.defense}, attackers {cfg.attacker_ratio:.0%}, seed {cfg.seed}"


def _run_one(cfg: ExperimentConfig, data_root: str | Path | None, results_dir: str | Path, progress: bool,
             threads: int | None = None, force: bool = False,
             recorder: RunRecorder | None = None) -> tuple[dict[str, Any], bool, float]:
    """One run of a grid (also the body of a worker process): (summary, reused, seconds).

    ``threads`` sets torch's thread count for the run and restores it afterwards; a ``recorder``
    records the run (:func:`flhelpers.fl.executors.compute_recorded`).
    """
    from flhelpers.fl.engine import run_experiment
    from flhelpers.fl.executors import compute_recorded

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        if recorder is None:
            res = run_experiment(cfg, data_root=data_root, results_dir=results_dir, progress=progress, force=force)
        else:
            res = compute_recorded(cfg, data_root, results_dir, recorder, force=force, progress=progress)
        return res.summary, res.reused, time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)


#: the executors of :func:`run_grid`
EXECUTORS = ("local", "ray")


#: torch threads per run when ``threads`` is not given, on every executor (Ray: one per reserved
#: CPU, and ``cpus_per_run`` defaults to 1): float sums depend on the count, so the same grid gives
#: the same numbers locally and on Ray, whatever the machine's core count
DEFAULT_THREADS = 1


def run_grid(configs: Iterable[ExperimentConfig], data_root: str | Path | None = None,
             results_dir: str | Path = "results", progress: bool = True,
             round_progress: bool = False, workers: int = 1, force: bool = False,
             executor: str = "local", address: str | None = None, cpus_per_run: float = 1.0,
             gpus_per_run: float = 0.0, threads: int | None = None, max_retries: int = 3,
             relay_every_s: float = 10.0, recorder: RunRecorder | None = None) -> pd.DataFrame:
    """Run every configuration (reusing finished runs) and return one row of summary per run.

    Every configuration still to compute is validated before any training. ``progress`` shows
    the runs done and to do with an ETA (:class:`flhelpers.fl.executors.GridProgress`);
    ``round_progress`` also a bar over each run's rounds (useful at the paper's scale, where one
    run takes hours; sequential only).

    Executors:

    * ``"local"``: this process, one run after another; ``workers > 1`` runs the runs still to
      compute in that many processes (on a small CPU two single-threaded runs side by side
      finish sooner than one after the other with two threads each).
    * ``"ray"``: one Ray task per run on the cluster at ``address`` (``None``: the Ray session
      of this process, else a new local Ray), reserving ``cpus_per_run`` CPUs and
      ``gpus_per_run`` GPUs (fractions pack several runs on one GPU); no shared filesystem is
      needed, a run whose worker dies is retried up to ``max_retries`` times from its last
      checkpoint (sent to the driver at most every ``relay_every_s`` seconds). See
      :mod:`flhelpers.fl.ray_executor`.

    A run's numbers do not depend on the process or machine it ran in, but float sums do depend
    on the torch thread count: ``threads`` fixes it for every run, local or Ray (default
    :data:`DEFAULT_THREADS`, one, on every executor; on Ray ``max(1, int(cpus_per_run))``,
    also one by default), and runs computed with the same count are identical. Pass more
    threads for a large model on a machine with cores to spare.

    ``recorder`` (a :class:`flhelpers.fl.executors.RunRecorder`, picklable) records every run
    computed, on every executor: the worker that computes a run builds its ``on_round`` callback
    (:meth:`~flhelpers.fl.executors.RunRecorder.start`) and tells it when the run ended, and the
    record's files land in ``results_dir`` (from a Ray task they travel with the run's files, and
    with a relayed checkpoint). A finished run whose record is missing
    (:meth:`~flhelpers.fl.executors.RunRecorder.needs_computing`) is computed again for it, without
    its files being rewritten (:func:`flhelpers.fl.executors.compute_recorded`); ``reused`` is then
    False. Finished runs with their records are read back, as without a recorder.

    Columns: every config field, every summary field (:func:`flhelpers.metrics.summarize`),
    ``run_id``, ``reused`` (read back rather than computed) and ``wall_time`` (seconds the run
    took). Rows keep the order of ``configs``; an error names the failing configuration, and the
    runs finished before it stay in the store. ``force`` recomputes every run, finished or not.
    """
    from flhelpers.fl.executors import GridProgress, RunFailed

    configs = list(configs)
    ids = [c.run_id() for c in configs]
    if len(set(ids)) != len(ids):
        raise ValueError("The grid lists the same configuration twice; remove the duplicates.")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}.")
    if executor not in EXECUTORS:
        raise ValueError(f"Unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}.")
    if executor == "ray" and workers != 1:
        raise ValueError("workers is for the local executor; on Ray, cpus_per_run and gpus_per_run decide how "
                         "many runs share a node.")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}.")
    check_results_dir(results_dir, writable=False)
    pending = [i for i, c in enumerate(configs) if force or not is_finished(run_dir(results_dir, ids[i]))
               or (recorder is not None and recorder.needs_computing(c, results_dir))]
    if pending:
        check_results_dir(results_dir)  # runs to compute: the store must be writable, said before any training
    local_threads = DEFAULT_THREADS if threads is None else threads
    ray_options = None
    if executor == "ray":
        from flhelpers.fl.ray_executor import RayOptions, require_ray

        require_ray()
        ray_options = RayOptions(address, cpus_per_run, gpus_per_run, threads, max_retries, relay_every_s)
    else:
        for i in pending:  # every run still to compute is checked before the first one trains
            validate_config(configs[i])
    done: dict[int, tuple[dict[str, Any], bool, float]] = {}
    for i, cfg in enumerate(configs):  # finished runs: read back, no training
        if i not in pending:
            done[i] = _run_one(cfg, data_root, results_dir, False)
    bar = GridProgress(len(configs), len(configs) - len(pending), enabled=progress)

    def failed(i: int, exc: BaseException | str) -> RuntimeError:
        return RuntimeError(f"Run {ids[i]} ({_describe(configs[i])}) failed: {exc}")

    try:
        if ray_options is not None:
            from flhelpers.fl.ray_executor import run_on_ray

            try:
                for i, summary, seconds in run_on_ray(configs, pending, data_root, results_dir, ray_options, force,
                                                      recorder):
                    done[i] = (summary, False, seconds)
                    bar.update(_describe(configs[i]), seconds)
            except RunFailed as exc:
                raise failed(exc.index, exc.cause) from exc
        elif workers == 1 or len(pending) < 2:
            for i in pending:
                try:
                    done[i] = _run_one(configs[i], data_root, results_dir, progress and round_progress,
                                       local_threads, force=force, recorder=recorder)
                except Exception as exc:
                    raise failed(i, exc) from exc
                bar.update(_describe(configs[i]), done[i][2])
        else:
            per_process = local_threads
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=context) as pool:
                futures = {pool.submit(_run_one, configs[i], data_root, results_dir, False, per_process, force,
                                       recorder): i for i in pending}
                for future in as_completed(futures):
                    i = futures[future]
                    try:
                        done[i] = future.result()
                    except Exception as exc:
                        for f in futures:
                            f.cancel()
                        raise failed(i, exc) from exc
                    bar.update(_describe(configs[i]), done[i][2])
    finally:
        bar.close()
    rows = [{**_config_columns(cfg), **done[i][0], "run_id": ids[i], "reused": done[i][1],
             "wall_time": done[i][2]} for i, cfg in enumerate(configs)]
    if progress:
        print(f"grid: {len(rows)} runs, {len(pending)} computed, {len(rows) - len(pending)} reused")
    return pd.DataFrame(rows)


def grid_rounds(summaries: pd.DataFrame, results_dir: str | Path = "results") -> pd.DataFrame:
    """The per-round metrics (``metrics.csv``) of every run in ``summaries``, with its config columns."""
    frames = []
    config_cols = [c for c in summaries.columns if c in ExperimentConfig.__dataclass_fields__]
    for _, row in summaries.iterrows():
        frame = pd.read_csv(run_dir(results_dir, row["run_id"]) / "metrics.csv")
        for col in (*config_cols, "run_id"):
            frame[col] = row[col]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_summary_rows(results_dir: str | Path, run_ids: Iterable[str]) -> pd.DataFrame:
    """Summaries of finished runs by id (config columns + summary), as :func:`run_grid` returns them."""
    rows = []
    for rid in run_ids:
        path = run_dir(results_dir, rid)
        cfg = ExperimentConfig.from_dict(read_json(path / "config.json")["config"])
        rows.append({**_config_columns(cfg), **read_json(path / "summary.json"), "run_id": rid, "reused": True})
    return pd.DataFrame(rows)


__all__ = ["DEFAULT_THREADS", "EXECUTORS", "SUMMARY_METRICS", "RunRecorder", "RunRecording", "grid_rounds",
           "load_summary_rows", "run_grid"]
