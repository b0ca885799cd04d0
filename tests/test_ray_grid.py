"""Grids on Ray (flhelpers.fl.ray_executor): equal numbers, no shared filesystem, retries, resumption.

Each test starts its own Ray and stops it, also on failure: a cluster on loopback started with
``ray start`` (its processes are found by their private temp dir and ended by pid), and a local
Ray (``ray.init(num_cpus=2)``) shared by the other tests of this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pandas as pd
import psutil
import pytest

from flhelpers.fl.checkpoint import load_checkpoint
from flhelpers.fl.grid import run_grid
from flhelpers.fl.grid import make_grid
from flhelpers.results import load_results, run_dir
from processes import free_port, processes_using, stop_processes_using

ray = pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[ray]"')

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TINY = dict(rounds=2, num_peers=5, train_subset=600, test_subset=200)
TINY_CLI = ["--rounds", "2", "--set", "num_peers=5", "--set", "train_subset=600", "--set", "test_subset=200"]
#: summary columns that are wall-clock times, different in every run
TIMES = ("train_time_per_round", "aggregation_time_per_round", "wall_time")


def _grid(**overrides) -> list:
    return make_grid("mnist-iid", "quick", defenses=["fedavg", "lfighter"], attacker_ratios=[0.0, 0.4],
                     **{**TINY, **overrides})


@pytest.fixture(scope="module")
def local_runs(data_root, tmp_path_factory):
    """The tiny grid computed by the local executor with one torch thread: the reference numbers."""
    out = tmp_path_factory.mktemp("local")
    configs = _grid()
    return out, configs, run_grid(configs, data_root, out, progress=False, threads=1)


def _numbers(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in (*TIMES, "reused") if c in frame.columns]).reset_index(drop=True)


def _assert_same_runs(ref_dir: Path, other_dir: Path, run_ids) -> None:
    for rid in run_ids:
        a, b = run_dir(ref_dir, rid), run_dir(other_dir, rid)
        assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes(), rid
        ca, cb = json.loads((a / "config.json").read_text()), json.loads((b / "config.json").read_text())
        assert ca["config"] == cb["config"] and ca["attackers"] == cb["attackers"]
        assert cb["torch_num_threads"] == 1
        assert not (b / "checkpoint.pt").exists()


def test_cluster_on_loopback_driver_joins_by_address(local_runs, data_root, tmp_path):
    """`ray start --head` on loopback; `flhelpers grid --executor ray --address` joins it."""
    ref_dir, configs, _ = local_runs
    temp_dir = tempfile.mkdtemp(prefix="flr", dir="/tmp")  # short: Ray's socket paths live under it
    port = free_port()
    env = {**os.environ, "FLHELPERS_DATA": str(data_root), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    try:
        subprocess.run([ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                        "--num-cpus", "2", "--include-dashboard", "false", "--temp-dir", temp_dir,
                        "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=180)
        out = subprocess.run(
            [sys.executable, "-m", "flhelpers", "grid", "--benchmarks", "mnist-iid", "--defenses", "lfighter",
             "--ratios", "0.4", *TINY_CLI, "--results-dir", str(tmp_path), "--executor", "ray",
             "--address", f"127.0.0.1:{port}", "--cpus-per-run", "1", "--no-progress"],
            # 600 s, not 300: with both cores busy (two CIFAR10 runs beside the test, 2026-12-02) the
            # checkpoint relay actor alone took 86 s to start on this cluster, and the grid missed 300 s
            env=env, capture_output=True, text=True, timeout=600)
    finally:
        stop_processes_using(temp_dir, timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1 run (1 computed, 0 reused)" in out.stdout and "on the ray executor" in out.stdout
    table = pd.read_csv(tmp_path / "tables" / "grid_summary.csv")
    assert list(table["defense"]) == ["lfighter"] and list(table["attacker_ratio"]) == [0.4]
    expected = [c.run_id() for c in configs if c.attacker_ratio == 0.4 and c.defense == "lfighter"]
    assert list(table["run_id"]) == expected
    _assert_same_runs(ref_dir, tmp_path, expected)  # numbers identical to the local executor's
    assert not processes_using(temp_dir)


@pytest.fixture(scope="module")
def local_ray():
    with warnings.catch_warnings():  # Ray's notice about GPU visibility of CPU-only tasks
        warnings.simplefilter("ignore", FutureWarning)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_grid_equals_local(local_ray, local_runs, data_root, tmp_path):
    ref_dir, configs, local = local_runs
    rows = run_grid(configs, data_root, tmp_path, progress=False, executor="ray", threads=1)
    assert not rows["reused"].any()
    pd.testing.assert_frame_equal(_numbers(rows), _numbers(local))
    _assert_same_runs(ref_dir, tmp_path, rows["run_id"])
    stored = load_results(tmp_path)  # written into the store exactly as a local run
    assert len(stored) == 4 and stored["finished"].all()


def test_only_the_missing_runs_are_computed(local_ray, local_runs, data_root, tmp_path):
    ref_dir, configs, local = local_runs
    kept = [c.run_id() for c in configs[:2]]
    for rid in kept:
        shutil.copytree(run_dir(ref_dir, rid), run_dir(tmp_path, rid))
    before = {rid: {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in run_dir(tmp_path, rid).iterdir()}
              for rid in kept}
    rows = run_grid(configs, data_root, tmp_path, progress=False, executor="ray", threads=1)
    assert list(rows["reused"]) == [True, True, False, False]
    for rid in kept:  # finished runs are not submitted, so not a byte or a timestamp changes
        after = {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in run_dir(tmp_path, rid).iterdir()}
        assert after == before[rid]
    pd.testing.assert_frame_equal(_numbers(rows), _numbers(local))
    _assert_same_runs(ref_dir, tmp_path, rows["run_id"])


def _record_bytes(store: Path, recorder, configs) -> dict[str, bytes]:
    """Every file of the records of ``configs`` in ``store``, by path relative to it."""
    out = {}
    for cfg in configs:
        for rel in recorder.outputs(cfg):
            path = store / rel
            for f in (sorted(path.rglob("*")) if path.is_dir() else [path]):
                out[f.relative_to(store).as_posix()] = f.read_bytes()
    return out


def test_ray_grid_records_runs_as_the_local_executor_does(local_ray, data_root, tmp_path):
    """A recorder on Ray: FedAvg's gradient capture (a whole-run record) and LFighter's per-round
    record come back with the runs, byte for byte the local executor's; a finished run whose record
    is missing is computed again for it, and only the record is written."""
    from flhelpers_lab.beyond import RECORDER
    from flhelpers_lab.compute import ReferenceRecorder

    configs = [c for c in _grid() if c.attacker_ratio == 0.4]  # FedAvg, LFighter
    recorder = ReferenceRecorder(frozenset({configs[0].run_id()}))
    local = run_grid(configs, data_root, tmp_path / "local", progress=False, threads=1, recorder=recorder)
    rows = run_grid(configs, data_root, tmp_path / "ray", progress=False, executor="ray", threads=1,
                    recorder=recorder)
    assert not rows["reused"].any()
    pd.testing.assert_frame_equal(_numbers(rows), _numbers(local))
    _assert_same_runs(tmp_path / "local", tmp_path / "ray", rows["run_id"])
    records = _record_bytes(tmp_path / "local", recorder, configs)
    assert {k.split("/")[0] for k in records} == {"captures", "records"} and len(records) >= 4
    assert _record_bytes(tmp_path / "ray", recorder, configs) == records
    lfighter = configs[1].run_id()
    (tmp_path / "ray" / "records" / f"{lfighter}.csv").unlink()
    before = {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in run_dir(tmp_path / "ray", lfighter).iterdir()}
    again = run_grid(configs, data_root, tmp_path / "ray", progress=False, executor="ray", threads=1,
                     recorder=RECORDER)
    assert list(again["reused"]) == [True, False]
    assert _record_bytes(tmp_path / "ray", recorder, configs) == records
    after = {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in run_dir(tmp_path / "ray", lfighter).iterdir()}
    assert after == before  # the finished run's files untouched
    # an interrupted run resumes on Ray with the record of its first round, which travels with its checkpoint
    import torch

    from flhelpers.fl.engine import run_experiment
    from flhelpers_lab.lfighter_record import LFighterRecorder, record_path

    part = tmp_path / "part"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_experiment(configs[1], data_root=data_root, results_dir=part, progress=False, stop_after=1,
                       on_round=LFighterRecorder(record_path(part, lfighter), 7, 1))
    finally:
        torch.set_num_threads(threads)
    header, first = record_path(part, lfighter).read_text().splitlines()  # round 0
    record_path(part, lfighter).write_text(f"{header}\n{first},seeded\n")  # marks the row that must travel
    resumed = run_grid(configs[1:], data_root, part, progress=False, executor="ray", threads=1, recorder=RECORDER)
    assert not resumed["reused"].any()
    whole = records[f"records/{lfighter}.csv"].decode().splitlines()
    assert record_path(part, lfighter).read_text().splitlines() == [header, f"{first},seeded", whole[2]]


def _task_workers(run_id: str) -> list[psutil.Process]:
    """This process's Ray workers executing the task of ``run_id`` (their title names the task)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a worker that exited (or is a zombie) meanwhile
            if any(f"flhelpers-run-{run_id}" in part for part in (p.cmdline() or [])):
                found.append(p)
    return found


