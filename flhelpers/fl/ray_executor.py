"""Experiment grids on a Ray cluster: one Ray task per run, the results store on the driver only.

``run_grid(configs, executor="ray", address=...)`` (``python -m flhelpers grid --executor ray``)
calls :func:`run_on_ray`. How a grid runs:

1. **Before submission.** The driver (the process calling ``run_grid``) reads back the runs its
   store has finished; they are never submitted. Every other configuration is validated first
   (a typo fails before any task starts).
2. **One task per run**, with ``num_cpus=cpus_per_run`` and ``num_gpus=gpus_per_run``: Ray packs
   as many runs on a node as its resources allow, and a fraction of a GPU (``0.25``) shares one
   GPU among several small runs. A task computes its run with
   :func:`flhelpers.fl.engine.run_experiment` in a temporary store on its own node and with
   ``threads`` torch threads (default ``max(1, int(cpus_per_run))``).
3. **No shared filesystem.** The task returns the run's files (``config.json``, ``metrics.csv``,
   ``timings.csv``, ``summary.json``) as bytes; the driver writes them into its store with the
   atomic writers, ``summary.json`` last, and checks ``metrics.csv`` against the summary's
   digest (:func:`flhelpers.fl.executors.write_finished_run`). The data sets must be on every node:
   ``data_root`` (a path valid on every node) or, when it is ``None``, each node's own
   ``$FLHELPERS_DATA`` (set it before ``ray start``) or ``./data``.
4. **Checkpoints travel with the run.** After each round's checkpoint (at most one every
   ``relay_every_s`` seconds) the task sends it to a small relay actor on the driver's node.
   The driver writes it into its store as an unfinished run (so a driver that dies too can
   resume the grid later, locally or on Ray), and the relay hands the latest checkpoint to the
   task's next attempt. An unfinished run already in the driver's store (an interrupted local
   grid) is resumed the same way: its checkpoint travels with the first attempt.
5. **A worker or node that dies mid-run** does not lose the grid: Ray retries the task (up to
   ``max_retries`` times) and the new attempt resumes from the last relayed checkpoint, or from
   round 0 when none had arrived. Every random draw derives from (seed, round, peer), so the
   numbers equal those of an uninterrupted run computed with the same torch thread count.
6. **No finished run is computed twice.** Finished runs are skipped before submission; once the
   driver has written a run, the relay marks it done and any later attempt of its task returns
   at once without computing.
7. **Records travel too.** With a :class:`~flhelpers.fl.executors.RunRecorder`, the task builds
   the run's recording in its temporary store and returns the record's files with the run's; the
   driver writes them before the run's ``summary.json``. A resumed run's record travels with its
   checkpoint (seeded from the driver's store, relayed after each round), so the record of the
   rounds before the resumption is kept. A finished run whose record is missing is computed again
   and only its record is kept, if the recomputed ``metrics.csv`` equals the stored one
   (:func:`flhelpers.fl.executors.adopt_record`).

Ray is an optional extra (``pip install -e ".[ray]"``); without it :func:`require_ray` fails at
once with that command. Every node must run the same flhelpers (its results version is checked
by each task) with torch and the data sets.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from flhelpers.fl.checkpoint import CHECKPOINT
from flhelpers.config import RESULTS_VERSION, ConfigError, ExperimentConfig, validate_config
from flhelpers.fl.executors import (FINISHED_FILES, RECORD_PREFIX, UNFINISHED_FILES, RunFailed, RunRecorder,
                                    adopt_record, read_record_files, read_run_files, record_run,
                                    write_finished_run, write_record_files, write_unfinished_run)
from flhelpers.optional import import_optional
from flhelpers.results import METRICS_DIGEST, is_finished, read_finished_run, run_dir

#: what to run when Ray is missing
RAY_INSTALL = 'pip install -e ".[ray]"'


def require_ray() -> Any:
    """The ``ray`` module, or a :class:`ConfigError` that says how to install it."""
    return import_optional(("ray",), "The Ray executor needs Ray, which is not installed in this environment. "
                           f"Install the extra: {RAY_INSTALL} (or pip install 'ray>=2.40,<3').", ConfigError)


@dataclass(frozen=True)
class RayOptions:
    """How runs are placed on the cluster.

    Attributes:
        address: the cluster to join (``"10.0.0.1:6379"``, ``"auto"``); ``None`` joins the Ray
            session already started in this process, else starts a local Ray on this machine.
        cpus_per_run: CPUs Ray reserves for each run (fractions allowed).
        gpus_per_run: GPUs Ray reserves for each run; ``0.25`` packs four runs on one GPU.
            Runs on ``cuda`` need it > 0 (Ray hides GPUs from tasks that reserve none).
        threads: torch threads per run (default ``max(1, int(cpus_per_run))``); numbers equal
            a local run's computed with the same thread count.
        max_retries: how often Ray retries a run whose worker or node died.
        relay_every_s: least seconds between two checkpoints a run sends to the driver.
    """

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    threads: int | None = None
    max_retries: int = 3
    relay_every_s: float = 10.0

    @property
    def torch_threads(self) -> int:
        return self.threads if self.threads is not None else max(1, int(self.cpus_per_run))

    def check(self, configs: Sequence[ExperimentConfig]) -> None:
        """Raise ConfigError for options that cannot work with ``configs``, naming the fix."""
        for name in ("cpus_per_run", "gpus_per_run", "relay_every_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}.")
        if self.cpus_per_run == 0 and self.gpus_per_run == 0:
            raise ConfigError("cpus_per_run and gpus_per_run are both 0: each run must reserve some "
                              "resource (e.g. --cpus-per-run 1).")
        if self.gpus_per_run > 1 and self.gpus_per_run != int(self.gpus_per_run):
            raise ConfigError(f"gpus_per_run={self.gpus_per_run}: above 1 it must be a whole number of GPUs.")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}.")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(f"max_retries must be an integer >= 0, got {self.max_retries!r}.")
        devices = {c.device for c in configs}
        on_gpu = sorted(d for d in devices if str(d).startswith("cuda"))
        if on_gpu and self.gpus_per_run == 0:
            raise ConfigError(f"Runs on {on_gpu[0]!r} need a GPU reserved for each: pass gpus_per_run > 0 "
                              f"(--gpus-per-run 1, or 0.25 to pack four runs on one GPU).")
        if self.gpus_per_run > 0 and not on_gpu:
            raise ConfigError(f"gpus_per_run={self.gpus_per_run} reserves GPUs, but the runs use device "
                              f"{sorted(devices)}: set device='cuda' (--set device=cuda) or drop gpus_per_run.")
        if any(str(d) not in ("cpu", "cuda") for d in devices):
            raise ConfigError(f"On Ray, runs use device 'cpu' or 'cuda' (Ray picks the GPU), got {sorted(devices)}.")


def validate_for_cluster(cfg: ExperimentConfig) -> None:
    """:func:`validate_config` without the device check: the driver may have no GPU."""
    validate_config(cfg.replace(device="cpu") if str(cfg.device).startswith("cuda") else cfg)


# ----------------------------------------------------------------------------- on the workers


class CheckpointRelay:
    """A Ray actor on the driver's node: the latest checkpoint of each run still computing.

    Tasks :meth:`put` their checkpoints; the driver :meth:`take_new` ones to write them into its
    store, and marks a run :meth:`done` once it has written the finished run; a task's attempt
    asks for the :meth:`latest` checkpoint before it starts.
    """

    def __init__(self) -> None:
        self._latest: dict[str, dict[str, bytes]] = {}
        self._new: dict[str, dict[str, bytes]] = {}
        self._done: set[str] = set()
        self._attempts: dict[str, int] = {}

    def seed(self, run_id: str, files: dict[str, bytes]) -> None:
        self._latest[run_id] = files

    def start(self, run_id: str) -> tuple[str, dict[str, bytes] | None, int]:
        """An attempt of ``run_id`` starts: ``(status, latest files or None, attempt number)``;
        ``status`` is ``"done"`` when the driver already wrote the run, else ``"run"``."""
        if run_id in self._done:
            return "done", None, 0
        self._attempts[run_id] = self._attempts.get(run_id, 0) + 1
        return "run", self._latest.get(run_id), self._attempts[run_id]

    def put(self, run_id: str, files: dict[str, bytes]) -> None:
        if run_id not in self._done:
            self._latest[run_id] = files
            self._new[run_id] = files

    def take_new(self) -> dict[str, dict[str, bytes]]:
        new, self._new = self._new, {}
        return new

    def done(self, run_id: str) -> None:
        self._done.add(run_id)
        self._latest.pop(run_id, None)
        self._new.pop(run_id, None)



class _CheckpointSender:
    """``on_round`` callback of a task: send the run's newest checkpoint to the relay.

    ``run_experiment`` calls it after each aggregation; the checkpoint on disk is then the one of
    the previous round (written atomically, so it is read whole). The record's files
    (``outputs`` under the task's store ``store``) travel with it.
    """

    def __init__(self, path: Path, relay: Any, run_id: str, every_s: float, store: Path | None = None,
                 outputs: tuple[str, ...] = ()) -> None:
        self.path, self.relay, self.run_id, self.every_s = path, relay, run_id, every_s
        self.store, self.outputs = store, outputs
        self._last_mtime: int | None = None
        self._last_sent = float("-inf")
        self.rounds_trained = 0  # the rounds this attempt aggregated

    def __call__(self, record: Any) -> None:
        del record
        self.rounds_trained += 1
        if self.relay is None:
            return
        ckpt = self.path / CHECKPOINT
        try:
            mtime = ckpt.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._last_mtime or time.monotonic() - self._last_sent < self.every_s:
            return
        import ray

        try:
            files = read_run_files(self.path, UNFINISHED_FILES)
            if self.store is not None:
                files.update(read_record_files(self.store, self.outputs))
            ray.get(self.relay.put.remote(self.run_id, files))
        except Exception as exc:  # the relay is a convenience: never let it fail the run
            warnings.warn(f"Run {self.run_id}: could not send its checkpoint to the driver ({exc}); "
                          f"the run continues, a retry would start from its last relayed checkpoint.")
            self.relay = None
            return
        self._last_mtime, self._last_sent = mtime, time.monotonic()


def execute_run(config: dict[str, Any], run_id: str, data_root: str | None, relay: Any, threads: int,
                results_version: int, relay_every_s: float, recorder: RunRecorder | None = None) -> dict[str, Any]:
    """The body of a run's Ray task: compute the run in a temporary store, return its files.

    Returns ``{"status": "done"}`` when the driver already holds the finished run (a stray retry),
    else ``{"status": "computed", "files", "summary", "wall_time", "attempt", "resumed_from",
    "rounds_trained", "host", "pid"}`` (``resumed_from``: the first round this attempt computed,
    ``None`` from round 0; ``rounds_trained``: how many rounds it computed). With a ``recorder``
    the run is recorded (:func:`flhelpers.fl.executors.record_run`) and ``files`` holds the
    record's files too (keys :data:`~flhelpers.fl.executors.RECORD_PREFIX` + path); a whole-run
    record neither resumes from nor relays checkpoints.
    """
    if results_version != RESULTS_VERSION:
        raise ConfigError(f"Node {socket.gethostname()} runs flhelpers with results version {RESULTS_VERSION}, "
                          f"the driver {results_version}: install the same flhelpers on every node.")
    cfg = ExperimentConfig.from_dict(config)
    if cfg.run_id() != run_id:
        raise ConfigError(f"Run {run_id}: this node computes run id {cfg.run_id()} for the same config; "
                          f"install the same flhelpers on every node.")
    import ray

    status, files, attempt = ("run", None, 1) if relay is None else ray.get(relay.start.remote(run_id))
    if status == "done":
        return {"status": "done"}
    whole = recorder is not None and recorder.whole_run(cfg)
    outputs = recorder.outputs(cfg) if recorder is not None else ()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="flhelpers-ray-") as tmp:
        path = run_dir(tmp, run_id)
        path.mkdir(parents=True)
        files = {} if whole else (files or {})
        for name, data in files.items():
            if not name.startswith(RECORD_PREFIX):
                (path / name).write_bytes(data)
        write_record_files(tmp, files, outputs)  # a resumed run's record so far
        t0 = time.perf_counter()
        sender = _CheckpointSender(path, None if whole else relay, run_id, relay_every_s, Path(tmp), outputs)
        result = record_run(cfg, data_root, tmp, recorder, also=sender)
        files = {**read_run_files(path, FINISHED_FILES), **read_record_files(tmp, outputs)}
        return {"status": "computed", "files": files, "summary": result.summary,
                "wall_time": time.perf_counter() - t0, "attempt": attempt,
                "resumed_from": result.extra.get("resumed_from"), "rounds_trained": sender.rounds_trained,
                "host": socket.gethostname(), "pid": os.getpid()}


# ----------------------------------------------------------------------------- on the driver


#: seconds :func:`probe_address` waits for a cluster's GCS port to answer
PROBE_TIMEOUT_S = 3.0


def _cannot_reach(address: str | None, why: object) -> ConfigError:
    return ConfigError(f"Cannot reach a Ray cluster at {address!r} ({why}). Start one with "
                       f"`ray start --head --port 6379` and pass --address <head-ip>:6379.")


def gcs_endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` or ``ray://host:port`` address; ``None`` for the
    addresses Ray resolves itself (``auto``, ``local``).

    Raises:
        ConfigError: ``host:port`` with a port that is not a number in 1-65535.
    """
    text = address.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    if text in ("auto", "local") or ":" not in text:
        return None
    host, _, port = text.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"Ray address {address!r} has no valid port: write it as <head-ip>:<port>, "
                          f"e.g. 10.0.0.1:6379.")
    return host, int(port)


