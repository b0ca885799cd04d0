"""Checkpoint and resume, atomic writes, and safe loading of the results store.

The reference is an uninterrupted run of a tiny MNIST config (4 peers, 1,000 samples, 6
rounds, FoolsGold, so the defense has state to carry). Every interrupted variant, killed with
SIGKILL in a subprocess, stopped, or crashed while writing, must end with a byte-identical
``metrics.csv``. Torch runs with one CPU thread here and in the subprocesses: float sums
depend on the thread count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from flhelpers.fl.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from flhelpers.config import benchmark_config
from flhelpers.defenses.foolsgold import FoolsGold
from flhelpers.fl.engine import run_experiment
from flhelpers.results import (METRICS, SUMMARY, TIMINGS, atomic_write_csv, atomic_write_json,
                               atomic_write_text, is_finished, load_results, recompute_dir, run_dir)

CFG = benchmark_config("mnist-iid", "quick", num_peers=4, train_subset=600, test_subset=300, rounds=6,
                       attacker_ratio=0.25, defense="foolsgold", eval_every=2)
SHORT = CFG.replace(rounds=3)  # for checks that need no reference

KILLED_RUN = textwrap.dedent("""
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    from flhelpers.config import ExperimentConfig
    from flhelpers.fl.engine import run_experiment
    cfg = ExperimentConfig.from_dict(json.loads(sys.argv[1]))
    run_experiment(cfg, data_root=sys.argv[2], results_dir=sys.argv[3], progress=False,
                   on_round=lambda rec: time.sleep(0.4))  # slow enough to be killed mid-way
""")


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory) -> bytes:
    res = run_experiment(CFG, data_root=data_root, results_dir=tmp_path_factory.mktemp("ref"), progress=False)
    assert len(res.metrics) == 3 and len(res.timings) == 6
    return (res.path / METRICS).read_bytes()


def _quiet_load(results_dir, **kw) -> tuple[pd.DataFrame, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = load_results(results_dir, **kw)
    return table, [str(w.message) for w in caught]


# ----------------------------------------------------------------------------- kill and resume


def test_sigkill_mid_run_then_rerun_matches_uninterrupted(reference, data_root, tmp_path):
    path = run_dir(tmp_path, CFG.run_id())
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, json.dumps(CFG.to_dict()), str(data_root),
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = load_checkpoint(path, CFG.run_id()) if (path / CHECKPOINT).exists() else None
            if state is not None and state["round"] >= 2:
                break
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            time.sleep(0.05)
        else:
            pytest.fail("the subprocess wrote no checkpoint of round 2 within 120 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not is_finished(path), "the run finished before it was killed: slow it down"
    # the killed run's partial metrics.csv is never taken for a finished run
    table, msgs = _quiet_load(tmp_path)
    assert table.empty and any("1 unfinished run" in m and CFG.run_id() in m for m in msgs)

    resumed = run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False)
    assert 3 <= resumed.extra["resumed_from"] < CFG.rounds
    assert (path / METRICS).read_bytes() == reference
    assert list(pd.read_csv(path / TIMINGS)["round"]) == list(range(6))
    assert not (path / CHECKPOINT).exists()
    assert len(load_results(tmp_path)) == 1


@pytest.mark.parametrize("every,stop", [(1, 3), (4, 1)])
def test_checkpoint_interval_independent_of_eval_every(reference, data_root, tmp_path, every, stop):
    """Stops between evaluations carry the pending per-round counts in the checkpoint."""
    part = run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False,
                          checkpoint_every=every, stop_after=stop)
    assert part.extra["unfinished"] and not is_finished(part.path)
    state = torch.load(part.path / CHECKPOINT, weights_only=True)
    assert state["round"] == stop - 1
    pending = state["progress"]["pending"]
    assert pending["rounds_since_eval"] == stop % CFG.eval_every
    assert len(state["progress"]["rows"]) == stop // CFG.eval_every
    done = run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False, checkpoint_every=every)
    assert done.extra["resumed_from"] == stop
    assert (done.path / METRICS).read_bytes() == reference


def test_checkpoint_holds_model_rng_defense_and_only_latest_is_kept(data_root, tmp_path):
    import random

    import numpy as np

    part = run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False, stop_after=2)
    files = sorted(p.name for p in part.path.iterdir())
    assert files == [CHECKPOINT, "config.json", METRICS, TIMINGS]  # one checkpoint, no temporaries
    state = torch.load(part.path / CHECKPOINT, weights_only=True)
    assert state["run_id"] == CFG.run_id() and state["round"] == 1
    exp = part.extra["experiment"]
    assert state["fingerprint"]["attackers"] == exp.attackers.tolist()
    assert set(state["defense"]) == {"peer_ids", "history"} and state["defense"]["history"].shape[0] == 4
    from flhelpers.params import flatten_params
    assert state["global_params"].shape == flatten_params(exp.model).shape
    # the global python and numpy generators are restored on resume (the engine draws nothing
    # from them, so the next checkpoint holds the same states)
    random.seed(123)
    np.random.seed(123)
    run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False, stop_after=3)
    later = load_checkpoint(part.path)
    assert later["round"] == 2
    assert later["rng"]["python"] == state["rng"]["python"]
    assert torch.equal(later["rng"]["numpy"]["keys"], state["rng"]["numpy"]["keys"])
    random.seed(123)
    assert later["rng"]["python"] != random.getstate()


def test_defense_state_is_what_makes_resume_exact(reference, data_root, tmp_path, monkeypatch):
    """Drop FoolsGold's history on resume: the metrics differ (so the byte checks can fail)."""
    run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False, stop_after=4)
    monkeypatch.setattr(FoolsGold, "load_state_dict", lambda self, state: None)
    done = run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False)
    assert done.extra["resumed_from"] == 4
    assert (done.path / METRICS).read_bytes() != reference


