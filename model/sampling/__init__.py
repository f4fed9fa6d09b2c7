"""Samplers (one file each, same face), CFG, tiled denoising and the sampling loop.

`make_sampler(name, diffusion)` picks one by the name the API uses; `sample(...)` runs the loop.
"""

from __future__ import annotations

from model.errors import InvalidInputError
from model.sampling.base import Sampler, draw_noise
from model.sampling.cfg import cfg_scale_at, guided_output
from model.sampling.ddim import DDIMSampler
from model.sampling.dpmpp import DPMSolverSampler
from model.sampling.loop import augment_condition, sample, start_latent
from model.sampling.spaced import SpacedSampler
from model.sampling.tiled import Tiling, tiled_denoiser
from model.schedule import Diffusion

SAMPLERS: dict[str, type[Sampler]] = {"spaced": SpacedSampler, "ddim": DDIMSampler, "dpmpp": DPMSolverSampler}


def make_sampler(name: str, diffusion: Diffusion) -> Sampler:
    """ "spaced" (the reference's DDPM, reproduces its numbers), "ddim" or "dpmpp" (fast, deterministic)."""
    try:
        return SAMPLERS[name](diffusion)
    except KeyError:
        raise InvalidInputError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}") from None


__all__ = [
    "SAMPLERS",
    "DDIMSampler",
    "DPMSolverSampler",
    "Sampler",
    "SpacedSampler",
    "Tiling",
    "augment_condition",
    "cfg_scale_at",
    "draw_noise",
    "guided_output",
    "make_sampler",
    "sample",
    "start_latent",
    "tiled_denoiser",
]
