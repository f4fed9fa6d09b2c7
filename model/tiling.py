"""Sliding-window tiling with gaussian blending, exactly as the DiffBIR reference does it.

The reference's numbers depend on two quirks reproduced here on purpose: windows every `stride` plus one
last window flush with the edge (only when the stride does not land on it), and a gaussian weight map whose
x centre is (n-1)/2 while its y centre is n/2 (so the map is not symmetric). Both are hand-written because
no library implements these exact quirks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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


def window_batches(coords: Sequence[Coords], batch: int) -> list[list[Coords]]:
    """`coords` in consecutive groups of at most `batch` windows, one forward each.

    The group sizes differ by at most one (e.g. 11 windows, batch 4 -> 4, 4, 3), so a run has at most two
    batch shapes (one CUDA graph or compiled shape each) and no nearly empty last forward.
    """
    if batch < 1:
        raise InvalidInputError(f"tiles per forward must be >= 1, got {batch}")
    n = len(coords)
    groups = max(1, math.ceil(n / batch))
    size, extra = divmod(n, groups)
    out: list[list[Coords]] = []
    start = 0
    for g in range(groups):
        end = start + size + (1 if g < extra else 0)
        out.append(list(coords[start:end]))
        start = end
    return out


def stack_windows(x: torch.Tensor, coords: Sequence[Coords]) -> torch.Tensor:
    """The windows of `x` [B,C,H,W] stacked window-major on the batch axis: [len(coords)*B, C, h, w].

    One window is returned as a view (no copy), so batch 1 runs exactly what per-window code ran.
    """
    views = [x[..., hi:hi_end, wi:wi_end] for hi, hi_end, wi, wi_end in coords]
    return views[0] if len(views) == 1 else torch.cat(views)


WeightsFn = Callable[[int, int], torch.Tensor]


def blend_tiles(
    run: Callable[[list[Coords]], torch.Tensor],
    coords: Sequence[Coords],
    out_hw: tuple[int, int],
    region: Callable[[Coords], Coords],
    device: torch.device,
    batch: int = 1,
    weights: WeightsFn | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Gaussian-blend the outputs of `run` over `coords`, up to `batch` windows per call of `run`.

    `run(windows)` returns their outputs stacked window-major on the batch axis ([k*B, C', h', w']);
    `region(window)` is where a window's output lands in the [B, C', *out_hw] result. Each window's output is
    added in the same (row-major) order with the same weights whatever `batch` is, so batching changes the
    result only by what the net itself computes differently at another batch size. Sums are float32.
    `weights(h, w)` gives the weight map of an output window (default: `window_weights`, cached per call).
    """
    cache: dict[tuple[int, int], torch.Tensor] = {}

    def weights_for(h: int, w: int) -> torch.Tensor:
        if weights is not None:
            return weights(h, w)
        if (h, w) not in cache:
            cache[(h, w)] = window_weights(h, w, device=device)
        return cache[(h, w)]

    out: torch.Tensor | None = None
    count = torch.zeros((1, 1, *out_hw), dtype=torch.float32, device=device)
    done = 0
    for group in window_batches(coords, batch):
        ys = run(group)
        if ys.shape[0] % len(group):
            raise InvalidInputError(f"{len(group)} windows gave a batch of {ys.shape[0]} outputs")
        b = ys.shape[0] // len(group)
        if out is None:
            out = torch.zeros((b, ys.shape[1], *out_hw), dtype=torch.float32, device=device)
        for k, window in enumerate(group):
            oh, oh_end, ow, ow_end = region(window)
            y = ys[k * b : (k + 1) * b]
            if tuple(y.shape[-2:]) != (oh_end - oh, ow_end - ow):
                raise InvalidInputError(
                    f"tile function returned {tuple(y.shape)}, expected spatial {(oh_end - oh, ow_end - ow)}"
                )
            w = weights_for(oh_end - oh, ow_end - ow)
            out[..., oh:oh_end, ow:ow_end] += y.float() * w
            count[..., oh:oh_end, ow:ow_end] += w
        done += len(group)
        if progress is not None:
            progress(done, len(coords))
    assert out is not None  # tile_coords always returns at least one window
    return out / count


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    stride: int,
    scale: int = 1,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 1,
) -> torch.Tensor:
    """Run `fn` on overlapping `tile` x `tile` windows of `x` [B,C,H,W] and blend with gaussian weights.

    `fn` maps a [N,C,t,t] stack of windows to [N,C',t*scale,t*scale] (per item: a net, not a function of
    the whole batch); `batch` windows go through one call. Sums are kept in float32 (as the reference does
    for fp32 inputs) so fp16/bf16 inputs do not lose precision while blending; the result has `x`'s dtype.
    `progress(done, total)` is called after each call of `fn`.
    """
    if x.ndim != 4:
        raise InvalidInputError(f"expected a [B,C,H,W] tensor, got shape {tuple(x.shape)}")
    _, _, h, w = x.shape

    def region(c: Coords) -> Coords:
        return c[0] * scale, c[1] * scale, c[2] * scale, c[3] * scale

    out = blend_tiles(
        lambda windows: fn(stack_windows(x, windows)),
        tile_coords(h, w, tile, stride),
        (h * scale, w * scale),
        region,
        x.device,
        batch=batch,
        progress=progress,
    )
    return out.to(x.dtype)


def num_tiles(h: int, w: int, tile: int, stride: int) -> int:
    """How many windows `tile_coords` yields (for progress totals and cost estimates)."""
    rows = 1 if h <= tile else math.ceil((h - tile) / stride) + 1
    cols = 1 if w <= tile else math.ceil((w - tile) / stride) + 1
    return rows * cols