def test_unusable_checkpoints_are_ignored_with_a_warning(reference, data_root, tmp_path):
    part = run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False, stop_after=3)
    ckpt = part.path / CHECKPOINT
    good = torch.load(ckpt, weights_only=True)
    spoilt = {
        "unreadable": lambda: ckpt.write_bytes(b"not a checkpoint"),
        "format": lambda: torch.save({**good, "format": 1}, ckpt),
        "belongs to run": lambda: save_checkpoint(part.path, {**good, "run_id": "0123456789abcdef"}),
        "partition or the attackers": lambda: save_checkpoint(
            part.path, {**good, "fingerprint": {**good["fingerprint"], "attackers": [0]}}),
    }
    for match, spoil in spoilt.items():
        spoil()
        with pytest.warns(UserWarning, match=match):
            again = run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False,
                                   stop_after=1)
        assert "resumed_from" not in again.extra  # started afresh, and checkpointed round 0
    done = run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False)
    assert done.extra["resumed_from"] == 1
    assert (done.path / METRICS).read_bytes() == reference


def test_checkpoint_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": 2, "payload": Evil()}, tmp_path / CHECKPOINT)
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        assert load_checkpoint(tmp_path) is None
    assert not marker.exists()


def test_on_round_sees_the_resumed_rounds_and_force_restarts(data_root, tmp_path):
    run_experiment(SHORT, data_root=data_root, results_dir=tmp_path, progress=False, stop_after=1)
    seen = []
    res = run_experiment(SHORT, data_root=data_root, results_dir=tmp_path, progress=False,
                         on_round=lambda rec: seen.append(rec.round))
    assert seen == [1, 2] and res.extra["resumed_from"] == 1
    seen.clear()  # a finished run recomputed for a callback starts at round 0
    again = run_experiment(SHORT, data_root=data_root, results_dir=tmp_path, progress=False,
                           on_round=lambda rec: seen.append(rec.round))
    assert seen == [0, 1, 2] and not again.reused
    # force recomputes a finished run beside it (runs/.<id>.recompute); the finished one stays
    part = run_experiment(SHORT, data_root=data_root, results_dir=tmp_path, progress=False, stop_after=1, force=True)
    assert part.path == recompute_dir(res.path) and is_finished(res.path)
    assert load_checkpoint(part.path)["round"] == 0 and not is_finished(part.path)
    run_experiment(SHORT, data_root=data_root, results_dir=tmp_path, progress=False, stop_after=2, force=True)
    assert load_checkpoint(part.path)["round"] == 1  # force recomputed rounds 0 and 1


