"""Issue 29, "Nothing silently wrong": a careless or hostile *user* (not a hostile peer, see
test_hostile.py) gets a one-line refusal naming the fix, before any training, or a clear
warning; never a number that silently means something else.

Items: 4 (a ratio leaving no honest peer), 5 (a diverging run reported as detection), 6 (the
backdoor metric's trigger), 9 (four commands that ended in a traceback), 10 (smaller gaps) and
15 (the raw robust rules on non-finite rows). Items 1, 13 and 14 are tested in test_flower.py,
test_architecture.py / test_notebooks.py and test_related_attacks.py.
"""

from __future__ import annotations

import os
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import flhelpers  # noqa: F401  (registers the built-in attacks and rules)
import flhelpers.data.download as download
from flhelpers.attacks import Backdoor
from flhelpers.cli import hostile_update_lines, main
from flhelpers.config import ConfigError, ExperimentConfig, benchmark_config, validate_config
from flhelpers.data.base import DataMissingError, FLDataset
from flhelpers.data.partition import make_partition
from flhelpers.defenses._robust_utils import (argsort_along, median_of_sorted, pairwise_sq_distances, sort_along,
                                              sorted_column_blocks)
from flhelpers.defenses.base import AggregationContext
from flhelpers.defenses.krum import Krum, MultiKrum, krum_scores
from flhelpers.defenses.median import Median, coordinate_median
from flhelpers.defenses.trimmed_mean import TrimmedMean, coordinate_trimmed_mean
from flhelpers.fl.engine import build_experiment, run_experiment
from flhelpers.fl.guards import guarded_aggregate
from flhelpers.metrics.attack_metrics import BACKDOOR_ASR, attack_metrics
from flhelpers.params import layout_of
from flhelpers.results import load_results

#: one round of 5 peers on 600 MNIST images: seconds
TINY = ["--rounds", "1", "--set", "num_peers=5", "--set", "train_subset=600", "--set", "test_subset=200",
        "--no-progress"]


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """``flhelpers ARGV`` in this process: (exit status, stdout, stderr). An exception the command
    does not turn into a message escapes, as the traceback a user would see."""
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc: int, err: str, text: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert text in lines[0], lines[0]


def toy(num_classes: int = 3, n: int = 600) -> FLDataset:
    y = torch.arange(n) % num_classes
    return FLDataset("toy", torch.randn(n, 2), y, torch.randn(60, 2), torch.arange(60) % num_classes,
                     num_classes, tuple(str(i) for i in range(num_classes)))


def no_runs(results: Path) -> bool:
    return not (results / "runs").exists() or not any((results / "runs").iterdir())


# ----------------------------------------------------------------------------- 4


def test_a_ratio_that_leaves_no_honest_peer_is_refused():
    cfg = benchmark_config("mnist-iid", "quick", num_peers=10, attacker_ratio=0.99)
    with pytest.raises(ConfigError, match=r"makes all 10 peers attackers \(round\(0.99 x 10\) = 10\), leaving no "
                                          r"honest peer; use attacker_ratio <= 0.9"):
        validate_config(cfg)
    validate_config(cfg.replace(attacker_ratio=0.9))  # 9 attackers and one honest peer
    validate_config(cfg.replace(attack="none"))  # no attack: the ratio is ignored
    # the extreme split's count needs the data: model poisoning draws among all 6 peers, 0.95 x 6 -> 6
    extreme = ExperimentConfig(partition="extreme", num_peers=6, attack="ipm", attacker_ratio=0.95,
                               source_class=0, target_class=1, batch_size=16)
    validate_config(extreme)
    with pytest.raises(ConfigError, match="makes all 6 peers attackers"):
        build_experiment(extreme, dataset=toy())


# ----------------------------------------------------------------------------- 5


