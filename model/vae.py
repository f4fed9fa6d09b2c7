"""The SD KL autoencoder (diffusers `AutoencoderKL`) with the reference's latent conventions.

`encode` returns latents already multiplied by the scale factor (0.18215) and `decode` divides first, so the
rest of the model only ever sees scaled latents. The condition latent uses the posterior MODE (mean);
`sample=True` draws with `torch.randn` (through diffusers' `randn_tensor`), which is what the reference's
noise replay stubs. Tiled variants blend overlapping windows with `model/tiling.py`'s gaussian weights, so big
images fit in memory.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from model.config import LATENT_SCALE_FACTOR
from model.errors import InvalidInputError
from model.tiling import blend_tiles, stack_windows, tile_coords, tiled_apply


class VAE(nn.Module):
    """Image [-1,1] <-> scaled latent, plain or tiled."""

    def __init__(self, autoencoder: AutoencoderKL, scale_factor: float = LATENT_SCALE_FACTOR) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.scale_factor = scale_factor
        # Pixels per latent cell (8 for SD).
        self.downscale = 2 ** (len(autoencoder.config.block_out_channels) - 1)

    def posterior(self, img: torch.Tensor) -> DiagonalGaussianDistribution:
        """Posterior over UNSCALED latents: `.parameters` (moments), `.mean`, `.logvar` (clamped [-30,20]),
        `.std`."""
        return self.autoencoder.encode(img.to(self.dtype)).latent_dist

    def encode(
        self, img: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """img [B,3,H,W] in [-1,1] -> latent*scale [B,4,H/8,W/8]; mode (mean) unless `sample`."""
        self._check_divisible(img, "encode")
        return self._latent(self.posterior(img), sample, generator)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> image, about [-1,1] (not clamped, as the reference)."""
        return self.autoencoder.decode(z.to(self.dtype) / self.scale_factor).sample

    def encode_tiled(
        self,
        img: torch.Tensor,
        tile: int = 512,
        stride: int = 384,
        sample: bool = False,
        generator: torch.Generator | None = None,
        batch: int = 1,
    ) -> torch.Tensor:
        """`encode` on overlapping `tile`-pixel windows: mode/sample once, of the `posterior_tiled`."""
        return self._latent(self.posterior_tiled(img, tile, stride, batch), sample, generator)

    def posterior_tiled(
        self, img: torch.Tensor, tile: int = 512, stride: int = 384, batch: int = 1
    ) -> DiagonalGaussianDistribution:
        """`posterior` on overlapping `tile`-pixel windows, the moments gaussian-blended (in float32), `batch`
        windows per encoder forward (each window is still normalised on its own: GroupNorm is per item).

        The output is 8x SMALLER than the input (`tiled_apply` scales up), hence the own region map. Blending
        moments (not samples) keeps one noise draw per latent cell like the untiled path, and guidance draws
        its targets from this same posterior.
        """
        self._check_divisible(img, "encode_tiled")
        d = self.downscale
        if tile % d or stride % d:
            raise InvalidInputError(f"tile ({tile}) and stride ({stride}) must be multiples of {d}")
        _, _, h, w = img.shape
        moments = blend_tiles(
            lambda windows: self.posterior(stack_windows(img, windows)).parameters.float(),
            tile_coords(h, w, tile, stride),
            (h // d, w // d),
            lambda c: (c[0] // d, c[1] // d, c[2] // d, c[3] // d),
            img.device,
            batch=batch,
        )
        return DiagonalGaussianDistribution(moments.to(self.dtype))

    def decode_tiled(self, z: torch.Tensor, tile: int = 64, stride: int = 48, batch: int = 1) -> torch.Tensor:
        """`decode` on overlapping `tile`-latent windows, gaussian-blended in pixel space, `batch` windows per
        decoder forward."""
        return tiled_apply(self.decode, z, tile, stride, scale=self.downscale, batch=batch)

    @property
    def dtype(self) -> torch.dtype:
        return self.autoencoder.dtype

    def _latent(
        self, posterior: DiagonalGaussianDistribution, sample: bool, generator: torch.Generator | None
    ) -> torch.Tensor:
        z = posterior.sample(generator=generator) if sample else posterior.mode()
        return z * self.scale_factor

    def _check_divisible(self, img: torch.Tensor, what: str) -> None:
        if img.ndim != 4 or img.shape[1] != 3:
            raise InvalidInputError(f"{what}: expected an image [B,3,H,W], got {tuple(img.shape)}")
        if img.shape[-2] % self.downscale or img.shape[-1] % self.downscale:
            raise InvalidInputError(
                f"{what}: image size {tuple(img.shape[-2:])} must be a multiple of {self.downscale} "
                "(pad first)"
            )