def probe_address(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast when nothing listens at a ``host:port`` Ray address.

    ``ray.init`` retries an unreachable GCS for minutes (printing "Failed to connect to GCS"); a
    plain TCP connection with a timeout answers within ``timeout_s`` seconds.

    Raises:
        ConfigError: the project's "Cannot reach a Ray cluster" message, naming the fix.
    """
    endpoint = gcs_endpoint(address)
    if endpoint is None:
        return
    try:
        with socket.create_connection(endpoint, timeout=timeout_s):
            pass
    except OSError as exc:
        why = "no answer within {:g} s".format(timeout_s) if isinstance(exc, socket.timeout) else (
            exc.strerror or exc.__class__.__name__)
        raise _cannot_reach(address, f"nothing listens on port {endpoint[1]} of {endpoint[0]}: {why}") from exc


def connect(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` (or this process's session, or a new local Ray).

    A ``host:port`` address is probed first (:func:`probe_address`), so an unreachable cluster
    fails within seconds instead of Ray's minutes of retries. Returns whether this call started
    the connection (the caller then shuts it down).
    """
    ray = require_ray()
    if ray.is_initialized():
        if address is not None:
            warnings.warn(f"Ray is already initialised in this process; using that session, not {address!r}.",
                          stacklevel=3)
        return False
    if address is not None:
        probe_address(address)
    try:
        with warnings.catch_warnings():  # Ray's notice about GPU visibility of CPU-only tasks
            warnings.filterwarnings("ignore", message=".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO.*")
            if address is None:
                ray.init(include_dashboard=False, log_to_driver=True)
            else:
                ray.init(address=address, log_to_driver=True)
    except ConnectionError as exc:
        raise _cannot_reach(address, exc) from exc
    return True


def _start_relay(ray: Any) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=0, max_restarts=0)(CheckpointRelay)
    return actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()


