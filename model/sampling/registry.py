"""The samplers by the name the API uses: the one list every vocabulary of sampler names is read from.

A new sampler joins by adding its factory here (a class taking the `Diffusion` is a factory).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from model.errors import InvalidInputError
from model.sampling.base import Sampler
from model.sampling.ddim import DDIMSampler
from model.sampling.dpmpp import DPMSolverSampler
from model.sampling.spaced import SpacedSampler
from model.schedule import Diffusion

SamplerFactory = Callable[[Diffusion], Sampler]

SAMPLER_FACTORIES: dict[str, SamplerFactory] = {
    "spaced": SpacedSampler,  # the reference's DDPM: reproduces its numbers
    "ddim": DDIMSampler,  # fast, deterministic
    "dpmpp": DPMSolverSampler,  # fast, deterministic
}


def make_sampler(name: str, diffusion: Diffusion) -> Sampler:
    """A fresh sampler `name` over `diffusion`; an unknown name is the caller's error."""
    try:
        factory = SAMPLER_FACTORIES[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown sampler {name!r}; choose one of {sorted(SAMPLER_FACTORIES)}"
        ) from None
    return factory(diffusion)


def max_grad_rescale(sampler: Sampler, steps: int) -> float:
    """Largest `x0_grad_rescale` of a `steps`-step run (on CPU, once per run: no sync inside the loop)."""
    sampler.set_timesteps(steps, device="cpu")
    values = [float(sampler.x0_grad_rescale(i)) for i in range(steps)]
    finite = [v for v in values if math.isfinite(v) and v > 0]
    return max(finite) if finite else 1.0
