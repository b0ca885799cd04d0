"""The prepared GPU module (flhelpers_lab.investigations.gpu_paper_cifar) at a CPU-sized run, so
a lent GPU's minutes are not spent debugging it (issue 18, section 3)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = "flhelpers_lab.investigations.gpu_paper_cifar"


def _run(*args: str, data_root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", MODULE, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900, check=True)


def test_pack_keeps_batch_one_and_500_test_images_a_class(data_root, tmp_path):
    _run("--pack", str(tmp_path), "--data-root", str(data_root), data_root=data_root)
    folder = tmp_path / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == ["data_batch_1", "test_batch"]
    with open(folder / "test_batch", "rb") as f:
        test = pickle.load(f)
    assert test["data"].shape == (5000, 3072) and test["data"].dtype == np.uint8
    assert np.bincount(test["labels"], minlength=10).tolist() == [500] * 10
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 50 * 2**20  # leaves room for the working tree within the device's 64 MiB


def _tiny(tmp_path: Path, data_root: Path, budget_s: int) -> tuple[Path, dict]:
    """The script at ``--tiny`` on the CPU: its output folder and ``gpu_timings.json``."""
    out, store = tmp_path / "out", tmp_path / "store"
    _run("--tiny", "--device", "cpu", "--budget-s", str(budget_s), "--out", str(out), "--store", str(store),
         "--data-root", str(data_root), data_root=data_root)
    return out, json.loads((out / "gpu_timings.json").read_text())


@pytest.mark.slow
def test_tiny_run_writes_both_runs_and_their_timings(data_root, tmp_path):
    out, report = _tiny(tmp_path, data_root, 3000)
    assert [r["defense"] for r in report["runs"]] == ["fedavg", "lfighter"]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8  # what the device sends back
    for run in report["runs"]:
        assert run["finished"] and run["rounds_done"] == run["rounds"] == 2
        assert run["peers_per_s"] > 0 and run["train_s_per_round"] > 0
        metrics = pd.read_csv(out / run["run_id"] / "metrics.csv")
        assert metrics["round"].tolist() == [0, 1]
        record = json.loads((out / run["run_id"] / "config.json").read_text())
        assert record["config"]["backend"] == "vectorized" and record["trainer"] == "vectorized"
        assert record["config"]["dataset_kwargs"] == {"train_batches": 1} and record["config"]["drop_last"]
        assert run["summary"]["rounds"] == 2


@pytest.mark.slow
def test_a_short_budget_stops_after_the_first_round(data_root, tmp_path):
    _, report = _tiny(tmp_path, data_root, 1)
    assert [(r["rounds_done"], r["finished"]) for r in report["runs"]] == [(1, False), (1, False)]
