"""DPM-Solver++ (2M, multistep) through diffusers' `DPMSolverMultistepScheduler`, on our betas (`dpmpp`).

Not one of upstream DiffBIR's samplers (`dpm++_m2` is upstream's DPM-Solver++, model/sampling/dpm_solver.py):
kept under its own name because the GPU benchmark's fast mode and its recorded results use it.

Good images in 10-25 steps. "trailing" spacing starts at t=999; the last step is first order and lands on
sigma = 0. Zero-SNR schedules use diffusers' own handling (`rescale_betas_zero_snr`, which clamps the last
alphas_cumprod to 2**-24 so the first sigma is finite; the rescale of already zero-SNR betas is a no-op).
"""

from __future__ import annotations

import warnings

import torch
from diffusers import DPMSolverMultistepScheduler

from model.sampling.base import StepContext, VPSampler, first_order_x0_coefficient
from model.sampling.hparams import SamplerParams
from model.schedule import Diffusion

PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction"}


class DiffusersDPMSolverSampler(VPSampler):
    def __init__(self, diffusion: Diffusion, params: SamplerParams | None = None) -> None:
        super().__init__(diffusion, params)
        self.scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=diffusion.num_timesteps,
            trained_betas=diffusion.betas.tolist(),  # our float64 betas (diffusers rounds them to float32)
            prediction_type=PREDICTION_TYPES[diffusion.parameterization],
            algorithm_type="dpmsolver++",
            solver_order=2,
            timestep_spacing="trailing",
            final_sigmas_type="zero",
            rescale_betas_zero_snr=diffusion.zero_snr,
        )
        self._alpha = self._sigma = self._rescale = torch.empty(0)
        self._next_index = 0

    def set_timesteps(self, num_steps: int, device: torch.device | str | None = None) -> None:
        sched = self.scheduler
        with warnings.catch_warnings():
            # diffusers calls np.array() on a torch tensor here; numpy 2 warns about the `copy` keyword.
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            sched.set_timesteps(num_steps)
        sched.set_begin_index(0)  # avoids diffusers' timestep lookup (a device sync) on the first step
        self.timesteps = [int(t) for t in sched.timesteps]
        # alpha_t = 1/sqrt(1+sigma^2), sigma_t = sigma*alpha_t: the conversion diffusers' `step` uses.
        alpha = 1 / (sched.sigmas**2 + 1).sqrt()
        sigma = sched.sigmas * alpha
        ab = alpha**2
        self._alpha, self._sigma = alpha[:-1].to(device), sigma[:-1].to(device)
        # Guidance rescale: the first-order equivalent (as DDIM); second-order steps weight x0 a little more.
        self._rescale = 1 / first_order_x0_coefficient(ab[:-1], ab[1:]).to(device)
        self._next_index = 0

    def alpha_sigma(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_index(index)
        return self._alpha[index], self._sigma[index]

    def x0_grad_rescale(self, index: int) -> torch.Tensor:
        self._check_index(index)
        return self._rescale[index]

    def step(self, index: int, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        self._check_index(index)
        if index != self._next_index:  # multistep: the solver keeps the previous outputs, so order matters
            raise RuntimeError(f"DPM-Solver++ steps run in order: expected {self._next_index}, got {index}")
        self._next_index += 1
        t = self.timesteps[index]
        out = ctx.model(x, t)
        x0 = self.predict_x0(out, index, x)
        guided = ctx.guide(x0, t, index)
        if guided is not x0:  # diffusers' step takes a model output: hand it the one that gives the guided x0
            out = self.model_output_from_x0(guided, index, x)
        return self.scheduler.step(out, t, x, return_dict=False)[0]
