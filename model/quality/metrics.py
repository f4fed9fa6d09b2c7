"""Full-reference PSNR and SSIM exactly as BasicSR defines them (`basicsr/metrics/psnr_ssim.py`).

Definitions (uint8 RGB inputs, computed in float64 on the 0..255 scale):
- `crop_border` pixels are dropped on every side first (the SR convention: crop = scale).
- Y channel: ITU-R BT.601 luma in studio range, Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 -- MATLAB's
  `rgb2ycbcr`, not the full-range YIQ/YCbCr of other toolboxes.
- PSNR = 10 log10(255^2 / MSE) over all pixels and channels; inf when identical.
- SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, statistics
  over the 'valid' region only (no padding), mean of the map; for RGB the mean of the three channels' SSIM.

Written here rather than imported: pyiqa's SSIM clamps the contrast term at 0 and defaults to YIQ, and
torchmetrics pads the borders; both give different numbers from the ones papers report. Tests check these
against scikit-image, computed independently with the same settings.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

Y_WEIGHTS = (65.481, 128.553, 24.966)  # BT.601 studio-range luma on 0..1 inputs, offset 16
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _prepare(
    a: np.ndarray, b: np.ndarray, crop_border: int, y_channel: bool
) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected H x W x 3 RGB images, got {a.shape}")
    x, y = a.astype(np.float64), b.astype(np.float64)
    if crop_border:
        x = x[crop_border:-crop_border, crop_border:-crop_border]
        y = y[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        x, y = to_y(x), to_y(y)
    return x, y


def to_y(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 RGB on 0..255 -> H x W x 1 luma Y on 0..255 (16..235 for in-range inputs)."""
    return (rgb @ (np.asarray(Y_WEIGHTS) / 255.0) + 16.0)[..., None]


def psnr(a: np.ndarray, b: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    x, y = _prepare(a, b, crop_border, y_channel)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _gaussian_window() -> torch.Tensor:
    ax = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-(ax**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return torch.outer(g, g)[None, None]


def ssim(a: np.ndarray, b: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    x, y = _prepare(a, b, crop_border, y_channel)
    if min(x.shape[:2]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after cropping, got {x.shape}"
        )
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    window = _gaussian_window()
    # channels as a batch: one 'valid' convolution each
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[:, None]
    yt = torch.from_numpy(np.ascontiguousarray(y.transpose(2, 0, 1)))[:, None]

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window)

    mu_x, mu_y = filt(xt), filt(yt)
    var_x = filt(xt * xt) - mu_x**2
    var_y = filt(yt * yt) - mu_y**2
    cov = filt(xt * yt) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean(dim=(1, 2, 3)).mean())


def level_difference(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """(max, mean) absolute difference in uint8 levels: how far an accelerated output drifted."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(diff.max()), float(diff.mean())


def common_crop(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images cut to their common top-left area (an HQ side that is not a multiple of the scale)."""
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    return a[:h, :w], b[:h, :w]
