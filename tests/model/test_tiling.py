"""Sliding windows and gaussian blending, against the reference's coordinates, weights and tiled outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.errors import InvalidInputError
from model.tiling import gaussian_weights, num_tiles, tile_coords, tiled_apply, window_weights
from tests.model.reference import assert_forward_close, load_fixture


@pytest.fixture(scope="module")
def utils() -> tuple[dict[str, torch.Tensor], dict]:
    return load_fixture("utils")


def test_coords_match_reference(utils: tuple[dict[str, torch.Tensor], dict]) -> None:
    t, meta = utils
    h, w = meta["tile_latent"]
    coords = tile_coords(h, w, meta["tile_size"], meta["tile_stride"])
    assert torch.equal(torch.tensor(coords), t["tiled.coords"])


def test_last_window_is_flush_and_not_duplicated() -> None:
    # (10 - 4) % 4 != 0: windows at 0, 4, then a flush one at 6
    assert [c[0] for c in tile_coords(10, 4, 4, 4)] == [0, 4, 6]
    # (12 - 4) % 4 == 0: the stride lands on the edge, no extra window
    assert [c[0] for c in tile_coords(12, 4, 4, 4)] == [0, 4, 8]
    # row-major order, each window tile x tile
    coords = tile_coords(6, 7, 4, 2)
    assert coords == [(0, 4, 0, 4), (0, 4, 2, 6), (0, 4, 3, 7), (2, 6, 0, 4), (2, 6, 2, 6), (2, 6, 3, 7)]


def test_short_side_gets_one_window() -> None:
    assert tile_coords(3, 10, 4, 2) == [(0, 3, 0, 4), (0, 3, 2, 6), (0, 3, 4, 8), (0, 3, 6, 10)]
    assert tile_coords(4, 4, 8, 4) == [(0, 4, 0, 4)]


@pytest.mark.parametrize("tile,stride", [(0, 1), (4, 0), (4, 5)])
def test_bad_tiling_is_refused(tile: int, stride: int) -> None:
    with pytest.raises(InvalidInputError):
        tile_coords(16, 16, tile, stride)


@pytest.mark.parametrize(
    "h,w,tile,stride", [(12, 16, 8, 4), (64, 160, 64, 48), (100, 37, 32, 24), (5, 50, 8, 3)]
)
def test_num_tiles(h: int, w: int, tile: int, stride: int) -> None:
    assert num_tiles(h, w, tile, stride) == len(tile_coords(h, w, tile, stride))


@pytest.mark.parametrize("n", [8, 64, 7])
def test_gaussian_weights_match_reference(utils: tuple[dict[str, torch.Tensor], dict], n: int) -> None:
    ref = utils[0][f"gaussian_weights.{n}"].numpy()
    ours = gaussian_weights(n, n)
    assert ours.dtype == np.float64
    np.testing.assert_array_equal(ours, ref)


def test_gaussian_weights_are_asymmetric_in_y() -> None:
    w = gaussian_weights(8, 8)
    np.testing.assert_allclose(w, w[:, ::-1])  # x centre (n-1)/2: symmetric left-right
    assert w[4].max() == w.max() and w[3].max() < w.max()  # y centre n/2: the peak row is 4, not 3.5
    assert gaussian_weights(6, 4).shape == (4, 6)


def test_window_weights_tensor() -> None:
    w = window_weights(4, 6, dtype=torch.float16)
    assert w.shape == (1, 1, 4, 6) and w.dtype == torch.float16
    assert torch.equal(w, torch.tensor(gaussian_weights(6, 4), dtype=torch.float16)[None, None])


def test_tiled_apply_matches_reference(utils: tuple[dict[str, torch.Tensor], dict]) -> None:
    t, meta = utils

    def fn(z: torch.Tensor) -> torch.Tensor:  # the tile-dependent function of the fixture's meta
        return z * z.mean(dim=(2, 3), keepdim=True) + z.std()

    out = tiled_apply(fn, t["tiled.x"], meta["tile_size"], meta["tile_stride"])
    assert_forward_close(out, t["tiled.simple_out"], "tiled simple fn")


def test_tiled_apply_with_scale_reproduces_a_pointwise_upsampler() -> None:
    """For a function that does not depend on the tile, blending must give back the untiled result."""
    x = torch.rand(2, 3, 20, 27)

    def up(z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(z, scale_factor=2, mode="nearest") * 3 - 1

    out = tiled_apply(up, x, 8, 5, scale=2)
    torch.testing.assert_close(out, up(x), rtol=1e-6, atol=1e-6)


def test_tiled_apply_progress_dtype_and_channel_change() -> None:
    calls: list[tuple[int, int]] = []
    x = torch.rand(1, 4, 12, 16, dtype=torch.float16)
    out = tiled_apply(lambda z: z[:, :3] * 2, x, 8, 4, progress=lambda i, n: calls.append((i, n)))
    assert out.dtype == torch.float16 and out.shape == (1, 3, 12, 16)
    assert calls == [(i, 6) for i in range(1, 7)]
    torch.testing.assert_close(out, x[:, :3] * 2, rtol=2e-3, atol=2e-3)


def test_tiled_apply_rejects_wrong_output_size() -> None:
    with pytest.raises(InvalidInputError, match="expected spatial"):
        tiled_apply(lambda z: z[..., :-1], torch.rand(1, 3, 8, 8), 4, 4)
    with pytest.raises(InvalidInputError):
        tiled_apply(lambda z: z, torch.rand(3, 8, 8), 4, 4)
