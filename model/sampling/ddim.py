"""Upstream DiffBIR's DDIM (`DDIMSampler`, eta 0 as its pipeline builds it): deterministic, "uniform" steps.

Hand-written rather than diffusers' `DDIMScheduler`, which cannot give these numbers: upstream steps on
`range(0, 1000, 1000 // n) + 1` (so 6 steps start at t=997 and take 7 steps; 10 steps start at t=901), steps
the last one to alphas_cumprod[0] rather than to 1, and reads float32 buffers rounded once from float64.
diffusers has no "+1" offset, and its "leading" spacing with `steps_offset=1` drops the extra step.
"""

from __future__ import annotations

import numpy as np
import torch

from model.sampling.base import StepContext, VPSampler, check_steps, first_order_x0_coefficient


class DDIMSampler(VPSampler):
    """x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) e (upstream's `p_sample` with ddim_sigma = 0)."""

    def set_timesteps(self, num_steps: int, device: torch.device | str | None = None) -> None:
        check_steps(num_steps)
        total = self.diffusion.num_timesteps
        ascending = np.arange(0, total, total // num_steps) + 1
        # When 999 is a multiple of the stride (3, 9, 27, 37 or > 500 steps) upstream's last "+1" step is
        # t=1000, past the schedule, and it raises IndexError; we drop that step.
        ascending = ascending[ascending < total]
        ab = self.diffusion.alphas_cumprod  # float64, rounded to float32 once (upstream's registered buffers)
        ab_t = ab[ascending]
        ab_prev = np.concatenate([[ab[0]], ab[ascending[:-1]]])
        self.timesteps = [int(t) for t in ascending[::-1]]

        def buffer(values: np.ndarray) -> torch.Tensor:
            return torch.tensor(values[::-1].copy(), dtype=torch.float32, device=device)  # by loop index

        self._ab, self._ab_prev = buffer(ab_t), buffer(ab_prev)
        self._sqrt_ab, self._sqrt_one_minus_ab = buffer(np.sqrt(ab_t)), buffer(np.sqrt(1.0 - ab_t))
        # Computed in float32 from the float32 buffers, as upstream's step does.
        self._sqrt_ab_f32 = self._ab.sqrt()
        self._sqrt_ab_prev, self._sqrt_one_minus_ab_prev = self._ab_prev.sqrt(), (1.0 - self._ab_prev).sqrt()
        self._rescale = 1 / first_order_x0_coefficient(self._ab, self._ab_prev)

    def alpha_sigma(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_index(index)
        return self._sqrt_ab_f32[index], self._sqrt_one_minus_ab[index]

    def x0_grad_rescale(self, index: int) -> torch.Tensor:
        self._check_index(index)
        return self._rescale[index]

    def step(self, index: int, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        self._check_index(index)
        t = self.timesteps[index]
        out = ctx.model(x, t)
        sqrt_one_minus = self._sqrt_one_minus_ab[index]
        if self.parameterization == "v":
            # eps as upstream's predict_eps_from_z_and_v; x0 directly from v, where upstream divides by
            # sqrt(ab): the same up to rounding, and finite at t=999 of a zero-SNR schedule (ab = 0), where
            # upstream's is NaN.
            e = self._sqrt_ab[index] * out + sqrt_one_minus * x
            x0 = self._sqrt_ab[index] * x - sqrt_one_minus * out
        else:
            e = out
            x0 = (x - sqrt_one_minus * e) / self._sqrt_ab_f32[index]
        guided = ctx.guide(x0, t, index)
        if guided is not x0:  # keep x fixed: the eps that goes with the guided x0
            x0, e = guided, (x - self._sqrt_ab_f32[index] * guided) / sqrt_one_minus
        # Upstream also draws randn_like(x) here and multiplies it by ddim_sigma = 0; the draw is skipped.
        return self._sqrt_ab_prev[index] * x0 + self._sqrt_one_minus_ab_prev[index] * e
