"""The seam-free tiled VAE (shared GroupNorm statistics) against upstream's tiled VAE runs (`tilevae`)."""

from __future__ import annotations

import pytest
import torch

from model import tiled_vae
from model.cldm import ControlLDM
from model.errors import InvalidInputError
from model.tiled_vae import (
    DECODER_PAD,
    ENCODER_PAD,
    best_tile_size,
    decode_tiled_gn,
    encode_tiled_gn,
    encoder_tiled_gn,
    posterior_tiled_gn,
    split_tiles,
)
from tests.model.reference import assert_forward_close, load_fixture

TENSORS, META = load_fixture("tilevae")


def _boxes(meta: dict, key: str) -> list[tuple[int, ...]]:
    return [tuple(box) for box in meta[key]]


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_tile_layout_matches_upstream(part: str) -> None:
    meta = META[part]
    if part == "encoder":
        h, w = meta["input_hw"]
        tiles = split_tiles(h, w, meta["tile_size_px"], ENCODER_PAD, lambda v: v // 8)
    else:
        h, w = meta["latent_hw"]
        tiles = split_tiles(h, w, meta["tile_size_latent"], DECODER_PAD, lambda v: v * 8)
    assert [t.input_box for t in tiles] == _boxes(meta, "tile_input_bboxes_xxyy")
    assert [t.output_box for t in tiles] == _boxes(meta, "tile_output_bboxes_xxyy")


def test_encoder_matches_upstream(tiny_cldm: ControlLDM) -> None:
    vae, img = tiny_cldm.vae, TENSORS["encoder.image"]
    tile = META["encoder"]["tile_size_px"]
    with torch.no_grad():
        assert_forward_close(encoder_tiled_gn(vae, img, tile), TENSORS["encoder.h_tiled"], "encoder h")
        assert_forward_close(encode_tiled_gn(vae, img, tile), TENSORS["encoder.z_tiled"], "encoder z")
        assert_forward_close(vae.encode(img), TENSORS["encoder.z_untiled"], "untiled z")


def test_decoder_matches_upstream(tiny_cldm: ControlLDM) -> None:
    vae, z = tiny_cldm.vae, TENSORS["decoder.z"]
    with torch.no_grad():
        image = decode_tiled_gn(vae, z, META["decoder"]["tile_size_latent"])
        assert_forward_close(image, TENSORS["decoder.image_tiled"], "decoder")
        assert_forward_close(vae.decode(z), TENSORS["decoder.image_untiled"], "untiled decoder")


def test_small_inputs_run_whole(tiny_cldm: ControlLDM) -> None:
    """No tiles when the input fits in one tile plus its pad: the result is the plain VAE's."""
    vae, img, z = tiny_cldm.vae, TENSORS["encoder.image"], TENSORS["decoder.z"]
    with torch.no_grad():
        assert torch.equal(encode_tiled_gn(vae, img, 112 - 2 * ENCODER_PAD), vae.encode(img))
        assert torch.equal(decode_tiled_gn(vae, z, 27 - 2 * DECODER_PAD), vae.decode(z))


def test_tiles_agree_far_better_than_blended_windows(tiny_cldm: ControlLDM) -> None:
    """Shared statistics bring tiles closer to the untiled result than window blending at a larger window
    (upstream's tiles still sit 160-280x the forward tolerance from it: convolutions and attention near a tile
    border see less context)."""
    vae, z = tiny_cldm.vae, TENSORS["decoder.z"]
    with torch.no_grad():
        untiled = vae.decode(z)
        shared = (decode_tiled_gn(vae, z, 2) - untiled).abs().max()
        blended = (vae.decode_tiled(z, 16, 8) - untiled).abs().max()
    assert shared < blended


def test_batch_and_posterior(tiny_cldm: ControlLDM) -> None:
    vae = tiny_cldm.vae
    img = torch.cat([TENSORS["encoder.image"], TENSORS["encoder.image"].flip(-1)])
    with torch.no_grad():
        posterior = posterior_tiled_gn(vae, img, 16)
        single = encode_tiled_gn(vae, img[1:], 16)
    assert posterior.mean.shape == (2, 4, 12, 14)
    torch.testing.assert_close(posterior.mode()[1:] * vae.scale_factor, single, rtol=1e-5, atol=1e-5)


def test_best_tile_size() -> None:
    assert best_tile_size(48, 64) == 64  # up to a multiple of 32 when that fits
    assert best_tile_size(40, 48) == 48  # else 16
    assert best_tile_size(33, 36) == 36  # else 4
    assert best_tile_size(16, 16) == 16


@pytest.mark.parametrize("tile", [0, -16, 2.5])
def test_bad_tile_is_refused(tile: float, tiny_cldm: ControlLDM) -> None:
    with pytest.raises(InvalidInputError):
        decode_tiled_gn(tiny_cldm.vae, TENSORS["decoder.z"], tile)  # type: ignore[arg-type]


def test_image_must_be_padded(tiny_cldm: ControlLDM) -> None:
    with pytest.raises(InvalidInputError, match="multiples"):
        encode_tiled_gn(tiny_cldm.vae, TENSORS["encoder.image"][..., :100], 16)


@pytest.mark.parametrize("batch", [2, 3, 64])
def test_tiles_batched_per_forward_match_one_at_a_time(batch: int, tiny_cldm: ControlLDM) -> None:
    """Tiles of one shape stacked into one forward (edge tiles form their own groups) give the one-tile-a-time
    result to float rounding, for both networks and a batch of two images."""
    vae = tiny_cldm.vae
    img = torch.cat([TENSORS["encoder.image"], TENSORS["encoder.image"].flip(-1)])
    z = torch.cat([TENSORS["decoder.z"], TENSORS["decoder.z"].flip(-2)])
    with torch.no_grad():
        for one, many in (
            (encoder_tiled_gn(vae, img, 16), encoder_tiled_gn(vae, img, 16, batch=batch)),
            (decode_tiled_gn(vae, z, 2), decode_tiled_gn(vae, z, 2, batch=batch)),
        ):
            assert_forward_close(many, one, f"batch {batch}")


def test_parked_tiles_stay_on_the_device_within_the_allowance(
    tiny_cldm: ControlLDM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between GroupNorms, tiles wait on the compute device while their bytes fit `keep_bytes` and move to
    `offload` past it; the result is the same wherever they waited. (The CPU stands in for both places:
    the test watches the moves and the running byte count, not the copies.)"""
    vae, z = tiny_cldm.vae, TENSORS["decoder.z"]
    moved: list[int] = []
    kept: list[int] = []
    real_park = tiled_vae._Parking.park

    def park(self: tiled_vae._Parking, chunk: tiled_vae._Chunk) -> None:
        before = self.on_device
        real_park(self, chunk)
        (moved if self.on_device == before else kept).append(self.on_device)

    monkeypatch.setattr(tiled_vae._Parking, "park", park)
    monkeypatch.setattr(tiled_vae._Chunk, "move", lambda self, device: None)  # CPU only: nothing to copy

    def run(keep_bytes: int | None) -> tuple[torch.Tensor, int, int, int]:
        moved.clear()
        kept.clear()
        with torch.no_grad():
            out = decode_tiled_gn(vae, z, 2, offload="meta", keep_bytes=keep_bytes)
        return out, len(moved), len(kept), max(kept, default=0)

    everything_parked, all_moved, none_kept, _ = run(0)
    limit = 40_000
    some_kept, some_moved, some_kept_count, most_on_device = run(limit)
    no_limit, unlimited_moved, _, _ = run(None)
    assert none_kept == 0 and all_moved > 0
    assert 0 < some_moved < all_moved and some_kept_count > 0
    assert most_on_device <= limit
    assert unlimited_moved == 0
    torch.testing.assert_close(some_kept, everything_parked, rtol=0, atol=0)
    torch.testing.assert_close(no_limit, everything_parked, rtol=0, atol=0)


@pytest.mark.parametrize("batch", [0, -1, 1.5, True])
def test_bad_batch_is_refused(batch: object, tiny_cldm: ControlLDM) -> None:
    with pytest.raises(InvalidInputError, match="tiles per forward"):
        decode_tiled_gn(tiny_cldm.vae, TENSORS["decoder.z"], 2, batch=batch)  # type: ignore[arg-type]