def test_a_diverging_run_says_its_updates_were_non_finite(capsys, tmp_path, data_root):
    rc, out, err = cli(capsys, "run", "--benchmark", "mnist-iid", *TINY, "--attacker-ratio", "0.2",
                       "--set", "lr=1e30", "--results-dir", str(tmp_path), "--data-root", str(data_root))
    assert rc == 0, err
    assert re.search(r"detection_fpr\s+1\.0000", out)  # every rejected NaN row counts as a detection...
    assert re.search(r"non_finite_updates\s+5\n", out) and re.search(r"discarded_rounds\s+0\n", out)
    warning = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "5 update(s) were NaN/Inf" in warning[0]
    assert "detection_tpr/fpr above do not measure the defense" in warning[0]  # ...and the line says so


def test_a_healthy_run_prints_no_hostile_update_lines():
    assert hostile_update_lines({"non_finite_updates": 0, "discarded_rounds": 0}, 5) == []
    assert hostile_update_lines({}, 5) == []
    lines = hostile_update_lines({"non_finite_updates": 0, "discarded_rounds": 2}, 5)
    assert "2 of 5 round(s) had their non-finite aggregate discarded" in lines[-1]


# ----------------------------------------------------------------------------- 6


class TriggerDetector(nn.Module):
    """Predicts ``target`` exactly when the bottom-right pixel is white (the trigger), else class 0."""

    def __init__(self, target: int, num_classes: int = 10) -> None:
        super().__init__()
        self.target, self.num_classes = target, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), self.num_classes)
        logits[:, 0] = 1.0
        logits[x[:, 0, -1, -1] > 0.99, self.target] = 2.0
        return logits


def test_backdoor_asr_is_measured_on_triggered_test_images():
    """A model that has learnt the trigger and nothing else: backdoor ASR 1 on stamped images,
    where the same images without the trigger would give 0."""
    images = torch.zeros(30, 1, 8, 8, dtype=torch.uint8)
    labels = torch.arange(30) % 10
    ds = FLDataset("toy", images, labels, images, labels, 10, tuple(str(c) for c in range(10)))
    attack = Backdoor(source_class=7, target_class=1, num_classes=10, trigger_size=2)
    metrics = attack_metrics(TriggerDetector(target=1), ds, attack, "cross_entropy", batch_size=7)
    assert metrics[BACKDOOR_ASR] == 1.0
    # the test images carry no trigger: read without it, the same model would score 0
    assert TriggerDetector(target=1)(ds.prepare(images)).argmax(dim=1).eq(1).sum() == 0
    assert attack_metrics(TriggerDetector(target=1), ds, Backdoor(7, 1, 10, trigger_size=0), "cross_entropy") == {}


# ----------------------------------------------------------------------------- 9


def test_results_dir_that_is_a_file_is_one_line(capsys, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("not a folder")
    rc, _, err = cli(capsys, "run", "--benchmark", "mnist-iid", *TINY, "--results-dir", str(file))
    one_line_error(rc, err, f"--results-dir {file} is not a folder ({file} is a file)")
    rc, _, err = cli(capsys, "run", "--benchmark", "mnist-iid", *TINY, "--results-dir", str(file / "sub"))
    one_line_error(rc, err, f"{file} is a file, so {file / 'sub'} cannot be created")


def test_read_only_results_dir_is_one_line(capsys, tmp_path, monkeypatch):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)  # no write bit: read-only even for root (download.dir_is_writable)
    try:
        rc, _, err = cli(capsys, "run", "--benchmark", "mnist-iid", *TINY, "--results-dir", str(read_only))
    finally:
        read_only.chmod(0o755)
    one_line_error(rc, err, f"results_dir {read_only} is not writable")
    assert no_runs(read_only)
    # a non-root user: the bits allow writing but os.access says no
    denied = tmp_path / "denied"
    denied.mkdir()
    real_access = os.access
    monkeypatch.setattr(download.os, "access",
                        lambda path, mode, **kw: Path(path) != denied and real_access(path, mode, **kw))
    rc, _, err = cli(capsys, "run", "--benchmark", "mnist-iid", *TINY, "--results-dir", str(denied / "res"))
    one_line_error(rc, err, f"({denied} is read-only)")
    assert not (denied / "res").exists()


