"""The vectorized backend against the sequential reference (issue 8).

Equivalence is checked in two precisions: float32 (what runs) on the MNIST CNN, whose dropout
masks are reproduced exactly; float64 on a small ResNet (BatchNorm) and the BiLSTM (Adam), where
float32 rounding is amplified by ill-conditioned small-batch BatchNorm and by Adam's
``m / sqrt(v)`` on near-zero gradients, so that only float64 shows that the two backends compute
the same function.

Every test here runs on one thread with oneDNN off: on this CPU oneDNN's threaded kernels make
the *sequential reference itself* differ by up to 2e-3 between 1 and 2 threads after a few MNIST
steps (a discrete switch at a batch of 12), and its float32 ResNet18 convolution backward is
less accurate than the plain kernels (6 % off float64 on a small BatchNorm batch).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from flhelpers.fl import vectorized as vz
from flhelpers.config import benchmark_config
from flhelpers.data import load_dataset
from flhelpers.data.base import FLDataset
from flhelpers.fl.engine import build_experiment, run_experiment
from flhelpers.params import flatten_buffers, flatten_params
from flhelpers.registry import register_model
from flhelpers.fl.training import PeerData, SequentialTrainer, batch_order


def _tiny_resnet(num_outputs: int = 10, **_: object) -> nn.Module:
    """A small ResNet: stem conv-BN-ReLU, two torchvision BasicBlocks (one strided), linear head."""
    down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        BasicBlock(8, 8), BasicBlock(8, 16, stride=2, downsample=down),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_outputs))


class _AlphaDropoutNet(nn.Module):
    """A model with a random op the vectorized backend does not reproduce (alpha dropout)."""

    def __init__(self, num_outputs: int = 10) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 16), nn.Linear(16, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.alpha_dropout(F.relu(self.fc1(x.flatten(1))), 0.3, self.training))


register_model("test-tiny-resnet", _tiny_resnet, overwrite=True)
register_model("test-alpha-dropout", lambda num_outputs=10, **_: _AlphaDropoutNet(num_outputs), overwrite=True)


@pytest.fixture(autouse=True)
def _reproducible_cpu():
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = onednn
    torch.set_num_threads(threads)


def _both(exp, peers=None, round_=1, **kwargs):
    """Updates and buffers of the sequential and vectorized backends on the same peers."""
    peers = exp.peers if peers is None else peers
    gp, gb = flatten_params(exp.model), flatten_buffers(exp.model)
    us, bs = SequentialTrainer(exp.model, exp.config, exp.dataset, exp.device).train_round(peers, gp, gb, round_)
    vt = vz.VectorizedTrainer(exp.model, exp.config, exp.dataset, exp.device, **kwargs)
    uv, bv = vt.train_round(peers, gp, gb, round_)
    return us, uv, bs, bv


def _float64(ds: FLDataset) -> FLDataset:
    """The same images, normalised once, in float64 (``prepare`` passes them through)."""
    return FLDataset(ds.name, ds.prepare(ds.train_x).double(), ds.train_y, ds.prepare(ds.test_x).double(),
                     ds.test_y, ds.num_classes, ds.class_names, meta=dict(ds.meta))


def _whole(cfg):
    """``cfg`` training and testing on the whole data set it is given (a data set subset beforehand):
    ``benchmark_config`` ignores ``None`` overrides, so the quick preset's subset sizes are cleared here."""
    return dataclasses.replace(cfg, train_subset=None, test_subset=None)


MNIST_SMALL = dict(num_peers=5, train_subset=700, test_subset=100, batch_size=16, local_epochs=2,
                   attacker_ratio=0.4, lr=0.05)


@pytest.fixture(scope="module")
def mnist_exp(data_root):
    """5 Dirichlet peers of unequal sizes (partial last batches), 2 of them attackers, dropout on."""
    return build_experiment(benchmark_config("mnist-mild", "quick", **MNIST_SMALL), data_root)