def test_worker_killed_mid_grid_finishes_identically(local_ray, data_root, tmp_path):
    configs = _grid(rounds=30, train_subset=2000)[3:]  # LFighter at 40 % attackers
    ref = run_grid(configs, data_root, tmp_path / "local", progress=False, threads=1)
    out = tmp_path / "ray"
    result: dict = {}

    def grid() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result["rows"] = run_grid(configs, data_root, out, progress=False, executor="ray", threads=1,
                                          relay_every_s=0.0)
            except BaseException as exc:  # reported by the assertions below
                result["error"] = exc
        result["warnings"] = [str(w.message) for w in caught]

    thread = threading.Thread(target=grid)
    thread.start()
    victim, killed, relayed = configs[0].run_id(), None, None
    seen_worker = seen_checkpoint = False  # for the failure message
    deadline = time.monotonic() + 240
    # Kill once the run's first checkpoint has travelled to the driver's store (the driver drains
    # the relay every 0.5 s). The run is long enough (30 rounds of about 0.5 s here) that polling
    # cannot lose that race on a fast idle machine; an 8-round run once did (CI, 2026-12-02).
    while thread.is_alive() and time.monotonic() < deadline and killed is None:
        workers = _task_workers(victim)
        seen_worker |= bool(workers)
        if (run_dir(out, victim) / "checkpoint.pt").is_file():
            seen_checkpoint = True
            with contextlib.suppress(FileNotFoundError):  # the run finished meanwhile: reported below
                relayed = load_checkpoint(run_dir(out, victim), victim)  # at least this round reached the driver
            if workers and relayed is not None:
                for p in workers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGKILL)
                        killed = p.pid
        time.sleep(0.02)
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert killed is not None, (f"the run finished before its worker could be killed (its worker was "
                                f"{'' if seen_worker else 'never '}found, a relayed checkpoint "
                                f"{'was' if seen_checkpoint else 'was never'} seen)")
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    assert "error" not in result, result.get("error")
    retried = [w for w in result["warnings"] if f"Run {victim} finished at attempt 2" in w]
    assert len(retried) == 1, result["warnings"]
    # the retry resumed from a relayed checkpoint (a restart from round 0 gives equal numbers, so
    # the numbers below cannot tell): at the round after one that reached the driver before the
    # kill, or a later one, and it trained only the rounds from there
    found = re.search(r"resumed at round (\d+) from the last checkpoint.*It trained (\d+) of 30 rounds", retried[0])
    assert found, retried[0]
    resumed_at, trained = int(found.group(1)), int(found.group(2))
    assert relayed is not None and resumed_at >= int(relayed["round"]) + 1 >= 1
    assert trained == 30 - resumed_at < 30
    rows = result["rows"]
    pd.testing.assert_frame_equal(_numbers(rows), _numbers(ref))
    _assert_same_runs(tmp_path / "local", out, rows["run_id"])


def test_ray_options_are_checked_before_any_task(local_ray, tmp_path):
    from flhelpers.config import ConfigError

    configs = _grid()[:1]
    with pytest.raises(ConfigError, match="gpus_per_run=0.5 reserves GPUs.*device=cuda"):
        run_grid(configs, tmp_path, tmp_path, progress=False, executor="ray", gpus_per_run=0.5)
    with pytest.raises(ConfigError, match="need a GPU reserved for each.*--gpus-per-run"):
        run_grid([configs[0].replace(device="cuda")], tmp_path, tmp_path, progress=False, executor="ray")
    with pytest.raises(ValueError, match="workers is for the local executor"):
        run_grid(configs, tmp_path, tmp_path, progress=False, executor="ray", workers=2)
    assert not (tmp_path / "runs").exists()
