"""The one small face every sampler shows to the loop, so the loop never branches on the sampler kind.

A step may call the model more than once (Heun, DPM-2 and the singlestep DPM-Solver++ solvers evaluate twice),
so instead of diffusers' `step(model_output, t, x)` the loop lends each `step` a `StepContext`: the model (CFG
and tiling applied), the guidance hook on x0 and the job's noise source. Guidance therefore wraps every
sampler the same way: each sampler turns the model output into x0, hands it to `ctx.guide`, and continues from
the guided x0.

`index` is the loop position (0 = first, noisiest step). Per-step coefficients are computed once in
`set_timesteps` (on the host or as device tensors indexed by Python ints), so a step never syncs with the
device.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Protocol

import torch

from model.errors import InvalidInputError
from model.noise import Generators, draw_noise  # noqa: F401  (re-exported for the samplers)
from model.sampling.cfg import CfgOrder, cfg_scale_at
from model.sampling.hparams import SamplerParams
from model.schedule import Diffusion

ModelTime = int | float  # the training timestep the model is called with (DPM-Solver calls it at float times)


class StepContext(Protocol):
    """What the loop lends a sampler for one step."""

    def model(self, x: torch.Tensor, t: ModelTime) -> torch.Tensor:
        """Raw model output (eps or v) for the model input `x` at model time `t`, with CFG at the scale for
        `t`."""
        ...

    def guide(self, x0: torch.Tensor, t: ModelTime, index: int) -> torch.Tensor:
        """x0 pulled towards the condition (returns `x0` itself when guidance is off or outside its window).

        Call it once per step, on the x0 estimate the step moves with: each call draws fresh guidance targets.
        """
        ...

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """A fresh N(0, I) draw shaped like `like`, from the job's seeded generator(s)."""
        ...


class Sampler(ABC):
    """`set_timesteps(n)`, then `x = start(x_T)` and `x = step(i, x, ctx)` for i in range(num_steps)."""

    cfg_order: CfgOrder = "cond_uncond"

    def __init__(self, diffusion: Diffusion, params: SamplerParams | None = None) -> None:
        self.diffusion = diffusion
        self.parameterization = diffusion.parameterization
        self.params = params if params is not None else SamplerParams()
        # The model time of each step's first model call, descending (the UNet's timestep input).
        self.timesteps: list[ModelTime] = []

    @property
    def num_steps(self) -> int:
        """Steps of a run; upstream DDIM can take one more than asked (1000 // n does not divide 1000)."""
        return len(self.timesteps)

    @abstractmethod
    def set_timesteps(self, num_steps: int, device: torch.device | str | None = None) -> None:
        """Build the schedule for a `num_steps` run (and reset any multistep history)."""

    def start(self, x_T: torch.Tensor) -> torch.Tensor:
        """The sampler's state at the first step from x_T ~ N(0, I) (EDM scales it to sigma_0)."""
        return x_T

    @abstractmethod
    def step(self, index: int, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """One step: x at step `index` -> x at step `index + 1` (the clean latent after the last)."""

    @abstractmethod
    def x0_grad_rescale(self, index: int) -> torch.Tensor:
        """1 / (d x_next / d x0) at step `index`: guidance multiplies its x0 gradient by it (paper Alg. 1)."""

    def cfg_scale(self, cfg: float, t: ModelTime, rescale: bool) -> float:
        """CFG scale of a model call at time `t` (v2.1's rescale ramps it up as t falls)."""
        return cfg_scale_at(cfg, t, rescale)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.num_steps:
            raise IndexError(f"step index {index} outside [0, {self.num_steps}); call set_timesteps first")


class VPSampler(Sampler):
    """A sampler on the DDPM (variance preserving) latent: x = sqrt(ab) x0 + sqrt(1-ab) eps.

    Subclasses give `alpha_sigma(index)`; x0 <-> model output conversions follow from it.
    """

    @abstractmethod
    def alpha_sigma(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(alphas_cumprod), sqrt(1 - alphas_cumprod)) of the sample at step `index`."""

    def predict_x0(self, model_output: torch.Tensor, index: int, x: torch.Tensor) -> torch.Tensor:
        a, s = self.alpha_sigma(index)
        if self.parameterization == "v":
            return a * x - s * model_output
        return (x - s * model_output) / a

    def model_output_from_x0(self, x0: torch.Tensor, index: int, x: torch.Tensor) -> torch.Tensor:
        """The eps or v that `predict_x0` maps back to `x0` (same x): how a guided x0 re-enters a step."""
        a, s = self.alpha_sigma(index)
        if self.parameterization == "v":
            return (a * x - x0) / s
        return (x - a * x0) / s


def first_order_x0_coefficient(ab: torch.Tensor, ab_next: torch.Tensor) -> torch.Tensor:
    """d x_next / d x0 of the deterministic first-order update (DDIM eta 0 = Euler = DPM-Solver++ order 1).

    x_next = sqrt(ab_next) x0 + sqrt(1-ab_next) eps with eps = (x - sqrt(ab) x0) / sqrt(1-ab). Dividing the
    guidance gradient by it moves x_next by the guidance step itself, as 1/posterior_mean_coef1 does for DDPM.
    """
    return ab_next.sqrt() - (1 - ab_next).sqrt() * ab.sqrt() / (1 - ab).sqrt()


def max_grad_rescale(sampler: Sampler, steps: int) -> float:
    """Largest `x0_grad_rescale` of a `steps`-step run (on the host, once per run: no sync inside the loop);
    the fidelity knob is normalised by it (model/fidelity.py)."""
    sampler.set_timesteps(steps, device="cpu")
    values = [float(sampler.x0_grad_rescale(i)) for i in range(sampler.num_steps)]
    finite = [v for v in values if math.isfinite(v) and v > 0]
    return max(finite) if finite else 1.0


def check_steps(num_steps: int, most: int = 1000) -> int:
    """A step count as an int in [1, most] (a client error otherwise)."""
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or not 1 <= num_steps <= most:
        raise InvalidInputError(f"steps must be an integer in [1, {most}], got {num_steps!r}")
    return int(num_steps)