# ----------------------------------------------------------------------------- nothing half-written


def test_crash_between_temporary_write_and_rename_keeps_previous_state(tmp_path, monkeypatch):
    target = tmp_path / METRICS
    atomic_write_csv(target, pd.DataFrame({"round": [0], "accuracy": [0.5]}))
    save_checkpoint(tmp_path, {"round": 0, "x": torch.ones(3)})
    before = target.read_bytes()

    def crash(src, dst):
        assert Path(src).read_bytes()  # the new contents were written and flushed
        raise OSError("injected crash before the rename")

    monkeypatch.setattr("flhelpers.results.files.os.replace", crash)
    with pytest.raises(OSError, match="injected"):
        atomic_write_csv(target, pd.DataFrame({"round": [0, 1], "accuracy": [0.5, 0.6]}))
    with pytest.raises(OSError, match="injected"):
        atomic_write_json(tmp_path / SUMMARY, {"accuracy": 1.0})
    with pytest.raises(OSError, match="injected"):
        save_checkpoint(tmp_path, {"round": 1, "x": torch.zeros(3)})
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert not (tmp_path / SUMMARY).exists()
    assert load_checkpoint(tmp_path)["round"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, METRICS]  # no temporaries left


KILLED_WRITE = textwrap.dedent("""
    import importlib.util, json, os, pathlib, signal, sys
    import pandas as pd
    spec = importlib.util.spec_from_file_location("files", sys.argv[2])  # no torch import: faster
    results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results)
    path = pathlib.Path(sys.argv[1], "runs", sys.argv[3])  # the run id of the config below
    results.atomic_write_json(path / "config.json", {"config": json.loads(sys.argv[4])})
    text = results.csv_text(pd.DataFrame({"round": [0, 1], "accuracy": [0.25, 0.5]}))
    results.atomic_write_text(path / "metrics.csv", text)
    results.atomic_write_json(path / "summary.json", {"accuracy": 0.5, "metrics_sha256": results.sha256_text(text)})
    os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)  # die between write and rename
    results.atomic_write_csv(path / "metrics.csv", pd.DataFrame({"round": [0], "accuracy": [0.9]}))
""")


def test_sigkill_between_write_and_rename_leaves_a_readable_store(tmp_path):
    import flhelpers.results.files
    from flhelpers.config import ExperimentConfig

    cfg = ExperimentConfig(seed=0, defense="median")  # config.json must hash to the folder's run id
    out = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(tmp_path), flhelpers.results.files.__file__,
                          cfg.run_id(), json.dumps(cfg.to_dict())], capture_output=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr.decode()[-2000:]
    path = tmp_path / "runs" / cfg.run_id()
    strays = list(path.glob(".metrics.csv.*.tmp"))
    assert len(strays) == 1  # the new file never replaced the old one
    table = load_results(tmp_path, per_round=True)
    assert table["accuracy"].tolist() == [0.25, 0.5]
    assert load_results(tmp_path)["accuracy"].tolist() == [0.5]


