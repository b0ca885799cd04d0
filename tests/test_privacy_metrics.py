"""PSNR, SSIM, best-match scoring, and label recovery from the output-bias gradient."""

import math

import numpy as np
import pytest
import torch

from flhelpers.models import MnistCNN
from flhelpers.params import layout_of
from flhelpers.privacy.image_metrics import psnr, score_reconstructions, ssim, to_pixels
from flhelpers.privacy.inversion import label_recovery_rate, model_gradient, recover_labels

def test_psnr_by_hand():
    x = torch.zeros(2, 1, 4, 4)
    y = torch.full((2, 1, 4, 4), 0.1)
    assert torch.allclose(psnr(x, y), torch.tensor([20.0, 20.0]))  # 10 log10(1 / 0.01)
    assert torch.allclose(psnr(255 * x, 255 * y, data_range=255.0), torch.tensor([20.0, 20.0]))
    assert math.isinf(psnr(y, y)[0].item())


def test_ssim_of_constant_images_by_hand():
    a, b = 0.2, 0.6
    x = torch.full((1, 1, 16, 16), a)
    y = torch.full((1, 1, 16, 16), b)
    c1 = 0.01**2
    # zero variances: SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    assert ssim(x, y).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-5)


def test_ssim_single_window_matches_direct_weighted_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 11, 11, generator=g, dtype=torch.float64)
    y = (x + 0.2 * torch.rand(1, 1, 11, 11, generator=g, dtype=torch.float64)).clamp(0, 1)
    t = np.arange(11) - 5
    w = np.exp(-(t**2) / (2 * 1.5**2))
    w = np.outer(w, w) / np.outer(w, w).sum()
    xs, ys = x[0, 0].numpy(), y[0, 0].numpy()
    mx, my = (w * xs).sum(), (w * ys).sum()
    vx, vy = (w * xs * xs).sum() - mx**2, (w * ys * ys).sum() - my**2
    cxy = (w * xs * ys).sum() - mx * my
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim(x, y).item() == pytest.approx(expected, rel=1e-5)


def test_ssim_properties():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 32, 32, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(3))
    noisy = [(x + s * torch.randn(x.shape, generator=g)).clamp(0, 1) for s in (0.05, 0.2, 0.5)]
    scores = [ssim(x, n).mean().item() for n in noisy]
    assert scores[0] > scores[1] > scores[2]
    assert torch.allclose(ssim(x, noisy[1]), ssim(noisy[1], x))
    with pytest.raises(ValueError, match="window"):
        ssim(x[..., :8, :8], x[..., :8, :8])
    with pytest.raises(ValueError, match="shape"):
        psnr(x, x[:2])


def test_best_match_scoring_undoes_a_permutation():
    g = torch.Generator().manual_seed(2)
    truth = torch.rand(5, 1, 16, 16, generator=g)
    perm = torch.tensor([3, 0, 4, 1, 2])
    scores = score_reconstructions(truth[perm], truth)
    assert torch.equal(scores.match, perm)
    assert torch.isinf(scores.psnr).all() and torch.allclose(scores.ssim, torch.ones(5))
    # two reconstructions of the same input: best match pairs both with it, one-to-one does not
    recs = torch.stack([truth[0], truth[0] + 0.01, truth[2], truth[3], truth[4]])
    assert scores.__class__ is type(score_reconstructions(recs, truth))
    assert score_reconstructions(recs, truth).match.tolist() == [0, 0, 2, 3, 4]
    assert score_reconstructions(recs, truth, one_to_one=True).match.tolist() == [0, 1, 2, 3, 4]


def test_to_pixels_undoes_normalisation():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    normed = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(to_pixels(normed, mean, std), x.float() / 255, atol=1e-6)


def test_recover_label_counts_from_a_constructed_bias_gradient():
    counts = torch.tensor([2, 0, 3, 1, 0, 0, 0, 0, 2, 0])
    n = int(counts.sum())
    p = torch.full((10,), 0.1, dtype=torch.float64)
    g = p - counts.double() / n  # dL/db_c = mean_i p_ic - n_c / N
    assert recover_labels(g, n, p).tolist() == [0, 0, 2, 2, 2, 3, 8, 8]
    assert recover_labels(torch.tensor([0.1, -0.9, 0.8]), 1).tolist() == [1]


def test_recover_labels_from_real_gradients():
    torch.manual_seed(0)
    model = MnistCNN(10).eval()
    bias = layout_of(model).output_bias
    x = torch.randn(8, 1, 28, 28)
    distinct = torch.tensor([5, 0, 4, 1, 9, 2, 7, 3])
    g = model_gradient(model, x, distinct)
    assert torch.equal(recover_labels(g[bias], 8), distinct.sort().values)
    for i in range(3):
        g1 = model_gradient(model, x[i : i + 1], distinct[i : i + 1])
        assert recover_labels(g1[bias], 1).item() == distinct[i].item()


def test_label_recovery_rate_counts_multisets():
    assert label_recovery_rate(torch.tensor([1, 1, 2]), torch.tensor([1, 2, 2])) == pytest.approx(2 / 3)
    assert label_recovery_rate(torch.tensor([3]), torch.tensor([3])) == 1.0
    assert label_recovery_rate(torch.tensor([4]), torch.tensor([3])) == 0.0
