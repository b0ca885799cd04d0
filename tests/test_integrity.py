"""Issue 29, "Nothing silently wrong": a damaged checkpoint, a run on other data, hand-edited run
files, a killed ``--force``, two identical runs at once and a crafted CIFAR batch are each
caught, with a clear message, instead of giving wrong numbers or running code.

The runs are a tiny MNIST config (4 peers, 600 samples, FoolsGold so the checkpoint carries a
defense state); torch runs with one thread (conftest), here and in the subprocesses.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flhelpers.config import ExperimentConfig, benchmark_config
from flhelpers.data import load_dataset
from flhelpers.data.base import FLDataset
from flhelpers.data.cifar10 import load_cifar10, read_cifar_batch
from flhelpers.data.download import DataCorruptError
from flhelpers.fl.checkpoint import CHECKPOINT, load_checkpoint
from flhelpers.fl.engine import DataMismatchError, run_experiment
from flhelpers.results import (CONFIG, METRICS, METRICS_DIGEST, SUMMARY, claim_run, is_finished, load_results,
                               lock_path, recompute_dir)

CFG = benchmark_config("mnist-iid", "quick", num_peers=4, train_subset=600, test_subset=300, rounds=4,
                       attacker_ratio=0.25, defense="foolsgold", eval_every=1)
REPO = Path(__file__).resolve().parents[1]


def _caught(fn, *args, **kwargs):
    """``(fn's result, the messages of the warnings it raised)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory) -> bytes:
    """metrics.csv of an uninterrupted run of CFG."""
    res = run_experiment(CFG, data_root=data_root, results_dir=tmp_path_factory.mktemp("ref"), progress=False)
    return (res.path / METRICS).read_bytes()


# ----------------------------------------------------------------------------- 2: damaged checkpoint


def _damage_largest_tensor(ckpt: Path, n: int = 400) -> None:
    """Overwrite ``n`` bytes in the middle of the largest tensor record of a torch zip, keeping
    the file's size: the zip stays readable (torch does not check the CRCs)."""
    with zipfile.ZipFile(ckpt) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    raw = bytearray(ckpt.read_bytes())
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2 - n // 2
    raw[start:start + n] = bytes(b ^ 0xFF for b in raw[start:start + n])
    size = ckpt.stat().st_size
    ckpt.write_bytes(bytes(raw))
    assert ckpt.stat().st_size == size and torch.load(ckpt, weights_only=True)["round"] >= 0  # still loads


def test_damaged_checkpoint_is_ignored_with_a_warning_and_the_run_restarts(reference, data_root, tmp_path):
    part = run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False, stop_after=2)
    _damage_largest_tensor(part.path / CHECKPOINT)
    with pytest.warns(UserWarning, match="do not match their SHA-256"):
        done = run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False)
    assert "resumed_from" not in done.extra  # started afresh at round 0 ...
    assert (done.path / METRICS).read_bytes() == reference  # ... so the numbers are the uninterrupted run's


def test_checkpoint_records_a_digest_and_an_intact_one_resumes(data_root, tmp_path):
    part = run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False, stop_after=1)
    assert len(torch.load(part.path / CHECKPOINT, weights_only=True)["sha256"]) == 64
    state, msgs = _caught(load_checkpoint, part.path, CFG.run_id())
    assert state["round"] == 0 and msgs == []


# ----------------------------------------------------------------------------- 3: the data a run used


def _cut(ds: FLDataset, n: int) -> FLDataset:
    return FLDataset(ds.name, ds.train_x[:n], ds.train_y[:n], ds.test_x, ds.test_y, ds.num_classes,
                     ds.class_names, ds.mean, ds.std, dict(ds.meta))


def test_a_run_on_cut_data_is_not_reused_for_the_full_data(data_root, tmp_path):
    cfg = CFG.replace(rounds=2)
    full = load_dataset("mnist", data_root)
    first = run_experiment(cfg, results_dir=tmp_path, progress=False, dataset=_cut(full, 2000))
    record = json.loads((first.path / CONFIG).read_text())["data"]
    assert record["train_samples"] == 600 and len(record["train_sha256"]) == 64
    assert record["source_files"]["train-images-idx3-ubyte"] == 47040016  # what the loader read
    assert cfg.run_id() == first.run_id  # the record is not in the run id
    with pytest.raises(DataMismatchError, match=r"other data .* force=True \(--force\).*--results-dir"):
        run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False)
    again = run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False, force=True)
    assert not again.reused
    assert run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False).reused


def test_a_run_started_on_other_data_is_not_resumed(data_root, tmp_path):
    full = load_dataset("mnist", data_root)
    run_experiment(CFG, results_dir=tmp_path, progress=False, dataset=_cut(full, 2000), stop_after=1)
    with pytest.raises(DataMismatchError, match="other data"):
        run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False)