def test_crash_while_finishing_leaves_an_unfinished_resumable_run(reference, data_root, tmp_path, monkeypatch):
    def write_json(path, obj, **kw):
        if path.name == SUMMARY:
            raise OSError("disk full")
        atomic_write_json(path, obj, **kw)

    monkeypatch.setattr("flhelpers.fl.engine.atomic_write_json", write_json)
    with pytest.raises(OSError, match="disk full"):
        run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False)
    monkeypatch.undo()
    path = run_dir(tmp_path, CFG.run_id())
    assert (path / METRICS).read_bytes() == reference  # complete, yet without a summary ...
    table, msgs = _quiet_load(tmp_path)
    assert table.empty and any("unfinished" in m for m in msgs)  # ... it is not a finished run
    done = run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False)
    assert done.extra["resumed_from"] == 5 and (path / METRICS).read_bytes() == reference


def test_recomputing_a_finished_run_keeps_it_until_the_new_one_is_complete(data_root, tmp_path):
    first = run_experiment(SHORT, data_root=data_root, results_dir=tmp_path, progress=False)
    before = (first.path / METRICS).read_bytes()

    def boom(rec):
        if rec.round == 1:
            raise RuntimeError("crash mid-way")

    with pytest.raises(RuntimeError, match="mid-way"):
        run_experiment(SHORT, data_root=data_root, results_dir=tmp_path, progress=False, force=True, on_round=boom)
    assert is_finished(first.path) and (first.path / METRICS).read_bytes() == before
    table, msgs = _quiet_load(tmp_path)
    assert len(table) == 1 and not any("unfinished" in m or "damaged" in m for m in msgs)


def test_metrics_changed_after_finishing_is_detected(data_root, tmp_path):
    res = run_experiment(CFG.replace(rounds=2, eval_every=1), data_root=data_root, results_dir=tmp_path,
                         progress=False)
    text = (res.path / METRICS).read_text()
    (res.path / METRICS).write_text(text.splitlines()[0] + "\n" + text.splitlines()[1] + "\n")  # truncated
    table, msgs = _quiet_load(tmp_path, per_round=True)
    assert table.empty and any("damaged" in m and "SHA-256" in m for m in msgs)
    with pytest.warns(UserWarning, match="Recomputing"):
        again = run_experiment(res.config, data_root=data_root, results_dir=tmp_path, progress=False)
    assert not again.reused and (res.path / METRICS).read_text() == text


def test_load_results_can_include_unfinished_runs(data_root, tmp_path):
    run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False, stop_after=4)
    table, msgs = _quiet_load(tmp_path, per_round=True, include_unfinished=True)
    assert list(table["round"]) == [1, 3] and not table["finished"].any() and not msgs
    timings, _ = _quiet_load(tmp_path, timings=True, include_unfinished=True)
    assert list(timings["round"]) == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- safe paths


@pytest.mark.parametrize("bad", ["../evil", "a/b", "/etc", "..", "", ".hidden", "x" * 129, "a\\b", "a..b"])
def test_run_ids_cannot_leave_the_results_directory(tmp_path, bad):
    with pytest.raises(ValueError, match="run id"):
        run_dir(tmp_path, bad)


def test_symlinked_run_folder_pointing_outside_is_refused(tmp_path):
    (tmp_path / "res" / "runs").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "res" / "runs" / "abc").symlink_to(tmp_path / "outside")
    with pytest.raises(ValueError, match="outside"):
        run_dir(tmp_path / "res", "abc")
    assert run_dir(tmp_path / "res", "abd") == (tmp_path / "res" / "runs" / "abd").resolve()


def test_atomic_text_write_round_trip(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "héllo\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"


def test_claim_run_holds_the_lock_once_and_frees_it_even_on_error(tmp_path):
    from flhelpers.results import claim_run

    lock = tmp_path / "runs" / "abc.lock"
    with claim_run(tmp_path, "abc") as mine:
        assert mine and lock.is_file()
        with claim_run(tmp_path, "abc") as second:  # another process sees it taken
            assert not second
        assert lock.is_file()  # the refused claim left the holder's lock alone
    assert not lock.exists()
    try:
        with claim_run(tmp_path, "abc") as mine:
            assert mine
            raise RuntimeError("a run that fails")
    except RuntimeError:
        pass
    assert not lock.exists()