@pytest.fixture(scope="module")
def mnist_exp64(data_root):
    """``mnist_exp`` in float64: same peers, same batches, same dropout masks."""
    ds = load_dataset("mnist", data_root).subset(700, 100, seed=0)
    cfg = _whole(benchmark_config("mnist-mild", "quick", **MNIST_SMALL))
    exp = build_experiment(cfg, dataset=_float64(ds))
    exp.model.double()
    return exp


# -- building blocks --------------------------------------------------------------------------

def test_dropout_masks_reproduce_atens_cpu_dropout():
    x4, x2 = torch.randn(5, 3, 4, 4), torch.randn(5, 7)
    torch.manual_seed(1234)
    y4 = F.dropout2d(x4, 0.3, True)
    y2 = F.dropout(x2, 0.5, True)
    g = torch.Generator().manual_seed(1234)
    m4 = vz.draw_dropout_mask(vz.DropoutCall(True, 0.3, (3, 4, 4), torch.float32), 5, g)
    m2 = vz.draw_dropout_mask(vz.DropoutCall(False, 0.5, (7,), torch.float32), 5, g)
    assert m4.shape == (5, 3, 1, 1) and m2.shape == (5, 7)
    assert torch.equal(y4, x4 * m4) and torch.equal(y2, x2 * m2)
    assert set(m2.unique().tolist()) == {0.0, 2.0}
    call = vz.DropoutCall(False, 1.0, (7,), torch.float32)
    assert torch.equal(vz.draw_dropout_mask(call, 2, g), torch.zeros(2, 7))


@pytest.mark.parametrize("batch_first,bidirectional,layers", [(True, True, 1), (False, True, 2), (True, False, 2)])
def test_lstm_forward_matches_nn_lstm(batch_first, bidirectional, layers):
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 6, num_layers=layers, batch_first=batch_first, bidirectional=bidirectional).double()
    x = torch.randn(3, 7, 5, dtype=torch.float64)
    x = x if batch_first else x.transpose(0, 1)
    out, (h, c) = lstm(x)
    dirs = 2 if bidirectional else 1
    zeros = torch.zeros(layers * dirs, 3, 6, dtype=torch.float64)
    out2, h2, c2 = vz.lstm_forward(x, (zeros, zeros), list(lstm._flat_weights), True, layers, 0.0,
                                   True, bidirectional, batch_first)
    for a, b in ((out, out2), (h, h2), (c, c2)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    g1 = torch.autograd.grad(out.square().sum(), lstm.weight_hh_l0)[0]
    out2, _, _ = vz.lstm_forward(x, (zeros, zeros), list(lstm._flat_weights), True, layers, 0.0,
                                 True, bidirectional, batch_first)
    g2 = torch.autograd.grad(out2.square().sum(), lstm.weight_hh_l0)[0]
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-11)


@pytest.mark.parametrize("kind", ["sgd", "sgd-nomomentum", "adam"])
def test_batched_optimizers_match_torch_and_stop_inactive_rows(kind):
    torch.manual_seed(0)
    p0 = torch.randn(3, 5, dtype=torch.float64)
    grads = torch.randn(4, 3, 5, dtype=torch.float64)
    active = torch.ones(4, 3, dtype=torch.bool)
    active[3, 2] = False  # row 2 takes 3 steps, the others 4
    if kind == "adam":
        opt, make = vz.BatchedAdam(0.01, weight_decay=0.1), lambda q: torch.optim.Adam([q], lr=0.01, weight_decay=0.1)
    else:
        mom = 0.9 if kind == "sgd" else 0.0
        opt = vz.BatchedSGD(0.05, momentum=mom, weight_decay=0.01)
        make = lambda q: torch.optim.SGD([q], lr=0.05, momentum=mom, weight_decay=0.01)  # noqa: E731
    p = p0.clone()
    for t in range(4):
        opt.step(p, grads[t] * active[t].unsqueeze(1), active[t])
    for row in range(3):
        q = p0[row].clone().requires_grad_()
        ref = make(q)
        for t in range(int(active[:, row].sum())):
            q.grad = grads[t, row].clone()
            ref.step()
        torch.testing.assert_close(p[row], q.detach(), rtol=0, atol=1e-14)