def test_runs_written_before_the_data_record_are_reused_unchecked(data_root, tmp_path):
    cfg = CFG.replace(rounds=1)
    cut = _cut(load_dataset("mnist", data_root), 2000)
    first = run_experiment(cfg, results_dir=tmp_path, progress=False, dataset=cut)
    record = json.loads((first.path / CONFIG).read_text())
    del record["data"]  # as config.json files of the committed runs
    (first.path / CONFIG).write_text(json.dumps(record))
    assert run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False).reused


def test_a_cut_imdb_csv_warns(data_root, tmp_path):
    reviews = pd.read_csv(data_root / "imdb.csv.gz", nrows=2000)
    reviews.to_csv(tmp_path / "imdb.csv", index=False)
    from flhelpers.data.imdb import load_imdb

    with pytest.warns(UserWarning, match=r"IMDB in .*imdb.csv holds 1600 training and 400 test samples, fewer "
                                         r"than the standard 40,000 and 10,000"):
        ds = load_imdb(tmp_path, cache=False)
    assert ds.meta["source_files"] == {"imdb.csv": (tmp_path / "imdb.csv").stat().st_size}


def _write_mnist(raw: Path, n_train: int, n_test: int) -> None:
    """MNIST idx files with ``n_train`` / ``n_test`` blank images."""
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(n * 784))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes((2049).to_bytes(4, "big") + n.to_bytes(4, "big") + bytes(n))


def test_short_mnist_and_cifar_warn_and_full_mnist_does_not(data_root, tmp_path):
    from flhelpers.data.mnist import load_mnist

    _write_mnist(tmp_path / "MNIST" / "raw", 500, 100)
    with pytest.warns(UserWarning, match="MNIST in .* holds 500 training and 100 test samples, fewer"):
        load_mnist(tmp_path, download=False)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1, 2]}, f)
    with pytest.warns(UserWarning, match="CIFAR-10 in .* holds 15 training and 3 test samples, fewer than the "
                                         "standard 50,000 and 10,000"):
        load_cifar10(tmp_path, download=False)
    _, msgs = _caught(load_mnist, data_root, download=False)
    assert not [m for m in msgs if "fewer than" in m]


# ----------------------------------------------------------------------------- 7: hand edits


def test_a_config_edited_by_hand_is_not_read_as_its_run(data_root, tmp_path):
    cfg = CFG.replace(rounds=1)
    first = run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False)
    record = json.loads((first.path / CONFIG).read_text())
    record["config"]["defense"] = "median"  # the numbers are FoolsGold's
    (first.path / CONFIG).write_text(json.dumps(record))
    table, msgs = _caught(load_results, tmp_path)
    assert table.empty and any(f"hashes to run id {cfg.replace(defense='median').run_id()}, not to its folder's "
                               f"{first.run_id}" in m for m in msgs)
    with pytest.warns(UserWarning, match="Recomputing run .* hashes to run id"):
        again = run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False)
    assert not again.reused and load_results(tmp_path)["defense"].tolist() == ["foolsgold"]


def test_a_summary_without_its_digest_is_not_trusted(data_root, tmp_path):
    cfg = CFG.replace(rounds=1)
    first = run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False)
    summary = json.loads((first.path / SUMMARY).read_text())
    del summary[METRICS_DIGEST]
    (first.path / SUMMARY).write_text(json.dumps(summary))
    (first.path / METRICS).write_text((first.path / METRICS).read_text().replace("0.", "0.9", 1))  # edited
    table, msgs = _caught(load_results, tmp_path, per_round=True)
    assert table.empty and any(f"has no {METRICS_DIGEST}" in m for m in msgs)
    with pytest.warns(UserWarning, match=f"Recomputing run .* has no {METRICS_DIGEST}"):
        assert not run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False).reused


def test_every_committed_run_hashes_to_its_folder_and_records_its_digest():
    configs = sorted((REPO / "results").glob("**/runs/*/config.json"))
    assert len(configs) > 100
    for path in configs:
        rid = ExperimentConfig.from_dict(json.loads(path.read_text())["config"]).run_id()
        assert rid == path.parent.name, path
        if (path.parent / SUMMARY).is_file():
            assert METRICS_DIGEST in json.loads((path.parent / SUMMARY).read_text()), path


# ----------------------------------------------------------------------------- 8: --force keeps the old result

SLOW_RUN = textwrap.dedent("""
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    import flhelpers.fl.engine as engine
    from flhelpers.config import ExperimentConfig
    train = engine.train_attacked_round
    def slow(*args, **kwargs):
        time.sleep(float(sys.argv[5]))
        return train(*args, **kwargs)
    engine.train_attacked_round = slow
    import flhelpers.results.locks
    flhelpers.results.locks.LOCK_POLL_S = 0.2
    cfg = ExperimentConfig.from_dict(json.loads(sys.argv[1]))
    res = engine.run_experiment(cfg, data_root=sys.argv[2], results_dir=sys.argv[3], progress=False,
                                force=sys.argv[4] == "force")
    print(json.dumps({"reused": res.reused}), flush=True)
""")


