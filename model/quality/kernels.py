"""Blur kernels of the Real-ESRGAN / DiffBIR degradation model, each normalised to sum to 1.

The formulas are the published ones (Real-ESRGAN, Wang et al. 2021, §3.1; the DiffBIR paper §3.1 reuses
them); they are written here because the only packaged implementation is BasicSR's, which is unmaintained and
pulls a training stack. A kernel is evaluated on the integer grid of a `size` x `size` window centred on 0.
Quadratic form q = x^T Sigma^-1 x with Sigma = R diag(sx^2, sy^2) R^T (R: rotation by theta):

- Gaussian:              exp(-q / 2)
- generalized Gaussian:  exp(-q^beta / 2)        (beta < 1 heavier tails, beta > 1 flatter top)
- plateau:               1 / (1 + q^beta)
- sinc (circular low-pass, ringing/overshoot): wc J1(wc r) / (2 pi r), wc^2 / (4 pi) at r = 0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

KERNEL_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd number, got {size}")
    ax = np.arange(size, dtype=np.float64) - size // 2
    return np.meshgrid(ax, ax)  # xx (columns), yy (rows)


def _quadratic(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """q = x^T Sigma^-1 x on the grid."""
    xx, yy = _grid(size)
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    inv = np.linalg.inv(rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T)
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def _normalised(kernel: np.ndarray) -> np.ndarray:
    return kernel / kernel.sum()


def gaussian(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> np.ndarray:
    """Isotropic when `sigma_y` is None, else anisotropic rotated by `theta` (radians)."""
    sy = sigma_x if sigma_y is None else sigma_y
    return _normalised(np.exp(-0.5 * _quadratic(size, sigma_x, sy, theta)))


def generalized_gaussian(
    size: int, sigma_x: float, beta: float, sigma_y: float | None = None, theta: float = 0.0
) -> np.ndarray:
    sy = sigma_x if sigma_y is None else sigma_y
    return _normalised(np.exp(-0.5 * np.power(_quadratic(size, sigma_x, sy, theta), beta)))


def plateau(
    size: int, sigma_x: float, beta: float, sigma_y: float | None = None, theta: float = 0.0
) -> np.ndarray:
    sy = sigma_x if sigma_y is None else sigma_y
    return _normalised(1.0 / (np.power(_quadratic(size, sigma_x, sy, theta), beta) + 1.0))


def sinc(size: int, cutoff: float, pad_to: int = 0) -> np.ndarray:
    """Circular low-pass with cut-off `cutoff` (radians, pi = Nyquist), zero-padded to `pad_to`."""
    xx, yy = _grid(size)
    r = np.hypot(xx, yy)
    j1 = torch.special.bessel_j1(torch.from_numpy(cutoff * r)).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = cutoff * j1 / (2 * np.pi * r)
    kernel[size // 2, size // 2] = cutoff**2 / (4 * np.pi)
    kernel = _normalised(kernel)
    if pad_to > size:
        p = (pad_to - size) // 2
        kernel = np.pad(kernel, p)
    return kernel


def pad(kernel: np.ndarray, size: int) -> np.ndarray:
    p = (size - kernel.shape[0]) // 2
    return np.pad(kernel, p) if p > 0 else kernel


@dataclass(frozen=True)
class KernelSpec:
    """How a random blur kernel is drawn (one order of a degradation preset)."""

    kinds: tuple[str, ...]
    probs: tuple[float, ...]
    sigma: tuple[float, float]
    size: int = 21  # fixed size, or the largest odd size when `random_size`
    random_size: bool = True  # odd sizes 7..`size`, as Real-ESRGAN
    betag: tuple[float, float] = (0.5, 4.0)
    betap: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.0


def _beta(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Half the draws below 1 and half above when the range spans 1 (Real-ESRGAN's shape sampling)."""
    if lo < 1.0 < hi:
        return float(rng.uniform(lo, 1.0) if rng.uniform() < 0.5 else rng.uniform(1.0, hi))
    return float(rng.uniform(lo, hi))


def random_kernel(rng: np.random.Generator, spec: KernelSpec) -> tuple[np.ndarray, dict[str, Any]]:
    """A kernel drawn as `spec` says, padded to `spec.size`, and the parameters that made it."""
    size = int(rng.choice(np.arange(7, spec.size + 1, 2))) if spec.random_size else spec.size
    if spec.sinc_prob and rng.uniform() < spec.sinc_prob:
        # Small kernels get the higher cut-offs, else the ringing dominates (Real-ESRGAN's choice).
        cutoff = float(rng.uniform(math.pi / 3, math.pi) if size < 13 else rng.uniform(math.pi / 5, math.pi))
        return sinc(size, cutoff, pad_to=spec.size), {"kind": "sinc", "size": size, "cutoff": cutoff}
    kind = str(rng.choice(spec.kinds, p=np.asarray(spec.probs) / sum(spec.probs)))
    sx = float(rng.uniform(*spec.sigma))
    params: dict[str, Any] = {"kind": kind, "size": size, "sigma_x": sx}
    sy, theta = None, 0.0
    if kind.endswith("aniso"):
        sy = float(rng.uniform(*spec.sigma))
        theta = float(rng.uniform(-math.pi, math.pi))
        params.update(sigma_y=sy, theta=theta)
    if kind in ("iso", "aniso"):
        kernel = gaussian(size, sx, sy, theta)
    elif kind.startswith("generalized"):
        params["beta"] = beta = _beta(rng, *spec.betag)
        kernel = generalized_gaussian(size, sx, beta, sy, theta)
    elif kind.startswith("plateau"):
        params["beta"] = beta = _beta(rng, *spec.betap)
        kernel = plateau(size, sx, beta, sy, theta)
    else:
        raise ValueError(f"unknown kernel kind {kind!r}; expected one of {KERNEL_KINDS}")
    return pad(kernel, spec.size), params