def test_unknown_dataset_kwargs_are_one_line_before_loading(capsys, tmp_path):
    rc, _, err = cli(capsys, "run", "--benchmark", "mnist-iid", *TINY, "--set", 'dataset_kwargs={"nope": 1}',
                     "--results-dir", str(tmp_path))
    one_line_error(rc, err, "dataset_kwargs ['nope'] are not arguments of the data set 'mnist'; it accepts: download")
    assert no_runs(tmp_path)
    with pytest.raises(ConfigError, match="not arguments of the data set 'cifar10'; it accepts: download, "
                                          "train_batches"):
        build_experiment(benchmark_config("cifar10-iid", "quick", dataset_kwargs={"batches": 2}))


def test_grid_summary_csv_that_is_a_folder_is_refused_before_any_run(capsys, tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    results = tmp_path / "res"
    rc, _, err = cli(capsys, "grid", "--benchmarks", "mnist-iid", "--defenses", "fedavg", "--ratios", "0", *TINY,
                     "--results-dir", str(results), "--summary-csv", str(folder))
    one_line_error(rc, err, f"--summary-csv {folder} is a folder")
    assert no_runs(results)


# ----------------------------------------------------------------------------- 10


def test_zero_workers_is_refused_before_any_run(capsys, tmp_path):
    rc, _, err = cli(capsys, "grid", "--benchmarks", "mnist-iid", "--defenses", "fedavg", "--ratios", "0", *TINY,
                     "--results-dir", str(tmp_path), "--workers", "0")
    one_line_error(rc, err, "--workers must be at least 1")
    assert no_runs(tmp_path)


@pytest.mark.parametrize("field,asked,held", [("train_subset", 601, 600), ("test_subset", 61, 60)])
def test_a_subset_larger_than_the_data_is_refused(field, asked, held):
    cfg = ExperimentConfig(num_peers=4, source_class=0, target_class=1, **{field: asked})
    with pytest.raises(ConfigError, match=rf"{field}={asked} asks for more samples than the {held} that toy "
                                          rf"holds; use {field} <= {held}"):
        build_experiment(cfg, dataset=toy())


def test_a_huge_dirichlet_alpha_gives_the_even_split():
    labels = np.repeat(np.arange(10), 100)
    part = make_partition(labels, 10, "dirichlet", seed=0, alpha=1e308, min_samples=32)
    assert part.sizes().sum() == 1000 and part.sizes().min() >= 32
    assert (part.histogram >= 8).all()  # every class spread over every peer, none piled on the last one
    with pytest.raises(ValueError, match="use fewer peers or a smaller batch") as info:
        make_partition(labels, 100, "dirichlet", seed=0, alpha=1e6, min_samples=32)  # 10 samples a peer
    assert "larger alpha" not in str(info.value)


def test_a_failed_download_leaves_no_mistyped_data_root(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        """torchvision's MNIST offline: creates its folder, writes a partial file, then fails."""

        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            raw = Path(root) / "MNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            (raw / "train-images-idx3-ubyte.gz").write_bytes(b"partial")
            raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    from flhelpers.data.mnist import load_mnist

    typo = tmp_path / "dtaa"
    with pytest.raises(DataMissingError, match="download failed"):
        load_mnist(typo)
    assert not typo.exists()
    kept = tmp_path / "data"
    kept.mkdir()
    with pytest.raises(DataMissingError):
        load_mnist(kept)
    assert kept.is_dir() and not (kept / "MNIST").exists()  # a folder that existed stays


def test_numpy_scalars_are_taken_as_numbers():
    cfg = benchmark_config("mnist-iid", "quick", num_peers=np.int64(5), attacker_ratio=np.float64(0.2),
                           rounds=np.int32(3), defense_kwargs={}, attack_kwargs={})
    validate_config(cfg)
    assert type(cfg.num_peers) is int and type(cfg.attacker_ratio) is float
    plain = benchmark_config("mnist-iid", "quick", num_peers=5, attacker_ratio=0.2, rounds=3)
    assert cfg.run_id() == plain.run_id()
    alie = ExperimentConfig(attack="alie", attack_kwargs={"z": np.float64(1.5), "start_round": np.int64(2)})
    assert alie.run_id() == ExperimentConfig(attack="alie", attack_kwargs={"z": 1.5, "start_round": 2}).run_id()


def test_load_results_on_a_missing_path_warns(tmp_path):
    with pytest.warns(UserWarning, match=r"does not exist, so there are no runs to load"):
        frame = load_results(tmp_path / "reslts")
    assert frame.empty
    with pytest.warns(UserWarning, match=r"has no runs/ folder"):
        load_results(tmp_path)


def test_results_dir_none_is_a_clear_error():
    cfg = benchmark_config("mnist-iid", "quick", rounds=1)
    with pytest.raises(ConfigError, match=r"results_dir must be a folder path \(str or pathlib.Path\), got None"):
        run_experiment(cfg, results_dir=None, progress=False)


def test_benchmark_config_suggests_lr_for_learning_rate():
    with pytest.raises(ConfigError, match=r"did you mean: 'learning_rate' -> 'lr'\?"):
        benchmark_config("mnist-iid", "quick", learning_rate=0.01)


# ----------------------------------------------------------------------------- 15


def ctx_for(k: int, f: int = 1) -> AggregationContext:
    layout = layout_of(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4)))
    return AggregationContext(layout=layout, num_classes=4, peer_ids=torch.arange(k),
                              num_samples=torch.full((k,), 10.0), expected_attackers=f)


