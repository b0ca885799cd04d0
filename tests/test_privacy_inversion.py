"""Gradient inversion on real MNIST images: plain FL gradients leak, FFL-mixed and DP-noised ones much less.

Thresholds were set from measurements on this code (torch 2.14, CPU, one thread, the seeds below):

* tiny MLP (784 -> 16 -> 10), one image per peer, 300 steps, TV 1e-3: FL PSNR 38.9 / 32.0 dB,
  SSIM 0.96 / 0.87, labels 2/2; FFL-mixed PSNR 15.9 / 15.2 dB, SSIM 0.52 / 0.54.
  DP-noised (z = 0.1, clip = median norm): 7.5 / 8.2 dB.
  We require FL mean PSNR > 25 dB, SSIM > 0.8, both labels; FFL and DP at least 10 dB below FL,
  FFL's SSIM at least 0.2 below FL's.
* the paper's MNIST CNN, 400 steps (the notebook's quick profile): FL 31.4 / 21.2 dB,
  FFL 6.9 / 9.4 dB. We require FL mean > 20 dB and FFL mean < 12 dB.
"""

import pytest
import torch
from torch import nn

from flhelpers.data import load_dataset
from flhelpers.models import MnistCNN
from flhelpers.privacy.inversion import (
    InversionConfig,
    cosine_distance,
    gradient_from_update,
    invert_gradients,
    model_gradient,
    total_variation,
)
from flhelpers.privacy.victims import Victim, observe, one_step_updates, reconstruction_study, sample_victim_batches


@pytest.fixture(scope="module")
def mnist(data_root):
    return load_dataset("mnist", data_root)


def test_total_variation_and_cosine_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    assert total_variation(x).item() == pytest.approx(1.0)  # vertical diffs 0, horizontal diffs 1
    a = torch.tensor([1.0, 0.0])
    assert cosine_distance(a, torch.tensor([0.0, 2.0])).item() == pytest.approx(1.0)
    assert cosine_distance(a, torch.tensor([3.0, 0.0])).item() == pytest.approx(0.0)
    assert torch.equal(gradient_from_update(torch.tensor([0.2, -0.1]), 0.1), torch.tensor([-2.0, 1.0]))


def test_one_step_update_is_minus_lr_times_the_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = torch.randn(2, 4, 1, 4, 4), torch.tensor([[0, 1, 2, 0], [1, 1, 2, 2]])
    u = one_step_updates(model, x, y, lr=0.05)
    # what one step of torch's SGD (momentum 0.9, fresh) does to the flat parameters
    for k in range(2):
        m = nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 3))
        m.load_state_dict(model.state_dict())
        before = torch.cat([p.detach().flatten() for p in m.parameters()])
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        nn.functional.cross_entropy(m(x[k]), y[k]).backward()
        opt.step()
        after = torch.cat([p.detach().flatten() for p in m.parameters()])
        assert torch.allclose(u[k], after - before, atol=1e-7)


def test_observed_updates_under_ffl_keep_the_sum_and_under_dp_are_clipped_and_noisy():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(4, 50, generator=g)
    mixed, info = observe(Victim("ffl"), u, torch.Generator().manual_seed(1))
    assert torch.allclose(mixed.sum(0), u.sum(0), atol=1e-6) and len(info["pairs"]) == 2
    swapped = (mixed != u).float().mean().item()
    assert 0.3 < swapped < 0.7  # about half of each row comes from the partner
    clean, _ = observe(Victim("dp", 0.0, clip=1.0), u, torch.Generator().manual_seed(1))
    assert torch.allclose(clean.norm(dim=1), torch.ones(4))
    noisy, _ = observe(Victim("dp", 2.0, clip=1.0), u, torch.Generator().manual_seed(1))
    assert (noisy - clean).std().item() == pytest.approx(2.0, rel=0.15)
    with pytest.raises(ValueError, match="victim kind"):
        Victim("secure-aggregation")


def test_tiny_model_plain_gradient_leaks_the_image_and_label_mixing_does_not(mnist):
    x, y = sample_victim_batches(mnist, 2, 1, seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    study = reconstruction_study(model, x, y, [Victim("fl"), Victim("ffl"), Victim("dp", 0.1)],
                                 config=InversionConfig(steps=300, tv_weight=1e-3), mean=mnist.mean,
                                 std=mnist.std, seed=0)
    s = study.summary().set_index("victim")
    assert s.loc["FL", "psnr"] > 25 and s.loc["FL", "ssim"] > 0.8
    assert s.loc["FL", "label_recovery"] == 1.0
    assert s.loc["FFL", "psnr"] < s.loc["FL", "psnr"] - 10
    assert s.loc["FFL", "ssim"] < s.loc["FL", "ssim"] - 0.2
    assert s.loc["DP (z=0.1)", "psnr"] < s.loc["FL", "psnr"] - 10
    assert study.reconstructions["FL"].shape == (2, 1, 1, 28, 28)


def test_mnist_cnn_quick_profile_inversion(mnist):
    x, y = sample_victim_batches(mnist, 2, 1, seed=0)
    torch.manual_seed(0)
    study = reconstruction_study(MnistCNN(10), x, y, [Victim("fl"), Victim("ffl")],
                                 config=InversionConfig(steps=400), mean=mnist.mean, std=mnist.std, seed=0)
    s = study.summary().set_index("victim")
    assert s.loc["FL", "psnr"] > 20 and s.loc["FL", "label_recovery"] == 1.0
    assert s.loc["FFL", "psnr"] < 12


def test_inversion_checks_its_inputs():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    target = model_gradient(model, torch.randn(1, 1, 2, 2), torch.tensor([1]))
    with pytest.raises(ValueError, match="trainable parameters"):
        invert_gradients(model, target[:-1], 1, (1, 2, 2))
    with pytest.raises(ValueError, match="NaN"):
        invert_gradients(model, torch.full_like(target, float("nan")), 1, (1, 2, 2))
    with pytest.raises(ValueError, match="steps"):
        InversionConfig(steps=0)
    with pytest.raises(ValueError, match="init"):
        InversionConfig(init="zeros")
    res = invert_gradients(model, target, 1, (1, 2, 2), labels=torch.tensor([1]), config=InversionConfig(steps=3))
    assert not res.labels_recovered and res.inputs.shape == (1, 1, 2, 2)
