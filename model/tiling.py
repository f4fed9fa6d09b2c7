"""Sliding-window tiling with gaussian blending, exactly as the DiffBIR reference does it.

The reference's numbers depend on two quirks reproduced here on purpose: windows every `stride` plus one
last window flush with the edge (only when the stride does not land on it), and a gaussian weight map whose
x centre is (n-1)/2 while its y centre is n/2 (so the map is not symmetric). Both are hand-written because
no library implements these exact quirks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from model.errors import InvalidInputError

GAUSSIAN_VAR = 0.01

Coords = tuple[int, int, int, int]  # (hi, hi_end, wi, wi_end)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:  # one window covering the whole (short) side; the reference assumes this never happens
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if (length - tile) % stride != 0:
        starts.append(length - tile)
    return starts


def tile_coords(h: int, w: int, tile: int, stride: int) -> list[Coords]:
    """Windows `(hi, hi_end, wi, wi_end)` in row-major order, like the reference's `sliding_windows`.

    A side not longer than `tile` gets a single window of the side's length (the reference would produce a
    negative start there); callers must size their weights from each window, see `window_weights`.
    """
    if tile <= 0 or stride <= 0:
        raise InvalidInputError(f"tile ({tile}) and stride ({stride}) must be positive")
    if stride > tile:
        raise InvalidInputError(f"stride {stride} > tile {tile} would leave gaps between windows")
    th, tw = min(tile, h), min(tile, w)
    return [(hi, hi + th, wi, wi + tw) for hi in _starts(h, tile, stride) for wi in _starts(w, tile, stride)]


def gaussian_weights(tile_width: int, tile_height: int) -> np.ndarray:
    """[tile_height, tile_width] float64 weights (var 0.01; x centre (n-1)/2, y centre n/2)."""

    def probs(n: int, midpoint: float) -> np.ndarray:
        x = np.arange(n, dtype=np.float64)
        return np.exp(-(x - midpoint) * (x - midpoint) / (n * n) / (2 * GAUSSIAN_VAR)) / np.sqrt(
            2 * np.pi * GAUSSIAN_VAR
        )

    return np.outer(probs(tile_height, tile_height / 2), probs(tile_width, (tile_width - 1) / 2))


def window_weights(
    height: int, width: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """`gaussian_weights` as a [1,1,h,w] tensor (float64 values rounded once to `dtype`, as the reference)."""
    return torch.tensor(gaussian_weights(width, height)[None, None], dtype=dtype, device=device)


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    stride: int,
    scale: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Run `fn` on overlapping `tile` x `tile` windows of `x` [B,C,H,W] and blend with gaussian weights.

    `fn` maps a [B,C,t,t] window to [B,C',t*scale,t*scale]. Sums are kept in float32 (as the reference does
    for fp32 inputs) so fp16/bf16 inputs do not lose precision while blending; the result has `x`'s dtype.
    `progress(done, total)` is called after each window.
    """
    if x.ndim != 4:
        raise InvalidInputError(f"expected a [B,C,H,W] tensor, got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    coords = tile_coords(h, w, tile, stride)
    out: torch.Tensor | None = None
    count = torch.zeros((1, 1, h * scale, w * scale), dtype=torch.float32, device=x.device)
    weights_cache: dict[tuple[int, int], torch.Tensor] = {}
    for i, (hi, hi_end, wi, wi_end) in enumerate(coords):
        y = fn(x[..., hi:hi_end, wi:wi_end])
        oh, ow = (hi_end - hi) * scale, (wi_end - wi) * scale
        if tuple(y.shape[-2:]) != (oh, ow):
            raise InvalidInputError(f"tile function returned {tuple(y.shape)}, expected spatial {(oh, ow)}")
        if out is None:
            out = torch.zeros((b, y.shape[1], h * scale, w * scale), dtype=torch.float32, device=x.device)
        weights = weights_cache.get((oh, ow))
        if weights is None:
            weights = weights_cache[(oh, ow)] = window_weights(oh, ow, device=x.device)
        region = (..., slice(hi * scale, hi_end * scale), slice(wi * scale, wi_end * scale))
        out[region] += y.float() * weights
        count[region] += weights
        if progress is not None:
            progress(i + 1, len(coords))
    assert out is not None  # tile_coords always returns at least one window
    return (out / count).to(x.dtype)


def num_tiles(h: int, w: int, tile: int, stride: int) -> int:
    """How many windows `tile_coords` yields (for progress totals and cost estimates)."""
    rows = 1 if h <= tile else math.ceil((h - tile) / stride) + 1
    cols = 1 if w <= tile else math.ceil((w - tile) / stride) + 1
    return rows * cols
