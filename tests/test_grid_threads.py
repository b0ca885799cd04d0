"""The grid's default torch thread count is the same on every executor (one per run), so the same
command gives the same numbers locally and on Ray whatever the machine's core count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flhelpers.fl.grid import DEFAULT_THREADS, run_grid
from flhelpers.fl.ray_executor import RayOptions
from flhelpers.results import run_dir
from flhelpers.fl.grid import make_grid


@pytest.mark.slow
def test_local_grid_uses_the_ray_default_thread_count(tmp_path: Path, data_root: Path) -> None:
    configs = make_grid("mnist-iid", "quick", defenses=["fedavg"], attacker_ratios=[0.0], rounds=1,
                        num_peers=5, train_subset=600, test_subset=200)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a process with more threads than the default
    try:
        run_grid(configs, data_root, tmp_path, progress=False)
        assert torch.get_num_threads() == 2  # restored after the run
    finally:
        torch.set_num_threads(before)
    recorded = json.loads((run_dir(tmp_path, configs[0].run_id()) / "config.json").read_text())
    assert recorded["torch_num_threads"] == DEFAULT_THREADS == RayOptions().torch_threads == 1
