"""Samplers (one file each, same face), CFG, tiled denoising and the sampling loop.

`make_sampler(name, diffusion, params)` picks one by the name the API uses (`SAMPLERS`, the registry, is the
one list of names); `sample(...)` runs the loop.
"""

from __future__ import annotations

from model.sampling.base import Sampler, StepContext, VPSampler, draw_noise, max_grad_rescale
from model.sampling.cfg import cfg_scale_at, guided_output
from model.sampling.ddim import DDIMSampler
from model.sampling.dpm_solver import DPMSolverSampler
from model.sampling.dpmpp import DiffusersDPMSolverSampler
from model.sampling.edm import EDMSampler
from model.sampling.hparams import SamplerParams
from model.sampling.loop import augment_condition, sample, start_latent
from model.sampling.registry import SAMPLERS, UPSTREAM_SAMPLERS, SamplerSpec, make_sampler
from model.sampling.spaced import SpacedSampler
from model.sampling.tiled import Tiling, tiled_denoiser

__all__ = [
    "SAMPLERS",
    "UPSTREAM_SAMPLERS",
    "DDIMSampler",
    "DPMSolverSampler",
    "DiffusersDPMSolverSampler",
    "EDMSampler",
    "Sampler",
    "SamplerParams",
    "SamplerSpec",
    "SpacedSampler",
    "StepContext",
    "Tiling",
    "VPSampler",
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