def test_schedule_gives_each_peer_its_sequential_batches():
    cfg = benchmark_config("mnist-iid", "quick", batch_size=4, local_epochs=2)
    peers = [PeerData(k, torch.arange(n), torch.zeros(n, dtype=torch.long)) for k, n in enumerate((5, 12, 9))]
    sched = vz.build_schedule(cfg, peers, round_=3)
    assert sched.num_steps == 2 * 3  # peer 1: 2 epochs of ceil(12 / 4) = 3 steps
    assert sched.sizes.tolist() == [[4, 1, 4, 1, 0, 0], [4, 4, 4, 4, 4, 4], [4, 4, 1, 4, 4, 1]]
    for k, peer in enumerate(peers):
        s = -(-peer.num_samples // 4)
        for e in range(2):
            pos = sched.positions[k, e * s:(e + 1) * s].reshape(-1)
            assert torch.equal(pos[pos >= 0], batch_order(cfg, peer, 3, e))
        assert (sched.positions[k, 2 * s:] == -1).all()


def test_schedule_with_drop_last_has_no_short_batch():
    """drop_last: floor(n / B) full batches an epoch, the first floor(n / B) * B positions of the
    epoch's order (the authors' DataLoader(shuffle=True, drop_last=True))."""
    cfg = benchmark_config("mnist-iid", "quick", batch_size=4, local_epochs=2, drop_last=True)
    peers = [PeerData(k, torch.arange(n), torch.zeros(n, dtype=torch.long)) for k, n in enumerate((5, 12, 9))]
    sched = vz.build_schedule(cfg, peers, round_=3)
    assert sched.num_steps == 2 * 3
    assert sched.sizes.tolist() == [[4, 4, 0, 0, 0, 0], [4, 4, 4, 4, 4, 4], [4, 4, 4, 4, 0, 0]]
    for k, peer in enumerate(peers):
        s = peer.num_samples // 4
        for e in range(2):
            pos = sched.positions[k, e * s:(e + 1) * s].reshape(-1)
            assert torch.equal(pos, batch_order(cfg, peer, 3, e)[:4 * s])
        assert (sched.positions[k, 2 * s:] == -1).all()
    assert [vz.steps_of(cfg, n) for n in (5, 12, 9)] == [2, 6, 4]


# -- equivalence with the sequential backend ---------------------------------------------------

def test_mnist_cnn_matches_sequential_with_dropout_unequal_peers_and_attackers(mnist_exp64):
    exp = mnist_exp64
    sizes = [p.num_samples for p in exp.peers]
    assert len(set(sizes)) > 1 and any(n % 16 for n in sizes) and len(exp.attackers) == 2
    us, uv, _, _ = _both(exp)
    assert us.abs().max() > 0.1  # several steps were taken
    torch.testing.assert_close(uv, us, rtol=0, atol=1e-12)
    # dropout is on: the same peers trained without it end elsewhere
    assert (us[0] - uv[1]).abs().max() > 1e-3


def test_mnist_cnn_matches_sequential_in_float32(mnist_exp):
    """float32: equal to rounding, except a handful of coordinates where a near-tie in a max-pool
    or a ReLU at 0 falls the other way (a discrete, tiny change, as between thread counts)."""
    us, uv, _, _ = _both(mnist_exp)
    diff = (uv - us).abs()
    assert (diff <= 2e-6).float().mean() > 0.999
    assert diff.max() < 1e-3 * us.abs().max()


def test_chunking_gives_the_single_chunk_result(mnist_exp64):
    mnist_exp = mnist_exp64
    gp, gb = flatten_params(mnist_exp.model), flatten_buffers(mnist_exp.model)
    results = []
    for size in (None, 2, 1):
        vt = vz.VectorizedTrainer(mnist_exp.model, mnist_exp.config, mnist_exp.dataset, mnist_exp.device,
                                  peers_per_step=size)
        assert vt.chunk_size(5) == (5 if size is None else size)
        results.append(vt.train_round(mnist_exp.peers, gp, gb, 0)[0])
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(results[2], results[0], rtol=0, atol=1e-12)


def test_each_peer_draws_its_own_dropout_masks(mnist_exp):
    p = mnist_exp.peers[0]
    twins = [PeerData(0, p.indices, p.labels), PeerData(7, p.indices, p.labels), PeerData(0, p.indices, p.labels)]
    gp, gb = flatten_params(mnist_exp.model), flatten_buffers(mnist_exp.model)
    vt = vz.VectorizedTrainer(mnist_exp.model, mnist_exp.config, mnist_exp.dataset, mnist_exp.device)
    u, _ = vt.train_round(twins, gp, gb, 0)
    assert torch.equal(u[0], u[2])  # same peer id, same masks
    assert (u[0] - u[1]).abs().max() > 1e-3  # same data, another peer id: other masks


@pytest.mark.filterwarnings("ignore:CIFAR-10")
@pytest.mark.parametrize("drop_last", [False, True])
def test_small_resnet_matches_sequential_in_float64(data_root, drop_last):
    """BatchNorm: per-peer running statistics, peers of unequal sizes, short last batches (or,
    with drop_last, none)."""
    cfg = _whole(benchmark_config("cifar10-iid", "quick", model="test-tiny-resnet", num_peers=3, batch_size=8,
                                  local_epochs=2, attacker_ratio=0.3, lr=0.01, drop_last=drop_last))
    exp = build_experiment(cfg, dataset=_float64(load_dataset("cifar10", data_root).subset(60, 10, seed=1)))
    exp.model.double()
    flip = exp.attack.poison_labels
    peers = [PeerData(p.peer_id, p.indices[:n], flip(p.labels[:n]) if k == 0 else p.labels[:n])
             for k, (p, n) in enumerate(zip(exp.peers, (13, 20, 16)))]
    us, uv, bs, bv = _both(exp, peers)
    assert bs.shape == bv.shape and bs.shape[1] > 0
    assert us.abs().max() > 5e-3 and (bs - flatten_buffers(exp.model)).abs().max() > 0.01
    torch.testing.assert_close(uv, us, rtol=0, atol=1e-7 * us.abs().max().item())
    torch.testing.assert_close(bv, bs, rtol=0, atol=1e-7 * bs.abs().max().item())


@pytest.mark.filterwarnings("ignore:CIFAR-10")
def test_resnet18_matches_sequential_in_float32(data_root):
    """The paper's ResNet18 (torchvision), two full batches of 4 per peer, float32."""
    cfg = benchmark_config("cifar10-iid", "quick", num_peers=2, train_subset=40, test_subset=10,
                           batch_size=4, local_epochs=1, lr=0.001)
    exp = build_experiment(cfg, data_root)
    peers = [PeerData(p.peer_id, p.indices[:8], p.labels[:8]) for p in exp.peers]
    us, uv, bs, bv = _both(exp, peers)
    # float32 over 11M parameters, grouped convolutions against a per-peer loop: the reduction order
    # differs, and on this machine's oneDNN 1,828 of 22M entries differ by up to 9e-4 of the largest
    # entry (the previous bound, 2e-4, held on the machine that set it and fails here on the code as
    # it was then too); exactness is tested in float64 above (CNN 1e-12, small ResNet 1e-7)
    torch.testing.assert_close(uv, us, rtol=0, atol=2e-3 * us.abs().max().item())
    torch.testing.assert_close(bv, bs, rtol=0, atol=1e-5 * bs.abs().max().item())


def test_bilstm_with_adam_matches_sequential_in_float64():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 60, (80, 12), generator=g)
    labels = (tokens[:, :6].sum(1) > tokens[:, 6:].sum(1)).long()
    ds = FLDataset("imdb", tokens, labels, tokens[:10], labels[:10], 2, ("negative", "positive"),
                   meta={"vocab_size": 60})
    cfg = _whole(benchmark_config("imdb", "quick", num_peers=3, batch_size=8, local_epochs=2, attacker_ratio=0.3,
                                  partition="dirichlet"))
    exp = build_experiment(cfg, dataset=ds)
    exp.model.double()
    assert cfg.optimizer == "adam" and len(set(p.num_samples for p in exp.peers)) > 1
    us, uv, _, _ = _both(exp)
    assert us.abs().max() > 5e-3
    torch.testing.assert_close(uv, us, rtol=0, atol=1e-10)


