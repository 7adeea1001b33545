"""PSNR / SSIM against scikit-image reference values, matching, label accuracy and floors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fedsim.attacks import metrics


def _images(n, c, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g, dtype=torch.float64)


def test_psnr_hand_value():
    # MSE between a constant 0.5 image and black is 0.25: 10 log10(1 / 0.25) = 6.0206 dB.
    value = metrics.psnr(torch.full((1, 1, 4, 4), 0.5), torch.zeros(1, 1, 4, 4))
    assert float(value[0]) == pytest.approx(10 * math.log10(4), abs=1e-9)


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 32, 32)])
def test_psnr_matches_skimage_per_image(shape):
    truth = _images(*shape, seed=1)
    recon = (truth + 0.1 * _images(*shape, seed=2) - 0.05).clamp(0, 1)
    ours = metrics.psnr(recon, truth)
    for i in range(shape[0]):
        ref = peak_signal_noise_ratio(truth[i].numpy(), recon[i].numpy(), data_range=1.0)
        assert float(ours[i]) == pytest.approx(ref, abs=1e-9)


def test_psnr_clamps_out_of_range_reconstructions():
    truth = torch.zeros(1, 1, 8, 8)
    assert float(metrics.psnr(torch.full((1, 1, 8, 8), -3.0), truth)[0]) == pytest.approx(100.0)


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 32, 32), (1, 1, 11, 13)])
def test_ssim_matches_skimage_gaussian_population_covariance(shape):
    truth = _images(*shape, seed=3)
    recon = (0.7 * truth + 0.3 * _images(*shape, seed=4)).clamp(0, 1)
    ours = metrics.ssim(recon, truth)
    for i in range(shape[0]):
        kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
        if shape[1] == 1:
            ref = structural_similarity(truth[i, 0].numpy(), recon[i, 0].numpy(), **kw)
        else:
            ref = structural_similarity(truth[i].numpy(), recon[i].numpy(), channel_axis=0, **kw)
        assert float(ours[i]) == pytest.approx(ref, abs=1e-9)


def test_ssim_of_identical_images_is_one_and_rejects_tiny_images():
    x = _images(2, 1, 16, 16)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 11"):
        metrics.ssim(_images(1, 1, 8, 8), _images(1, 1, 8, 8))


def test_match_undoes_a_permutation():
    truth = _images(5, 1, 6, 6)
    perm = torch.tensor([3, 0, 4, 1, 2])
    order = metrics.match(truth[perm] + 0.01, truth)
    assert torch.equal(perm[torch.as_tensor(order)], torch.arange(5))
    fewer = metrics.match(truth[:2], truth)
    assert list(fewer[:2]) == [0, 1] and list(fewer[2:]) == [-1, -1, -1]


def test_label_accuracy_is_multiset_overlap():
    assert metrics.label_accuracy([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 3)
    assert metrics.label_accuracy([3, 2, 1], [1, 2, 3]) == 1.0
    assert metrics.label_accuracy([0, 0], [0, 1]) == 0.5


def test_floor_is_the_best_constant():
    x = _images(20, 1, 8, 8, seed=5) ** 3  # dark images, like MNIST backgrounds
    floor = metrics.floor_psnr(x)
    for c in (0.0, float(x.mean()), 0.5):
        assert floor >= float(metrics.constant_psnr(c, x).mean()) - 1e-9
    # the floor of a constant data set is that constant (100 dB cap)
    assert metrics.floor_psnr(torch.full((3, 1, 4, 4), 0.3)) == pytest.approx(100.0, abs=1e-6)
    rgb = metrics.floor_constant(_images(10, 3, 4, 4))
    assert rgb.shape == (3,) and np.all((0 <= rgb) & (rgb <= 1))
