"""Samplers (one file each, same face), their registry, CFG, tiled denoising and the sampling loop.

`make_sampler(name, diffusion)` picks one by the name the API uses (`registry.py`); `sample(...)` runs the
loop.
"""

from __future__ import annotations

from model.sampling.base import Sampler, draw_noise
from model.sampling.cfg import cfg_scale_at, guided_output
from model.sampling.ddim import DDIMSampler
from model.sampling.dpmpp import DPMSolverSampler
from model.sampling.loop import augment_condition, sample, start_latent
from model.sampling.registry import SAMPLER_FACTORIES, SamplerFactory, make_sampler, max_grad_rescale
from model.sampling.spaced import SpacedSampler
from model.sampling.tiled import Tiling, tiled_denoiser

__all__ = [
    "SAMPLER_FACTORIES",
    "DDIMSampler",
    "DPMSolverSampler",
    "Sampler",
    "SamplerFactory",
    "SpacedSampler",
    "Tiling",
    "augment_condition",
    "cfg_scale_at",
    "draw_noise",
    "guided_output",
    "make_sampler",
    "max_grad_rescale",
    "sample",
    "start_latent",
    "tiled_denoiser",
]
