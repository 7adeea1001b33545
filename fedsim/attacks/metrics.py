"""Reconstruction metrics in [0, 1] pixel space: PSNR, SSIM, label accuracy, matching, floors.

All functions take images ``[n, C, H, W]`` already mapped to pixel space; they clamp to [0, 1]
first (unclamped reconstructions give meaningless, even negative, PSNRs).

* PSNR is per image, ``10 log10(1 / MSE_i)`` with data range 1, and a batch is summarised by the
  mean of the per-image values (as breaching, IG and SME report it; torchmetrics' default
  reduction would compute one PSNR of the pooled MSE instead).
* SSIM is Wang et al. 2004 (IEEE TIP 13(4), eq. 13) with an 11-tap Gaussian window (sigma 1.5),
  K1 = 0.01, K2 = 0.03, population (not sample) covariances, averaged over the valid (unpadded)
  window positions and over channels -- the same numbers as
  ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)``. It is *not* breaching's CW-SSIM.
* MS-SSIM (Wang, Simoncelli, Bovik, Asilomar 2003) is torchmetrics' implementation, at 3 scales
  instead of the paper's 5: 28x28 images halve only twice before a window no longer fits. The
  weights are the paper's first three (0.0448, 0.2856, 0.3001) rescaled to sum to 1, with a 7-tap
  Gaussian window (sigma 1.5); images below 25 pixels a side get no value. Comparable within
  fedsim, not with 5-scale numbers from papers.
* Reconstructions come out in arbitrary order; :func:`match` pairs them with the ground truth by
  the Hungarian algorithm on MSE.
* :func:`floor_psnr` is the no-information floor: the mean PSNR of the best single constant image
  (one grey level, or one colour) against a set of images. An attack within 1-2 dB of it failed.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch

__all__ = ["psnr", "ssim", "ms_ssim", "match", "label_accuracy", "floor_constant", "floor_psnr",
           "constant_psnr"]

_EPS_MSE = 1e-10  # caps a perfect reconstruction at 100 dB instead of +inf


def _unit(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"images must be [n, C, H, W], got shape {tuple(x.shape)}")
    return x.detach().to(torch.float64).clamp(0.0, 1.0)


def psnr(recon: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB (data range 1): ``[n]``."""
    a, b = _unit(recon), _unit(truth)
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(_EPS_MSE)
    return 10.0 * torch.log10(1.0 / mse)


_MS_SSIM_BETAS = tuple(b / 0.6305 for b in (0.0448, 0.2856, 0.3001))  # the paper's first three, summing to 1
_MS_SSIM_KERNEL = 7
MS_SSIM_MIN_SIDE = (_MS_SSIM_KERNEL - 1) * 2 ** (len(_MS_SSIM_BETAS) - 1) + 1


def ms_ssim(recon: torch.Tensor, truth: torch.Tensor) -> torch.Tensor | None:
    """Per-image 3-scale MS-SSIM ``[n]`` (torchmetrics), or None for images too small for 3 scales."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    a, b = _unit(recon), _unit(truth)
    if min(a.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return None
    return multiscale_structural_similarity_index_measure(a, b, data_range=1.0, kernel_size=_MS_SSIM_KERNEL, sigma=1.5,
                                                          betas=_MS_SSIM_BETAS, reduction="none")


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage's radius rule: 11 taps for sigma 1.5
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-t ** 2 / (2 * sigma ** 2))
    return w / w.sum()


def ssim(recon: torch.Tensor, truth: torch.Tensor, *, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> torch.Tensor:
    """Per-image mean SSIM (Wang et al. 2004, eq. 13; Gaussian window), ``[n]``."""
    a, b = _unit(recon), _unit(truth)
    n, c, h, w = a.shape
    win = _gaussian_window(sigma)
    if min(h, w) < win.numel():
        raise ValueError(f"SSIM needs images of at least {win.numel()} px, got {h}x{w}")
    kh, kw = win.view(1, 1, -1, 1), win.view(1, 1, 1, -1)

    def filt(z: torch.Tensor) -> torch.Tensor:  # separable valid convolution, per channel
        z = z.reshape(n * c, 1, *z.shape[2:])
        return torch.nn.functional.conv2d(torch.nn.functional.conv2d(z, kh), kw)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a ** 2
    var_b = filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = k1 ** 2, k2 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.reshape(n, -1).mean(1)


def match(recon: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """Hungarian matching on MSE: ``order`` such that ``recon[order[j]]`` pairs with ``truth[j]``.

    With fewer reconstructions than truths, unmatched truths get ``-1``."""
    a, b = _unit(recon).flatten(1), _unit(truth).flatten(1)
    cost = torch.cdist(b, a).pow(2).numpy()  # [n_truth, n_recon]
    from scipy.optimize import linear_sum_assignment  # scipy loads on first use (start-up time)

    rows, cols = linear_sum_assignment(cost)
    order = np.full(len(b), -1, dtype=np.int64)
    order[rows] = cols
    return order


def label_accuracy(recovered, true) -> float:
    """Multiset overlap of recovered and true labels, divided by the number of true labels."""
    true = [int(v) for v in true]
    if not true:
        return float("nan")
    rec, tru = Counter(int(v) for v in recovered), Counter(true)
    return sum(min(rec[c], k) for c, k in tru.items()) / len(true)


def constant_psnr(value, images: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR of the constant image ``value`` (a grey level or one value per channel)."""
    x = _unit(images)
    v = torch.as_tensor(value, dtype=torch.float64).reshape(1, -1, 1, 1)
    return psnr(v.expand_as(x).contiguous(), x)


def floor_constant(images: torch.Tensor) -> np.ndarray:
    """The constant (one value per channel) maximising the mean per-image PSNR over ``images``.

    The MSE-optimal constant is the pixel mean; the PSNR-optimal one differs slightly because
    PSNR is a mean of logs. Nelder-Mead from the per-channel mean, inside [0, 1]."""
    x = _unit(images)
    start = x.mean(dim=(0, 2, 3)).numpy()
    sq = x.transpose(0, 1).flatten(1).numpy()  # [C, n*H*W] for a fast objective
    per_image = x.shape[2] * x.shape[3]

    def neg_mean_psnr(v: np.ndarray) -> float:
        v = np.clip(v, 0.0, 1.0)[:, None]
        mse = ((sq - v) ** 2).reshape(len(v), x.shape[0], per_image).mean(axis=(0, 2))
        return -float(np.mean(10 * np.log10(1.0 / np.maximum(mse, _EPS_MSE))))

    from scipy.optimize import minimize

    res = minimize(neg_mean_psnr, start, method="Nelder-Mead",
                   options={"xatol": 1e-4, "fatol": 1e-6, "maxiter": 400})
    best = np.clip(res.x, 0.0, 1.0)
    return best if neg_mean_psnr(best) <= neg_mean_psnr(start) else start


def floor_psnr(images: torch.Tensor) -> float:
    """The no-information floor: mean PSNR of the best constant image over ``images`` (dB)."""
    value = float(constant_psnr(floor_constant(images), images).mean())
    return value if math.isfinite(value) else float("nan")
