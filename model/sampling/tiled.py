"""Tiled latent denoising: the model sees overlapping `tile`-cell windows, outputs are gaussian-blended.

Latents bigger than the model's comfortable size are denoised window by window (the reference's
`make_tiled_fn` around the ControlLDM forward): each window gets its own slice of the condition latent and the
outputs are blended with `model/tiling.py`'s weights. Because the blend is a weighted average, CFG, x0 and the
sampler step can all run on the blended full-size output, so every sampler works tiled. Guidance, when on,
runs per window on that window's target slice and is blended the same way (see `guide_tiled`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from model.errors import InvalidInputError
from model.sampling.cfg import Denoiser
from model.tiling import Coords, tile_coords, window_weights

if TYPE_CHECKING:
    from model.cldm import Condition


@dataclass(frozen=True)
class Tiling:
    """Window size and step in LATENT cells (pixels / 8)."""

    tile: int
    stride: int

    def __post_init__(self) -> None:
        if self.tile <= 0 or not 0 < self.stride <= self.tile:
            raise InvalidInputError(f"tiling needs 0 < stride <= tile, got {self.tile=} {self.stride=}")


def blend_windows(
    fn: Callable[[Coords], torch.Tensor], shape: torch.Size, tiling: Tiling, device: torch.device
) -> torch.Tensor:
    """Sum of `fn(window) * gaussian` over the windows of a latent of `shape`, divided by the summed weights.

    Sums are kept in float32 (like the reference for fp32 outputs) whatever dtype `fn` returns.
    """
    b, c, h, w = shape
    out = torch.zeros((b, c, h, w), dtype=torch.float32, device=device)
    count = torch.zeros((1, 1, h, w), dtype=torch.float32, device=device)
    for coords in tile_coords(h, w, tiling.tile, tiling.stride):
        hi, hi_end, wi, wi_end = coords
        weights = _device_weights(hi_end - hi, wi_end - wi, device)
        out[..., hi:hi_end, wi:wi_end] += fn(coords).float() * weights
        count[..., hi:hi_end, wi:wi_end] += weights
    return out / count


@functools.lru_cache(maxsize=16)
def _device_weights(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Weight maps are copied to the device once, not at every step (a host-to-device copy can sync)."""
    return window_weights(height, width, device=device)


def slice_condition(cond: Condition, coords: Coords) -> Condition:
    hi, hi_end, wi, wi_end = coords
    return dataclasses.replace(cond, c_img=cond.c_img[..., hi:hi_end, wi:wi_end])


def tiled_denoiser(model: Denoiser, tiling: Tiling) -> Denoiser:
    """Wrap a denoiser so it runs window by window; the result has the same signature and output shape."""

    def forward(x: torch.Tensor, t: torch.Tensor, cond: Condition, strength: float) -> torch.Tensor:
        if x.ndim != 4:
            raise InvalidInputError(f"expected a latent [B,C,H,W], got {tuple(x.shape)}")

        def window(coords: Coords) -> torch.Tensor:
            hi, hi_end, wi, wi_end = coords
            return model(x[..., hi:hi_end, wi:wi_end], t, slice_condition(cond, coords), strength)

        return blend_windows(window, x.shape, tiling, x.device).to(x.dtype)

    return forward