def test_whole_short_run_gives_the_same_metrics(data_root, tmp_path):
    base = dict(num_peers=4, train_subset=1200, test_subset=500, rounds=3, attacker_ratio=0.25,
                defense="median")
    runs = {b: run_experiment(benchmark_config("mnist-mild", "quick", backend=b, **base), data_root=data_root,
                              results_dir=tmp_path, progress=False)
            for b in ("sequential", "vectorized")}
    seq, vec = runs["sequential"].metrics, runs["vectorized"].metrics
    record = (runs["vectorized"].path / "config.json").read_text()
    assert '"trainer": "vectorized"' in record
    assert len(seq) == 3 and seq["accuracy"].iloc[-1] > seq["accuracy"].iloc[0] + 0.2  # it learns
    for col in ("test_loss", "accuracy", "source_accuracy", "attack_success_rate"):
        np.testing.assert_allclose(vec[col], seq[col], rtol=0, atol=1e-3)
    for col in ("tp", "fp", "tn", "fn", "accepted"):
        assert vec[col].tolist() == seq[col].tolist()


# -- choosing the backend ----------------------------------------------------------------------

def test_auto_is_sequential_on_cpu_and_says_why(mnist_exp, caplog):
    cfg = mnist_exp.config.replace(backend="auto")
    with caplog.at_level(logging.INFO, logger="flhelpers.fl.vectorized"):
        exp = build_experiment(cfg, dataset=mnist_exp.dataset)
    assert isinstance(exp.trainer, SequentialTrainer)
    assert "CPU" in exp.backend_reason and "sequential" in caplog.text
    assert vz.backend_decision(cfg, "cuda").backend == "vectorized"


