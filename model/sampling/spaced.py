"""The reference sampler: ancestral DDPM on a respaced schedule (DiffBIR's `SpacedSampler`).

Hand-written rather than diffusers' DDPMScheduler because the reference's numbers depend on details diffusers
does differently: Python-`round()` respacing, float32 buffers rounded once from float64, x0 from eps through
`sqrt_recip*`/`sqrt_recipm1*`, and a noise draw on the last step too (masked to zero), which keeps the random
stream in step with the reference.
"""

from __future__ import annotations

import torch

from model.sampling.base import StepContext, VPSampler
from model.schedule import SpacedSchedule


class SpacedSampler(VPSampler):
    """x_{t-1} = coef1*x0 + coef2*x_t + sqrt(posterior_variance)*noise, on the spaced schedule."""

    schedule: SpacedSchedule

    def set_timesteps(self, num_steps: int, device: torch.device | str | None = None) -> None:
        schedule = self.diffusion.respace(num_steps)
        self.schedule = schedule.to(device) if device is not None else schedule
        self.timesteps = [int(t) for t in schedule.timesteps[::-1]]

    def spaced_index(self, index: int) -> int:
        """Loop position -> schedule index (the reference's `total_steps - 1 - i`)."""
        self._check_index(index)
        return self.num_steps - 1 - index

    def alpha_sigma(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = self.spaced_index(index)
        return self.schedule.sqrt_alphas_cumprod[j], self.schedule.sqrt_one_minus_alphas_cumprod[j]

    def predict_x0(self, model_output: torch.Tensor, index: int, x: torch.Tensor) -> torch.Tensor:
        if self.parameterization == "v":
            return super().predict_x0(model_output, index, x)
        j = self.spaced_index(index)
        s = self.schedule
        return s.sqrt_recip_alphas_cumprod[j] * x - s.sqrt_recipm1_alphas_cumprod[j] * model_output

    def model_output_from_x0(self, x0: torch.Tensor, index: int, x: torch.Tensor) -> torch.Tensor:
        if self.parameterization == "v":
            return super().model_output_from_x0(x0, index, x)
        j = self.spaced_index(index)
        s = self.schedule
        return (s.sqrt_recip_alphas_cumprod[j] * x - x0) / s.sqrt_recipm1_alphas_cumprod[j]

    def x0_grad_rescale(self, index: int) -> torch.Tensor:
        # The posterior mean moves by coef1 * delta_x0; 1/coef1 makes it move by the guidance step itself.
        return 1 / self.schedule.posterior_mean_coef1[self.spaced_index(index)]

    def step(self, index: int, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        j = self.spaced_index(index)
        t = self.timesteps[index]
        s = self.schedule
        x0 = ctx.guide(self.predict_x0(ctx.model(x, t), index, x), t, index)
        noise = ctx.noise(x)  # drawn on the last step too, after the guidance targets: the reference's order
        mean = s.posterior_mean_coef1[j] * x0 + s.posterior_mean_coef2[j] * x
        if j == 0:  # the reference masks the last draw (`index != 0`); its variance is 0 there anyway
            return mean
        return mean + torch.sqrt(s.posterior_variance[j]) * noise
