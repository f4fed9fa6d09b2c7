"""VAE wrapper against the reference fixture `vae` (moments, mode/sample latents, condition latent, decode)
and the tiled variants."""

from __future__ import annotations

import pytest
import torch

from model.cldm import ControlLDM
from model.errors import InvalidInputError
from tests.model.reference import assert_forward_close, load_fixture, replay_noise

VAE_FIX, VAE_META = load_fixture("vae")
SCALE = VAE_META["scale_factor"]


def test_scale_factor(tiny_cldm: ControlLDM) -> None:
    assert tiny_cldm.vae.scale_factor == SCALE == 0.18215
    assert tiny_cldm.vae.downscale == 8


def test_posterior_moments(tiny_cldm: ControlLDM) -> None:
    with torch.no_grad():
        post = tiny_cldm.vae.posterior(VAE_FIX["encode.image"])
    assert_forward_close(post.parameters, VAE_FIX["encode.moments"], "moments")
    assert_forward_close(post.mean, VAE_FIX["encode.mean"], "mean")
    assert_forward_close(post.logvar, VAE_FIX["encode.logvar_clamped"], "logvar_clamped")
    assert_forward_close(post.std, VAE_FIX["encode.std"], "std")


def test_encode_mode_scaled(tiny_cldm: ControlLDM) -> None:
    with torch.no_grad():
        z = tiny_cldm.vae.encode(VAE_FIX["encode.image"])
    assert_forward_close(z, VAE_FIX["encode.z_mode_scaled"], "z_mode_scaled")


def test_encode_sample_replays_reference_noise(tiny_cldm: ControlLDM) -> None:
    with torch.no_grad(), replay_noise([VAE_FIX["encode.sample_noise"]]) as left:
        z = tiny_cldm.vae.encode(
            VAE_FIX["encode.image"], sample=True, generator=torch.Generator().manual_seed(1)
        )
    assert left == []  # exactly one draw, through torch.randn
    assert_forward_close(z, VAE_FIX["encode.z_sample_scaled"], "z_sample_scaled")


def test_condition_latent(tiny_cldm: ControlLDM) -> None:
    with torch.no_grad():
        c_img = tiny_cldm.vae.encode(VAE_FIX["cond.cond_img_01"] * 2 - 1)
    assert_forward_close(c_img, VAE_FIX["cond.c_img"], "cond.c_img")


@pytest.mark.parametrize("case", ["decode", "decode_nonsquare"])
def test_decode(tiny_cldm: ControlLDM, case: str) -> None:
    with torch.no_grad():
        img = tiny_cldm.vae.decode(VAE_FIX[f"{case}.z_scaled"])
    assert_forward_close(img, VAE_FIX[f"{case}.image"], case)


def test_encode_rejects_unpadded_image(tiny_cldm: ControlLDM) -> None:
    with pytest.raises(InvalidInputError, match="multiple of 8"):
        tiny_cldm.vae.encode(torch.zeros(1, 3, 60, 64))


def test_tiled_with_one_window_equals_untiled(tiny_cldm: ControlLDM) -> None:
    vae = tiny_cldm.vae
    with torch.no_grad():
        z = vae.encode_tiled(VAE_FIX["encode.image"], tile=64, stride=32)
        img = vae.decode_tiled(VAE_FIX["decode_nonsquare.z_scaled"], tile=16, stride=8)
    torch.testing.assert_close(z, VAE_FIX["encode.z_mode_scaled"], atol=1e-5, rtol=0)
    torch.testing.assert_close(img, VAE_FIX["decode_nonsquare.image"], atol=1e-4, rtol=0)


def test_tiled_encode_blends_windows(tiny_cldm: ControlLDM) -> None:
    vae = tiny_cldm.vae
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        z = vae.encode_tiled(image, tile=48, stride=32)
        first_window = vae.encode(image[..., :48, :48])
        last_window = vae.encode(image[..., 16:, 48:])
        whole = vae.encode(image)
    assert z.shape == whole.shape == (1, 4, 8, 12)
    # Latent cells inside one window only come from that window (weights normalise to 1).
    torch.testing.assert_close(z[..., :2, :4], first_window[..., :2, :4], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(z[..., 6:, 10:], last_window[..., 4:, 4:], atol=1e-6, rtol=1e-5)
    # Windows see less context than the whole image, so the blend is not the untiled encode.
    assert not torch.allclose(z, whole, atol=1e-4)


def test_tiled_encode_is_the_mode_of_the_tiled_posterior(tiny_cldm: ControlLDM) -> None:
    """One blending loop: guidance draws its targets from the posterior the condition latent comes from."""
    vae = tiny_cldm.vae
    image = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.no_grad():
        posterior = vae.posterior_tiled(image, tile=48, stride=32)
        z = vae.encode_tiled(image, tile=48, stride=32)
    assert posterior.parameters.shape == (2, 8, 8, 12)
    assert torch.equal(z, posterior.mode() * vae.scale_factor)
    with pytest.raises(InvalidInputError, match="multiples of 8"):
        vae.posterior_tiled(image, tile=44, stride=32)


def test_tiled_encode_sample_draws_once(tiny_cldm: ControlLDM) -> None:
    vae = tiny_cldm.vae
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(4)) * 2 - 1
    noise = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        mode = vae.encode_tiled(image, tile=48, stride=32)
        with replay_noise([noise]) as left:
            sampled = vae.encode_tiled(image, tile=48, stride=32, sample=True)
    assert left == []
    assert not torch.allclose(sampled, mode)


def test_tiled_decode_blends_windows(tiny_cldm: ControlLDM) -> None:
    vae = tiny_cldm.vae
    z = VAE_FIX["decode_nonsquare.z_scaled"]  # latent 6 x 10
    with torch.no_grad():
        img = vae.decode_tiled(z, tile=4, stride=3)
        first_window = vae.decode(z[..., :4, :4])
    assert img.shape == (1, 3, 48, 80)
    # Windows start at latent rows 0, 2 and columns 0, 3, 6:
    # pixels above row 16 and left of column 24 come from window 0 only.
    torch.testing.assert_close(img[..., :16, :24], first_window[..., :16, :24], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(img[..., 16:32, :], vae.decode(z)[..., 16:32, :], atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype: torch.dtype) -> None:
    """Half-precision weights take float32 images and stay near the fp32 reference."""
    from model.loading import load_reference_tiny
    from tests.model.reference import TINY_DIR

    vae = load_reference_tiny(TINY_DIR, dtype=dtype).vae
    with torch.no_grad():
        z = vae.encode(VAE_FIX["encode.image"])
        img = vae.decode(VAE_FIX["decode.z_scaled"])
    assert z.dtype == img.dtype == dtype
    for got, ref in ((z, VAE_FIX["encode.z_mode_scaled"]), (img, VAE_FIX["decode.image"])):
        assert (got.float() - ref).abs().max() < 0.05 * (1 + ref.abs().max())