def test_unsupported_model_fails_strict_and_auto_falls_back(data_root, monkeypatch):
    cfg = benchmark_config("mnist-iid", "quick", model="test-alpha-dropout", num_peers=2,
                           train_subset=200, test_subset=50, backend="vectorized")
    with pytest.raises(vz.VectorizedUnsupported, match="backend='sequential'"):
        build_experiment(cfg, data_root)
    monkeypatch.setattr(vz, "CPU_VECTORIZED_FASTER", frozenset({"test-alpha-dropout"}))
    with pytest.warns(RuntimeWarning, match="sequentially"):
        exp = build_experiment(cfg.replace(backend="auto"), data_root)
    assert isinstance(exp.trainer, SequentialTrainer) and "cannot train" in exp.backend_reason


def test_memory_estimate_and_chunk_size(mnist_exp):
    vt = vz.VectorizedTrainer(mnist_exp.model, mnist_exp.config, mnist_exp.dataset, mnist_exp.device)
    dim = mnist_exp.layout.dim
    assert vt.traits.saved_bytes_per_sample > 4 * (10 * 24 * 24)  # at least conv1's output per sample
    assert vt.memory_per_peer() >= 4 * 5 * dim  # params, grads, momentum, 2 temporaries
    assert 1 <= vt.chunk_size(1000) <= 1000
    with pytest.raises(ValueError, match="peers_per_step"):
        vz.VectorizedTrainer(mnist_exp.model, mnist_exp.config, mnist_exp.dataset, mnist_exp.device,
                             peers_per_step=0)