def _cause(exc: BaseException) -> BaseException | str:
    return getattr(exc, "cause", None) or exc


def run_on_ray(configs: Sequence[ExperimentConfig], pending: Sequence[int], data_root: str | Path | None,
               results_dir: str | Path, options: RayOptions, force: bool = False,
               recorder: RunRecorder | None = None) -> Iterator[tuple[int, dict[str, Any], float]]:
    """Compute ``configs[i]`` for every ``i`` in ``pending`` on Ray; yield ``(i, summary, seconds)``
    as each run is written into ``results_dir``.

    Raises :class:`RunFailed` (with the index) for the first run that fails; the runs still
    queued or running are cancelled and the runs already written stay. ``force`` recomputes
    runs that are finished in the store (their files are replaced when the new ones arrive).
    ``recorder`` records each run (module docstring, point 7): a pending run already finished
    in the store is there for its record only, and only the record is written.
    """
    options.check([configs[i] for i in pending])
    for i in pending:
        validate_for_cluster(configs[i])
    if not pending:
        return
    ray = require_ray()
    started = connect(options.address)
    relay = None
    refs: dict[Any, int] = {}
    try:
        relay = _start_relay(ray)
        ids = {i: configs[i].run_id() for i in pending}
        index = {run_id: i for i, run_id in ids.items()}
        outputs = {i: recorder.outputs(configs[i]) if recorder is not None else () for i in pending}
        whole = {i: recorder is not None and recorder.whole_run(configs[i]) for i in pending}
        # a finished run still pending is there for its record only (a whole-run record replaces the run)
        record_only = {i: not force and not whole[i] and is_finished(run_dir(results_dir, ids[i])) for i in pending}
        seeds = []
        if not force:  # an interrupted run in the store continues where it stopped, with its record so far
            for i in pending:
                files = read_run_files(run_dir(results_dir, ids[i]), UNFINISHED_FILES)
                if CHECKPOINT in files and not whole[i]:
                    seeds.append(relay.seed.remote(ids[i], {**files, **read_record_files(results_dir, outputs[i])}))
        ray.get(seeds)  # in the relay before any task asks for them (a warm worker asks at once)
        task = ray.remote(execute_run)
        root = None if data_root is None else str(Path(data_root).resolve())  # the driver's cwd, not a worker's
        for i in pending:
            ref = task.options(num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run,
                               max_retries=options.max_retries, retry_exceptions=False,
                               name=f"flhelpers-run-{ids[i]}").remote(
                configs[i].to_dict(), ids[i], root, relay, options.torch_threads, RESULTS_VERSION,
                options.relay_every_s, recorder)
            refs[ref] = i
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            # checkpoints first: any sent by a run happened before its result arrived
            for run_id, files in ray.get(relay.take_new.remote()).items():
                if write_unfinished_run(results_dir, run_id, files):
                    write_record_files(results_dir, files, outputs[index[run_id]])
            for ref in ready:
                i = refs.pop(ref)
                try:
                    out = ray.get(ref)
                except Exception as exc:
                    raise RunFailed(i, _cause(exc)) from exc
                if out["status"] == "computed" and record_only[i]:
                    adopt_record(results_dir, ids[i], out["files"], outputs[i])
                    relay.done.remote(ids[i])
                    summary, _ = read_finished_run(run_dir(results_dir, ids[i]))
                    yield i, {k: v for k, v in summary.items() if k != METRICS_DIGEST}, out["wall_time"]
                elif out["status"] == "computed":
                    write_record_files(results_dir, out["files"], outputs[i])  # before the run's summary.json
                    write_finished_run(results_dir, ids[i], out["files"])
                    relay.done.remote(ids[i])
                    if out["attempt"] > 1:
                        start = out["resumed_from"]
                        how = ("from round 0." if start is None else
                               f"resumed at round {start} from the last checkpoint that reached the driver.")
                        warnings.warn(f"Run {ids[i]} finished at attempt {out['attempt']} (a worker died), {how} "
                                      f"It trained {out['rounds_trained']} of {configs[i].rounds} rounds.",
                                      stacklevel=2)
                    yield i, out["summary"], out["wall_time"]
                else:  # the driver wrote this run already (cannot happen within one grid): read it back
                    summary, _ = read_finished_run(run_dir(results_dir, ids[i]))
                    yield i, {k: v for k, v in summary.items() if k != METRICS_DIGEST}, 0.0
    finally:
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or gone
                pass
        if relay is not None:
            try:
                ray.kill(relay)
            except Exception:
                pass
        if started:
            ray.shutdown()


__all__ = ["CheckpointRelay", "RAY_INSTALL", "RayOptions", "connect", "execute_run", "require_ray", "run_on_ray",
           "validate_for_cluster"]
