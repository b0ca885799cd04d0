"""The privacy notebook: in sync with its generator, and every cell runs (smoke profile)."""

import os
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from flhelpers.defenses.accountant import epsilon_of
from flhelpers_lab.reproduce import ensure_kernel

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "Privacy.ipynb"


def _paired_script():
    """The notebook's paired percent-format script (its source of truth for reviews)."""
    import jupytext
    return jupytext.read(ROOT / "notebooks" / "Privacy.py")


def test_notebook_matches_its_paired_script():
    built = _paired_script()
    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert [c.source for c in stored.cells] == [c.source for c in built.cells], \
        "notebooks/Privacy.ipynb is stale: run jupytext --sync notebooks/Privacy.py"
    params = [c for c in stored.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and 'profile = "quick"' in params[0].source


@pytest.mark.slow
def test_notebook_runs_end_to_end(data_root, tmp_path):
    papermill = pytest.importorskip("papermill")
    os.environ.setdefault("MPLBACKEND", "Agg")
    papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), cwd=str(ROOT), progress_bar=False,
                               kernel_name=ensure_kernel(),
                               parameters={"profile": "smoke", "data_root": str(data_root),
                                           "results_dir": str(tmp_path / "results")})
    results = tmp_path / "results"
    table = pd.read_csv(results / "tables" / "privacy_reconstruction.csv", index_col=0)
    assert set(table["dataset"]) == {"MNIST", "CIFAR-10"} and set(table["images_per_peer"]) == {1, 2}
    assert set(table["victim"]) == {"FL", "FFL", "DP (z=0.01)"}
    assert table["psnr"].notna().all() and table["ssim"].between(-1, 1).all()
    dp = pd.read_csv(results / "tables" / "privacy_dp_accuracy.csv", index_col=0)
    assert len(dp) == 2 and dp["epsilon"].isna().sum() == 1
    # 4 peers, all taking part, 2 rounds at z = 1: the accountant's epsilon
    assert dp["epsilon"].dropna().iloc[0] == pytest.approx(epsilon_of(1.0, 1.0, 2, 1e-5))
    for name in ("mnist_single", "mnist_batch_peer0", "cifar10_single", "cifar10_batch_peer1",
                 "dp_accuracy_vs_epsilon"):
        assert (results / "figures" / "privacy" / f"{name}.png").is_file()
