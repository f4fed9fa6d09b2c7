"""Tiled latent denoising: the model sees overlapping `tile`-cell windows, outputs are gaussian-blended.

Latents bigger than the model's comfortable size are denoised window by window (the reference's
`make_tiled_fn` around the ControlLDM forward): each window gets its own slice of the condition latent and the
outputs are blended with `model/tiling.py`'s weights. `Tiling.batch` windows go through one forward
(stacked on the batch axis), so a large image costs a few big launches per step instead of one small launch
per window; the blend is the same sum in the same order, so only the nets' own batch-size rounding differs.
Because the blend is a weighted average, CFG, x0 and the
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
from model.tiling import Coords, blend_tiles, stack_windows, tile_coords, window_weights

if TYPE_CHECKING:
    from model.cldm import Condition


@dataclass(frozen=True)
class Tiling:
    """Window size and step in LATENT cells (pixels / 8), and how many windows share one model forward
    (`batch`; the planner sizes it to the memory budget, see `model/planning.py`)."""

    tile: int
    stride: int
    batch: int = 1

    def __post_init__(self) -> None:
        if self.tile <= 0 or not 0 < self.stride <= self.tile:
            raise InvalidInputError(f"tiling needs 0 < stride <= tile, got {self.tile=} {self.stride=}")
        if self.batch < 1:
            raise InvalidInputError(f"tiling needs batch >= 1, got {self.batch=}")


def blend_windows(
    fn: Callable[[Coords], torch.Tensor], shape: torch.Size, tiling: Tiling, device: torch.device
) -> torch.Tensor:
    """Sum of `fn(window) * gaussian` over the windows of a latent of `shape`, divided by the summed weights,
    one window per call (guidance keeps this: its windows each have their own loss and gradient).

    Sums are kept in float32 (like the reference for fp32 outputs) whatever dtype `fn` returns.
    """
    return blend_window_batches(
        lambda windows: fn(windows[0]), shape, dataclasses.replace(tiling, batch=1), device
    )


def blend_window_batches(
    fn: Callable[[list[Coords]], torch.Tensor], shape: torch.Size, tiling: Tiling, device: torch.device
) -> torch.Tensor:
    """`blend_windows` with up to `tiling.batch` windows per call: `fn(windows)` returns their outputs
    stacked window-major on the batch axis."""
    _, _, h, w = shape
    return blend_tiles(
        fn,
        tile_coords(h, w, tiling.tile, tiling.stride),
        (h, w),
        lambda coords: coords,
        device,
        batch=tiling.batch,
        weights=lambda wh, ww: _device_weights(wh, ww, device),
    )


@functools.lru_cache(maxsize=16)
def _device_weights(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Weight maps are copied to the device once, not at every step (a host-to-device copy can sync)."""
    return window_weights(height, width, device=device)


def slice_condition(cond: Condition, coords: Coords) -> Condition:
    hi, hi_end, wi, wi_end = coords
    return dataclasses.replace(cond, c_img=cond.c_img[..., hi:hi_end, wi:wi_end])


def stack_condition(cond: Condition, windows: list[Coords]) -> Condition:
    """The condition of `windows` stacked like `stack_windows` stacks the latent: window-major, the text
    context repeated per window."""
    if len(windows) == 1:
        return slice_condition(cond, windows[0])
    return dataclasses.replace(
        cond, c_txt=cond.c_txt.repeat(len(windows), 1, 1), c_img=stack_windows(cond.c_img, windows)
    )


def tiled_denoiser(model: Denoiser, tiling: Tiling) -> Denoiser:
    """Wrap a denoiser so it runs window by window, `tiling.batch` windows per forward; the result has the
    same signature and output shape. Batching windows needs a model that treats batch items independently
    (every net here does); the windows' outputs are blended exactly as one by one."""

    def forward(x: torch.Tensor, t: torch.Tensor, cond: Condition, strength: float) -> torch.Tensor:
        if x.ndim != 4:
            raise InvalidInputError(f"expected a latent [B,C,H,W], got {tuple(x.shape)}")

        def windows(coords: list[Coords]) -> torch.Tensor:
            k = len(coords)
            tk = t if k == 1 else t.repeat(k)
            return model(stack_windows(x, coords), tk, stack_condition(cond, coords), strength)

        return blend_window_batches(windows, x.shape, tiling, x.device).to(x.dtype)

    return forward