def _start(cfg, data_root, results_dir, force: bool = False, sleep: float = 0.5) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SLOW_RUN, json.dumps(cfg.to_dict()), str(data_root),
                             str(results_dir), "force" if force else "-", str(sleep)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_kill_during_force_keeps_the_finished_result(reference, data_root, tmp_path):
    first = run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False)
    proc = _start(CFG, data_root, tmp_path, force=True)
    try:
        deadline = time.monotonic() + 180
        while not (recompute_dir(first.path) / CHECKPOINT).is_file():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the forced run wrote no checkpoint within 180 s"
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert is_finished(first.path) and (first.path / METRICS).read_bytes() == reference
    assert len(load_results(tmp_path)) == 1
    assert run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False).reused
    # a force that completes replaces the result and leaves no sibling folder behind
    again = run_experiment(CFG, data_root=data_root, results_dir=tmp_path, progress=False, force=True)
    assert not again.reused and again.path == first.path and not recompute_dir(first.path).exists()
    assert (first.path / METRICS).read_bytes() == reference


def test_a_swap_cut_short_between_its_renames_is_completed(data_root, tmp_path):
    cfg = CFG.replace(rounds=1)
    first = run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False)
    aside = first.path.parent / f".{first.run_id}.replaced"
    os.replace(first.path, aside)  # killed after moving the old run aside, before the new one came in
    res = run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False)
    assert res.reused and is_finished(first.path) and not aside.exists()


# ----------------------------------------------------------------------------- 11: one run at a time


def test_two_identical_runs_started_together_compute_it_once(data_root, tmp_path):
    procs = [_start(CFG, data_root, tmp_path, sleep=1.0) for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    reused = sorted(json.loads(out.strip().splitlines()[-1])["reused"] for out, _ in outs)
    assert reused == [False, True]  # one computed, the other waited and reused it
    waiter = next(err for (out, err) in outs if '"reused": true' in out)
    assert f"Run {CFG.run_id()} is being computed by process" in waiter
    assert not lock_path(tmp_path, CFG.run_id()).exists()


def test_a_run_inside_claim_run_does_not_wait_for_itself_and_a_dead_holder_is_replaced(data_root, tmp_path):
    cfg = CFG.replace(rounds=1)
    done = {}

    def inside_claim():
        with claim_run(tmp_path, cfg.run_id()) as mine:
            assert mine
            done["result"] = run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False)

    worker = threading.Thread(target=inside_claim, daemon=True)
    worker.start()
    worker.join(timeout=300)
    assert not worker.is_alive() and not done["result"].reused
    # a lock left by a process that was killed: taken over, no wait
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other = cfg.replace(seed=1)
    lock = lock_path(tmp_path, other.run_id())
    lock.write_text(f"{dead.pid} {socket.gethostname()}\n")
    res, msgs = _caught(run_experiment, other, data_root=data_root, results_dir=tmp_path, progress=False)
    assert not res.reused and not lock.exists() and not [m for m in msgs if "being computed" in m]


def test_a_lock_naming_no_holder_is_reported_not_waited_for(tmp_path):
    from flhelpers.results import RunLockedError

    lock = lock_path(tmp_path, CFG.run_id())
    lock.parent.mkdir(parents=True)
    lock.touch()  # as claim_run made them before they named their holder
    old = time.time() - 60
    os.utime(lock, (old, old))
    with pytest.raises(RunLockedError, match=f"{CFG.run_id()} is locked by .*names no process.*delete the lock"):
        run_experiment(CFG, results_dir=tmp_path, progress=False)
    assert lock.exists()  # not ours to remove


# ----------------------------------------------------------------------------- 12: CIFAR pickles


class _System:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Exec:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        import builtins

        return (builtins.exec, (self.code,))


@pytest.mark.parametrize("payload", ["system", "exec"])
def test_a_crafted_cifar_batch_cannot_run_code(tmp_path, payload):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    evil = _System(f"touch {marker}") if payload == "system" else _Exec(f"open({str(marker)!r}, 'w').close()")
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"data": evil, "labels": [0]}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((1, 3072), np.uint8), "labels": [0]}, f)
    with pytest.raises(DataCorruptError, match=r"data_batch_1: UnpicklingError: it refers to .*(system|exec), "
                                               r"which a CIFAR-10 batch never holds"):
        load_cifar10(tmp_path, download=False)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_cifar_batches_of_every_pickle_protocol_still_load(tmp_path, protocol):
    images = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    with open(tmp_path / "batch", "wb") as f:
        pickle.dump({"data": images, "labels": [3, np.int64(5)], "batch_label": b"training batch 1 of 5",
                     "filenames": ["a.png", "b.png"]}, f, protocol=protocol)
    x, y = read_cifar_batch(tmp_path / "batch")
    assert torch.equal(x, torch.from_numpy(images.reshape(2, 3, 32, 32))) and y.tolist() == [3, 5]


def test_the_real_cifar_test_batch_still_loads(data_root):
    path = data_root / "cifar-10-batches-py" / "test_batch"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    x, y = read_cifar_batch(path)
    assert x.shape == (10000, 3, 32, 32) and torch.bincount(y, minlength=10).tolist() == [1000] * 10
