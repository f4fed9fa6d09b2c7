"""Upstream DiffBIR's `EDMSampler`: the DDPM model as a Karras et al. (2022) denoiser, driven by k-diffusion's
solvers.

Schedule: `t_k = int(linspace(999, 0, n, endpoint=False))`, sigma_k = sqrt((1-ab)/ab) of the training
alphas_cumprod at t_k with ab_0 replaced by 1e-8 (so sigma_0 = 1e4 for every schedule, zero-SNR included),
then a final sigma 0. Denoiser: D(x, sigma) = c_skip x + c_out F(c_in x, t) with t the grid timestep whose
sigma is nearest (so off-grid sigmas, e.g. a churned sigma or a midpoint, run the UNet at a neighbouring grid
t while the c_* use the true sigma). The solvers (model/sampling/edm_solvers.py) step in sigma on x = x0 +
sigma*eps.

The schedule scalars are float32 0-d tensors on the host (upstream computes them in float32); only x lives on
the device, so no step waits for it. diffusers' Euler/Heun/DPM-2/LMS/DPM++ schedulers cannot give these
numbers: they build their sigmas from the schedule without the ab_0 = 1e-8 endpoint and call the UNet at
interpolated, not snapped, timesteps.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch

from model.sampling.base import Sampler, StepContext, check_steps
from model.sampling.hparams import SamplerParams
from model.schedule import Diffusion

#: Upstream replaces alphas_cumprod at the first EDM step by this (sigma_0 = 1e4), for every schedule.
FIRST_ALPHA_CUMPROD = 1e-8


class EDMSampler(Sampler):
    """Shared by every `edm_*` solver: the sigma schedule, the preconditioned denoiser, the start scaling."""

    #: The `SamplerParams` fields the solver reads (upstream passes it only these).
    hparams: tuple[str, ...] = ()

    def __init__(self, diffusion: Diffusion, params: SamplerParams | None = None) -> None:
        super().__init__(diffusion, params)
        self.sigmas = torch.empty(0)  # float32 on the host, n+1 values ending in 0
        self.sigma_timesteps = torch.empty(0, dtype=torch.long)  # the grid t of each sigma, ending in 0
        self._rescale = torch.empty(0)
        self._next_index = 0

    def set_timesteps(self, num_steps: int, device: torch.device | str | None = None) -> None:
        n = check_steps(num_steps)
        t = np.linspace(self.diffusion.num_timesteps - 1, 0, n, endpoint=False).astype(int)
        ab = self.diffusion.alphas_cumprod[t].copy()
        ab[0] = FIRST_ALPHA_CUMPROD
        self.sigmas = torch.tensor(np.append(np.sqrt((1 - ab) / ab), 0.0), dtype=torch.float32)
        self.sigma_timesteps = torch.tensor(np.append(t, 0), dtype=torch.long)
        self.timesteps = [int(v) for v in t]
        self._rescale = _x0_rescale(self.sigmas).to(device)
        self._next_index = 0
        self.reset()

    def reset(self) -> None:
        """Forget the history of a multistep solver (called by `set_timesteps`)."""

    def step(self, index: int, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        self._check_index(index)
        if index != self._next_index:  # multistep solvers keep the previous steps' estimates
            raise RuntimeError(f"EDM solver steps run in order: expected {self._next_index}, got {index}")
        self._next_index += 1
        return self.solve(index, x, ctx)

    @abstractmethod
    def solve(self, index: int, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The solver's step from sigmas[index] to sigmas[index + 1]."""

    def start(self, x_T: torch.Tensor) -> torch.Tensor:
        return x_T * torch.sqrt(1.0 + self.sigmas[0] ** 2.0)

    def x0_grad_rescale(self, index: int) -> torch.Tensor:
        self._check_index(index)
        return self._rescale[index]

    def snap(self, sigma: torch.Tensor) -> int:
        """The grid timestep whose sigma is nearest `sigma` (linear distance, first on ties), as upstream."""
        return int(self.sigma_timesteps[(sigma - self.sigmas).abs().argmin()])

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """D(x, sigma): the model's clean latent estimate at noise level `sigma` (CFG applied, not guided)."""
        c_in = 1 / (sigma**2 + 1.0) ** 0.5
        if self.parameterization == "eps":
            c_skip, c_out = torch.ones_like(sigma), -sigma
        else:
            c_skip, c_out = 1.0 / (sigma**2 + 1.0), -sigma / (sigma**2 + 1.0) ** 0.5
        return ctx.model(x * c_in, self.snap(sigma)) * c_out + x * c_skip

    def guide(self, x0: torch.Tensor, ctx: StepContext, index: int) -> torch.Tensor:
        """Guidance on the x0 estimate a step actually steps with (once per step, see edm_solvers)."""
        return ctx.guide(x0, self.timesteps[index], index)


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE's dx/dsigma."""
    return (x - denoised) / sigma


def ancestral_step(
    sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """(sigma_down, sigma_up): step deterministically to sigma_down, then add sigma_up of fresh noise."""
    if not eta:
        return sigma_to, 0.0
    up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - up**2) ** 0.5, up


def _x0_rescale(sigmas: torch.Tensor) -> torch.Tensor:
    """Per step 1 / (d x_next / d D) of the first-order (Euler) step, in the DDPM latent's units.

    x_next = x + (sigma_next/sigma - 1)(x - D), so d x_next / d D = 1 - sigma_next/sigma on the EDM latent;
    the DDPM latent is that times alpha_next = 1/sqrt(1 + sigma_next^2). The same first-order factor serves
    the higher-order solvers: guidance only needs the scale of a step's response to x0.
    """
    s, s_next = sigmas[:-1].double(), sigmas[1:].double()
    coefficient = (1 - s_next / s) / torch.sqrt(1 + s_next**2)
    return (1 / coefficient).float()
