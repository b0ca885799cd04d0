"""A grid's per-run recorder (flhelpers.fl.executors.RunRecorder): built in the worker that computes a
run, told when it ends, its files in the store; a finished run whose record is missing is computed
again for it without its files being rewritten; a whole-run record starts an unfinished run over."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from flhelpers.config import ExperimentConfig
from flhelpers.fl.engine import run_experiment
from flhelpers.fl.executors import (RECORD_PREFIX, read_record_files, same_metrics, write_record_files)
from flhelpers.fl.grid import RunRecorder, RunRecording, make_grid, run_grid
from flhelpers.results import run_dir

TINY = dict(rounds=2, num_peers=5, train_subset=600, test_subset=200)


class _Log(RunRecording):
    """Appends ``round <r>`` after each aggregation and ``end <rounds>`` when the run ends."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _write(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def __call__(self, record: Any) -> None:
        self._write(f"round {record.round}")

    def finish(self, result: Any) -> None:
        self._write(f"end {len(result.metrics)}")


@dataclass(frozen=True)
class RoundLog(RunRecorder):
    """A test recorder: ``log/<run-id>.txt`` (``whole``: the log needs every round)."""

    whole: bool = False

    def outputs(self, cfg: ExperimentConfig) -> tuple[str, ...]:
        return (f"log/{cfg.run_id()}.txt",)

    def whole_run(self, cfg: ExperimentConfig) -> bool:
        return self.whole

    def start(self, cfg: ExperimentConfig, results_dir: Path) -> RunRecording:
        return _Log(Path(results_dir) / "log" / f"{cfg.run_id()}.txt")


def _grid() -> list[ExperimentConfig]:
    return make_grid("mnist-iid", "quick", defenses=["fedavg", "lfighter"], attacker_ratios=[0.4], **TINY)


def _run_files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_each_computed_run_is_recorded_and_a_missing_record_is_computed_beside_the_run(data_root, tmp_path, workers):
    configs = _grid()
    plain = run_grid(configs, data_root, tmp_path / "plain", progress=False)
    rows = run_grid(configs, data_root, tmp_path, progress=False, workers=workers, recorder=RoundLog())
    assert not rows["reused"].any()
    for cfg in configs:
        assert (tmp_path / "log" / f"{cfg.run_id()}.txt").read_text() == "round 0\nround 1\nend 2\n"
        same = (run_dir(tmp_path, cfg.run_id()) / "metrics.csv").read_bytes()
        assert same == (run_dir(tmp_path / "plain", cfg.run_id()) / "metrics.csv").read_bytes()
    assert list(plain["run_id"]) == list(rows["run_id"])
    assert run_grid(configs, data_root, tmp_path, progress=False, workers=workers, recorder=RoundLog())["reused"].all()
    # the record of one finished run goes missing: only it is computed again, in a temporary store
    lost = configs[1].run_id()
    (tmp_path / "log" / f"{lost}.txt").unlink()
    before = _run_files(run_dir(tmp_path, lost))
    again = run_grid(configs, data_root, tmp_path, progress=False, workers=workers, recorder=RoundLog())
    assert list(again["reused"]) == [True, False]
    assert (tmp_path / "log" / f"{lost}.txt").read_text() == "round 0\nround 1\nend 2\n"
    assert _run_files(run_dir(tmp_path, lost)) == before  # not a byte or a timestamp of the run changed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log", "plain", "runs"]  # no temporary store left


@pytest.mark.slow
def test_a_resumed_run_appends_and_a_whole_run_record_starts_over(data_root, tmp_path):
    cfg = _grid()[1]
    for whole, expected in ((False, "round 1\nend 2\n"), (True, "round 0\nround 1\nend 2\n")):
        store = tmp_path / str(whole)
        run_experiment(cfg, data_root=data_root, results_dir=store, progress=False, stop_after=1)
        rows = run_grid([cfg], data_root, store, progress=False, recorder=RoundLog(whole),
                        threads=torch.get_num_threads())  # the thread count the first round had
        assert (store / "log" / f"{cfg.run_id()}.txt").read_text() == expected
        assert not rows["reused"].any()
    metrics = [(tmp_path / str(w) / "runs" / cfg.run_id() / "metrics.csv").read_bytes() for w in (False, True)]
    assert metrics[0] == metrics[1]


def test_record_files_travel_as_bytes_and_a_folder_is_replaced_whole(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "records").mkdir(parents=True)
    (src / "records" / "a.csv").write_text("x\n1\n")
    (src / "captures" / "c-r1").mkdir(parents=True)
    (src / "captures" / "c-r1" / "pca.csv").write_text("p\n")
    (src / "captures" / "c-r1" / "capture.json").write_text("{}")
    outputs = ("records/a.csv", "captures/c-r1", "records/missing.csv")
    files = read_record_files(src, outputs)
    assert sorted(files) == [RECORD_PREFIX + "captures/c-r1/capture.json", RECORD_PREFIX + "captures/c-r1/pca.csv",
                             RECORD_PREFIX + "records/a.csv"]
    (dst / "captures" / "c-r1").mkdir(parents=True)
    (dst / "captures" / "c-r1" / "stale.csv").write_text("old")
    write_record_files(dst, {**files, "metrics.csv": b"ignored"}, outputs)
    assert (dst / "records" / "a.csv").read_text() == "x\n1\n"
    assert sorted(p.name for p in (dst / "captures" / "c-r1").iterdir()) == ["capture.json", "pca.csv"]
    assert sorted(p.name for p in dst.iterdir()) == ["captures", "records"]
    assert same_metrics(b"round,a\n0,0.5\n", b"round,a\n0,0.5000001\n")
    assert not same_metrics(b"round,a\n0,0.5\n", b"round,a\n0,0.51\n")
    assert not same_metrics(b"round,a\n0,0.5\n", b"round,b\n0,0.5\n")