RAW = {
    "coordinate_median": lambda u: coordinate_median(u),
    "coordinate_trimmed_mean b=0": lambda u: coordinate_trimmed_mean(u, 0),
    "coordinate_trimmed_mean b=2": lambda u: coordinate_trimmed_mean(u, 2),
    "krum_scores": lambda u: krum_scores(u, 1),
    "pairwise_sq_distances": lambda u: pairwise_sq_distances(u),
    "sort_along": lambda u: sort_along(u, dim=0),
    "argsort_along": lambda u: argsort_along(u, dim=0),
    "sorted_column_blocks": lambda u: list(sorted_column_blocks(u)),
    "Median": lambda u: Median()(u, ctx_for(len(u))),
    "TrimmedMean": lambda u: TrimmedMean()(u, ctx_for(len(u))),
    "Krum": lambda u: Krum()(u, ctx_for(len(u))),
    "MultiKrum": lambda u: MultiKrum()(u, ctx_for(len(u))),
}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name", sorted(RAW))
def test_raw_robust_rules_refuse_non_finite_rows(name, bad):
    u = torch.randn(7, ctx_for(7).layout.dim, generator=torch.Generator().manual_seed(0))
    u[3, 5] = bad
    with pytest.raises(ValueError, match=r"hold NaN or \+-Inf in row\(s\) \[3\].*guarded_aggregate"):
        RAW[name](u)


def test_median_of_sorted_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        median_of_sorted(torch.tensor([1.0, 2.0, float("nan")]))
    assert median_of_sorted(torch.tensor([1.0, 2.0, float("inf")]), allow_non_finite=True) == 2.0


@pytest.mark.parametrize("rule", [Median(), TrimmedMean(), Krum(), MultiKrum()])
def test_the_guard_still_drops_non_finite_rows_before_the_rule(rule):
    u = torch.randn(7, ctx_for(7).layout.dim, generator=torch.Generator().manual_seed(1))
    finite = u.clone()
    u[3, 5] = float("nan")
    res = guarded_aggregate(rule, u, ctx_for(7))
    assert not res.accepted[3] and torch.isfinite(res.update).all()
    keep = torch.tensor([0, 1, 2, 4, 5, 6])
    ctx = ctx_for(6, f=0)
    assert torch.equal(res.update, rule(finite[keep], ctx).update)
    # fallback: Krum cannot run on two finite rows, the guard's own median of the finite rows
    two = torch.full((4, u.shape[1]), float("nan"))
    two[:2] = finite[:2]
    assert torch.allclose(guarded_aggregate(Krum(), two, ctx_for(4)).update, finite[:2].mean(dim=0))
