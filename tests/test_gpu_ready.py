"""Issue 30, "Ready for the GPU it has never seen": what can be checked on the CPU.

Precision and deterministic-mode flags (set on a CPU machine as on a GPU one), their record and
the resume check; the vectorized chunk chosen once from the total memory; one step's dropout
masks drawn at once, equal to the per-peer draws; FLAME's cosines in torch against
scikit-learn's; the repeated median's score sums against the ``index_add_`` they replace; the
user-elimination losses against per-batch ``float`` sums; the memory a related-study record
keeps; and the GPU script (fallback, the LFighter-variants mode) at a tiny size.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flhelpers.config import ConfigError, benchmark_config, validate_config
from flhelpers.defenses.base import AggregationContext, AggregationResult
from flhelpers.defenses.flame import FLAME, cosine_distance_matrix, flame_admitted
from flhelpers.defenses.repeated_median import RepeatedMedian, add_column_sums
from flhelpers.fl.experiment import global_loss_per_peer
from flhelpers.fl import device as fdev
from flhelpers.fl import vectorized as vz
from flhelpers.fl.checkpoint import CHECKPOINT, save_checkpoint
from flhelpers.fl.engine import RoundRecord, build_experiment, run_experiment
from flhelpers.models import loss_fn
from flhelpers.params import flatten_buffers, flatten_params, layout_of
from flhelpers.privacy.inversion import recover_labels
from flhelpers_lab.related import light_record

ROOT = Path(__file__).resolve().parents[1]
MODULE = "flhelpers_lab.investigations.gpu_paper_cifar"
TINY = benchmark_config("mnist-iid", "quick", num_peers=5, rounds=2, train_subset=500, test_subset=200)


@pytest.fixture(autouse=True)
def _torch_flags():
    """Every flag a test here sets is restored afterwards (they are process-wide)."""
    legacy = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    new = fdev.precision_flags()
    det, cudnn_det, bench = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                             torch.backends.cudnn.benchmark)
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = legacy
    if "cudnn_conv" in new:
        torch.backends.cudnn.conv.fp32_precision = new["cudnn_conv"]
        torch.backends.cudnn.rnn.fp32_precision = new["cudnn_rnn"]
        torch.backends.cuda.matmul.fp32_precision = new["cuda_matmul"]
    torch.use_deterministic_algorithms(det)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_det, bench


# ----------------------------------------------------------------------------- 1, 2: flags, record, resume


def test_float32_on_cuda_sets_ieee_for_convolutions_lstm_and_matmul():
    fdev.configure_torch(TINY.replace(device="cuda"))
    flags = fdev.precision_flags()
    assert not flags["cudnn_allow_tf32"] and not flags["matmul_allow_tf32"]
    if "cudnn_conv" in flags:  # torch >= 2.9: the per-operation API agrees with the legacy one
        assert (flags["cudnn_conv"], flags["cudnn_rnn"], flags["cuda_matmul"]) == ("ieee", "ieee", "ieee")
    fdev.configure_torch(TINY.replace(device="cuda", precision="bfloat16"))  # torch's defaults again
    flags = fdev.precision_flags()
    assert flags["cudnn_allow_tf32"] and not flags["matmul_allow_tf32"]
    if "cudnn_conv" in flags:
        assert (flags["cudnn_conv"], flags["cudnn_rnn"]) == ("tf32", "tf32")


def test_a_cpu_run_leaves_the_cuda_precision_flags_alone():
    fdev.set_float32_precision(False)
    before = fdev.precision_flags()
    fdev.configure_torch(TINY)
    assert fdev.precision_flags() == before


def test_deterministic_mode_sets_torch_cudnn_and_cublas(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.benchmark = True
    fdev.configure_torch(TINY.replace(device="cuda", deterministic=True))
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # a deterministic value already set is kept
    fdev.configure_torch(TINY.replace(device="cuda", deterministic=True))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    fdev.configure_torch(TINY)  # the next run's config decides: off again
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


def test_new_fields_keep_run_ids_at_their_defaults_and_are_validated():
    assert TINY.replace(deterministic=False, peers_per_step=None).run_id() == TINY.run_id()
    assert TINY.replace(deterministic=True).run_id() != TINY.run_id()
    assert TINY.replace(peers_per_step=4).run_id() != TINY.run_id()
    for bad in (dict(deterministic=1), dict(peers_per_step=0), dict(peers_per_step=2.0)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            validate_config(TINY.replace(**bad))


def test_config_json_records_the_runtime_and_a_deterministic_cpu_run_matches(data_root, tmp_path):
    plain = run_experiment(TINY, data_root=data_root, results_dir=tmp_path, progress=False)
    det = run_experiment(TINY.replace(deterministic=True), data_root=data_root, results_dir=tmp_path,
                         progress=False)
    runtime = json.loads((det.path / "config.json").read_text())["runtime"]
    assert runtime["deterministic"] is True and runtime["device"] == {"type": "cpu", "name": "cpu"}
    assert json.loads((plain.path / "config.json").read_text())["runtime"]["deterministic"] is False
    assert (det.path / "metrics.csv").read_bytes() == (plain.path / "metrics.csv").read_bytes()


def test_resume_is_refused_on_another_device_and_allowed_from_an_older_checkpoint(data_root, tmp_path):
    cfg = TINY.replace(rounds=3)
    part = run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False, stop_after=1)
    state = torch.load(part.path / CHECKPOINT, weights_only=True)
    assert state["runtime"]["device"]["type"] == "cpu" and state["runtime"]["deterministic"] is False
    other = {**state, "runtime": {**state["runtime"], "device": {"type": "cuda", "name": "NVIDIA A100-SXM4-80GB"}}}
    save_checkpoint(part.path, other)  # a valid checkpoint (its digest recomputed), of another machine
    with pytest.raises(ConfigError, match="Refusing to resume.*NVIDIA A100"):
        run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False)
    assert (part.path / CHECKPOINT).is_file()  # kept for the machine it belongs to
    older = {k: v for k, v in other.items() if k != "runtime"}  # written before the key existed
    save_checkpoint(part.path, older)
    done = run_experiment(cfg, data_root=data_root, results_dir=tmp_path, progress=False)
    assert done.extra["resumed_from"] == 1 and done.summary


# ----------------------------------------------------------------------------- 4: the chunk


@pytest.fixture(scope="module")
def mnist(data_root):
    return build_experiment(benchmark_config("mnist-mild", "quick", num_peers=5, train_subset=700, test_subset=100,
                                             batch_size=16, attacker_ratio=0.4, backend="sequential"), data_root)


def test_chunk_is_chosen_once_from_total_memory(mnist, monkeypatch):
    monkeypatch.setattr(vz, "total_memory_bytes", lambda device: 10 * 2**30)
    vt = vz.VectorizedTrainer(mnist.model, mnist.config, mnist.dataset, mnist.device)
    expected = int(0.5 * 10 * 2**30 // vt.memory_per_peer())
    assert vt.peers_per_step == vt.memory_chunk() == expected
    monkeypatch.setattr(vz, "total_memory_bytes", lambda device: 2**20)  # memory changing later moves nothing
    assert vt.peers_per_step == expected and vt.chunk_size(10**6) == expected and vt.chunk_size(3) == 3
    assert vt.memory_chunk() == 1
    given = vz.VectorizedTrainer(mnist.model, mnist.config.replace(peers_per_step=2), mnist.dataset, mnist.device,
                                 peers_per_step=2)
    assert given.chunk_size(5) == 2


def test_config_peers_per_step_reaches_the_trainer_and_config_json(data_root, tmp_path):
    res = run_experiment(TINY.replace(backend="vectorized", peers_per_step=2), data_root=data_root,
                         results_dir=tmp_path, progress=False)
    assert res.extra["experiment"].trainer.peers_per_step == 2
    assert json.loads((res.path / "config.json").read_text())["runtime"]["peers_per_step"] == 2
    auto = run_experiment(TINY.replace(backend="vectorized", rounds=1), data_root=data_root, results_dir=tmp_path,
                          progress=False)
    chosen = auto.extra["experiment"].trainer.peers_per_step
    assert chosen == auto.extra["experiment"].trainer.memory_chunk()
    assert json.loads((auto.path / "config.json").read_text())["runtime"]["peers_per_step"] == chosen


# ----------------------------------------------------------------------------- 10: dropout masks


def _old_masks(calls, batches, width, gens):
    """The per-call, per-peer draws the vectorized step made before (zero padding to ``width``)."""
    out = []
    for call in calls:
        rows = []
        for b, g in zip(batches, gens):
            m = vz.draw_dropout_mask(call, b, g)
            rows.append(torch.cat([m, m.new_zeros((width - b, *m.shape[1:]))]) if b < width else m)
        out.append(torch.stack(rows))
    return out


def test_step_masks_drawn_at_once_equal_the_per_peer_draws():
    calls = [vz.DropoutCall(True, 0.25, (6, 5, 5), torch.float32), vz.DropoutCall(False, 0.5, (40,), torch.float32),
             vz.DropoutCall(False, 1.0, (3,), torch.float32), vz.DropoutCall(False, 0.1, (7,), torch.float64)]
    batches, width = [16, 9, 0, 16, 1], 16
    old_g = [torch.Generator().manual_seed(s) for s in (11, 12, 13, 14, 15)]
    new_g = [torch.Generator().manual_seed(s) for s in (11, 12, 13, 14, 15)]
    for _ in range(3):  # the generators advance step after step, identically
        old = _old_masks(calls, batches, width, old_g)
        new = vz.draw_step_masks(calls, batches, width, new_g, "cpu")
        assert len(new) == len(old)
        for a, b, call in zip(new, old, calls):
            assert a.dtype == call.dtype and a.shape == b.shape and torch.equal(a, b)
    assert vz.draw_step_masks([], batches, width, new_g, "cpu") == []


def test_vectorized_round_with_dropout_is_unchanged(mnist):
    """The MNIST CNN has dropout: a round's updates equal the old per-peer draws' exactly."""
    gp, gb = flatten_params(mnist.model), flatten_buffers(mnist.model)
    vt = vz.VectorizedTrainer(mnist.model, mnist.config, mnist.dataset, mnist.device)
    assert vt.traits.dropout
    new, _ = vt.train_round(mnist.peers, gp, gb, 1)
    original = vz.draw_step_masks
    try:
        vz.draw_step_masks = lambda calls, batches, width, gens, device: _old_masks(calls, batches, width, gens)
        old, _ = vt.train_round(mnist.peers, gp, gb, 1)
    finally:
        vz.draw_step_masks = original
    assert torch.equal(new, old)


# ----------------------------------------------------------------------------- 11: FLAME


def test_flame_cosines_in_torch_match_scikit_learn():
    from sklearn.metrics.pairwise import cosine_distances

    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 5000, generator=g, dtype=torch.float64)
    x[1] = 0.0  # a zero update
    x[2] = x[0] * 3.0  # same direction
    x[3] = -x[4]  # opposite
    x[5] *= 1e-17  # a norm below 10 eps: a zero vector for scikit-learn
    ref = np.clip(cosine_distances(x.numpy()), 0.0, 2.0)
    ref = (ref + ref.T) / 2.0
    np.fill_diagonal(ref, 0.0)
    ours = cosine_distance_matrix(x.float()).numpy()
    ref32 = np.clip(cosine_distances(x.float().double().numpy()), 0.0, 2.0)
    ref32 = (ref32 + ref32.T) / 2.0
    np.fill_diagonal(ref32, 0.0)
    np.testing.assert_allclose(ours, ref32, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cosine_distance_matrix(x).numpy(), ref, rtol=0, atol=1e-12)
    assert np.array_equal(ours, ours.T) and not np.diag(ours).any()


def _sklearn_labels(x: np.ndarray) -> list[int]:
    """FLAME's clustering as it was: scikit-learn's cosine distances of a host copy, then HDBSCAN."""
    from sklearn.cluster import HDBSCAN
    from sklearn.metrics.pairwise import cosine_distances

    dist = np.clip(cosine_distances(x), 0.0, 2.0)
    dist = (dist + dist.T) / 2.0
    np.fill_diagonal(dist, 0.0)
    k = len(x)
    return HDBSCAN(metric="precomputed", min_cluster_size=k // 2 + 1, min_samples=1, allow_single_cluster=True,
                   copy=True).fit(dist).labels_.tolist()


def test_flame_admits_the_peers_scikit_learns_cosines_admitted():
    g = torch.Generator().manual_seed(3)
    honest = torch.randn(1, 300, generator=g) + 0.3 * torch.randn(7, 300, generator=g)
    bad = -honest[:3] + 0.1 * torch.randn(3, 300, generator=g)
    updates = torch.cat([honest, bad])
    mask_t, labels_t = flame_admitted(updates)
    mask_n, labels_n = flame_admitted(updates.double().numpy())
    assert mask_t.tolist() == mask_n.tolist() and labels_t == labels_n == _sklearn_labels(updates.double().numpy())
    assert not mask_t[7:].any() and mask_t.sum() >= 6
    layout = layout_of(torch.nn.Linear(299, 1))
    res = FLAME(noise=False).aggregate(updates, AggregationContext(layout=layout, num_classes=2))
    assert res.accepted.tolist() == mask_t.tolist()


# ----------------------------------------------------------------------------- 3: repeated median


def test_column_sums_equal_the_index_add_they_replace_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    k = 7
    old = torch.zeros(k, dtype=torch.float64)
    new = torch.zeros(k, dtype=torch.float64)
    for c in (50, 1, 333):  # blocks of columns, the score carried from block to block
        order = torch.stack([torch.randperm(k, generator=g) for _ in range(c)])
        values = torch.rand(c, k, generator=g).mul(torch.logspace(-9, 0, k)).to(torch.float32).double()
        old.index_add_(0, order.reshape(-1), values.reshape(-1))
        new = add_column_sums(new, torch.empty_like(values).scatter_(1, order, values))
    assert torch.equal(new, old)


def test_repeated_median_counts_corrections_in_one_read():
    g = torch.Generator().manual_seed(2)
    updates = torch.randn(6, 500, generator=g)
    updates[5] += 40.0
    layout = layout_of(torch.nn.Linear(499, 1))
    small = RepeatedMedian(block_elements=36 * 7).aggregate(updates, AggregationContext(layout=layout, num_classes=2))
    whole = RepeatedMedian().aggregate(updates, AggregationContext(layout=layout, num_classes=2))
    assert isinstance(small.info["corrected"], int) and small.info["corrected"] == whole.info["corrected"] > 0
    torch.testing.assert_close(small.weights, whole.weights, rtol=0, atol=1e-6)
    assert small.weights[5] < small.weights[:5].min()


# ----------------------------------------------------------------------------- 9: per-batch syncs


def test_user_elimination_losses_equal_per_batch_float_sums(mnist):
    cfg, model, data = mnist.config.replace(eval_batch_size=64), mnist.model, mnist.dataset
    exp = dataclasses.replace(mnist, config=cfg)
    ids = np.arange(5)
    gp, gb = flatten_params(model), flatten_buffers(model)
    ours = global_loss_per_peer(exp, ids, gp, gb)
    model.eval()
    ref = []
    with torch.no_grad():
        for k in ids:
            peer, total = exp.peers[k], 0.0
            for start in range(0, peer.num_samples, 64):
                idx = peer.indices[start:start + 64]
                total += float(loss_fn(cfg.loss, model(data.prepare(data.train_x[idx])), peer.labels[start:start + 64])) * len(idx)
            ref.append(total / peer.num_samples)
    assert ours.tolist() == ref


def test_normalisation_is_built_once_per_device_and_prepares_as_before(mnist):
    ds = mnist.dataset
    cifar_like = dataclasses.replace(ds, train_x=torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8),
                                     mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261))
    x = cifar_like.train_x
    first = cifar_like.normalisation(x.device)
    assert cifar_like.normalisation(x.device) is first
    mean = torch.tensor(cifar_like.mean).view(1, -1, 1, 1)
    std = torch.tensor(cifar_like.std).view(1, -1, 1, 1)
    assert torch.equal(cifar_like.prepare(x), (x.float().div_(255.0) - mean) / std)


# ----------------------------------------------------------------------------- 6, 7: devices, memory


def test_label_recovery_stays_on_the_gradient_device():
    grad = torch.tensor([0.05, -0.2, 0.1, -0.3, 0.35], dtype=torch.float64)
    labels = recover_labels(grad, 3)
    assert labels.device == grad.device and labels.tolist() == [1, 3, 3]
    probs = torch.full((5,), 0.2, dtype=torch.float32)
    assert recover_labels(grad, 3, probs).tolist() == labels.tolist()


def test_a_related_study_record_keeps_no_update_matrix_nor_model():
    k, d = 4, 250_000
    updates = torch.randn(k, d)
    layout = layout_of(torch.nn.Linear(d - 1, 1))
    ctx = AggregationContext(layout=layout, num_classes=2, peer_ids=torch.arange(k), num_samples=torch.ones(k),
                             global_params=torch.randn(d))
    result = AggregationResult(update=updates.mean(0), accepted=torch.ones(k, dtype=torch.bool),
                               weights=torch.full((k,), 0.25)[:k], info={"mode": "x"})
    kept = light_record(RoundRecord(3, np.arange(k), np.zeros(k, dtype=bool), updates, result, ctx))
    tensors = [kept.updates, kept.result.update, kept.result.accepted, kept.result.weights,
               kept.context.peer_ids, kept.context.num_samples]
    assert sum(t.untyped_storage().nbytes() for t in tensors) < 1024
    assert kept.context.global_params is None and kept.updates.shape == (0, d)
    assert kept.result.info == {"mode": "x"} and kept.round == 3
    assert kept.result.weights.tolist() == [0.25] * k
    assert updates[:0].untyped_storage().nbytes() == k * d * 4  # what the view kept before


# ----------------------------------------------------------------------------- 12: the GPU script


def _script():
    from flhelpers_lab.investigations import gpu_paper_cifar

    return gpu_paper_cifar


def test_lfighter_variants_mode_runs_both_variants_at_three_local_epochs():
    gpu = _script()
    paper_mode = gpu.configs("cpu", tiny=False)
    variants = gpu.configs("cpu", tiny=False, mode="lfighter-variants")
    assert [c.defense_kwargs for c in variants] == [{}, {"variant": "released"}]
    assert all(c.defense == "lfighter" and c.attacker_ratio == 0.4 and c.local_epochs == 3 and c.rounds == 100
               and c.benchmark == "cifar10-mild" for c in variants)
    assert variants[0].run_id() == paper_mode[1].run_id()  # the paper variant is the paper mode's LFighter run
    line = gpu.plan_line("lfighter-variants", variants, "cpu", 480)
    assert "lfighter 40%, then lfighter 40% (released)" in line and "3 local epochs" in line and "480 s" in line
    with pytest.raises(ValueError, match="mode"):
        gpu.configs("cpu", tiny=True, mode="nope")


@pytest.mark.slow
def test_a_failed_vectorized_check_falls_back_to_sequential(data_root, tmp_path, monkeypatch):
    gpu = _script()

    def broken(self):
        raise RuntimeError("no vmap rule on this device")

    monkeypatch.setattr(vz.VectorizedTrainer, "check", broken)
    cfg = gpu.configs("cpu", tiny=True)[0].replace(rounds=1)
    entry, reports = {}, []
    gpu.run_within(cfg, tmp_path / "out", tmp_path / "store", str(data_root), 600.0, entry,
                   lambda: reports.append(dict(entry)), checkpoint_every=0)
    assert "vectorized check failed" in entry["fallback"] and "error" not in entry
    assert entry["finished"] and entry["rounds_done"] == 1 and entry["trainer"] == "sequential"
    assert entry["run_id"] == cfg.replace(backend="sequential").run_id()
    record = json.loads((tmp_path / "out" / entry["run_id"] / "config.json").read_text())
    assert record["config"]["backend"] == "sequential"
    assert reports and reports[0]["rounds_done"] == 1  # written after the round, before the run returned


@pytest.mark.slow
def test_tiny_lfighter_variants_mode_writes_every_round_and_says_its_plan_first(data_root, tmp_path):
    out, store = tmp_path / "out", tmp_path / "store"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", MODULE, "--tiny", "--mode", "lfighter-variants", "--device", "cpu",
                           "--budget-s", "3000", "--out", str(out), "--store", str(store), "--data-root",
                           str(data_root)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=True)
    first = proc.stdout.splitlines()[0]
    assert first.startswith("gpu_paper_cifar --mode lfighter-variants on cpu: lfighter 40%, then lfighter 40% "
                            "(released)") and "3000 s" in first
    report = json.loads((out / "gpu_timings.json").read_text())
    assert report["mode"] == "lfighter-variants"
    assert [r["defense_kwargs"] for r in report["runs"]] == [{}, {"variant": "released"}]
    for run in report["runs"]:
        assert run["finished"] and run["rounds_done"] == 2 and run["trainer"] == "vectorized"
        assert run["runtime"]["peers_per_step"] >= 1
        assert pd.read_csv(out / run["run_id"] / "metrics.csv")["round"].tolist() == [0, 1]
        assert len(pd.read_csv(out / run["run_id"] / "timings.csv")) == 2
    assert sorted(p.name for p in store.rglob("checkpoint.pt")) == []  # 2 rounds: none at 25
    assert len([p for p in out.rglob("*") if p.is_file()]) <= 8
