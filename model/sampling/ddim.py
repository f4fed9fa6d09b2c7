"""Deterministic DDIM (eta = 0) through diffusers' `DDIMScheduler`, on our betas.

"trailing" spacing starts at t=999 (needed by zero-SNR models and the "cond" start point) and the last step
lands on the clean image (`set_alpha_to_one`). Note: diffusers steps to `t - 1000 // n`, which for step counts
that do not divide 1000 can differ by one timestep from the next model call; that is diffusers' behaviour.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from model.sampling.base import TabulatedSampler
from model.schedule import Diffusion

PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction"}


class DDIMSampler(TabulatedSampler):
    def __init__(self, diffusion: Diffusion) -> None:
        super().__init__(diffusion)
        self.scheduler = DDIMScheduler(
            num_train_timesteps=diffusion.num_timesteps,
            trained_betas=diffusion.betas.tolist(),  # our float64 betas (diffusers rounds them to float32)
            prediction_type=PREDICTION_TYPES[diffusion.parameterization],
            timestep_spacing="trailing",
            set_alpha_to_one=True,
            clip_sample=False,
            thresholding=False,
        )
        self._alpha = self._sigma = self._rescale = torch.empty(0)

    def set_timesteps(self, num_steps: int, device: torch.device | str | None = None) -> None:
        sched = self.scheduler
        sched.set_timesteps(num_steps)
        self.timesteps = [int(t) for t in sched.timesteps]
        stride = sched.config.num_train_timesteps // num_steps
        # The same alphas diffusers' `step` reads, gathered once so steps index device tensors.
        ac, final = sched.alphas_cumprod, sched.final_alpha_cumprod
        ab = torch.stack([ac[t] for t in self.timesteps])
        ab_prev = torch.stack([ac[t - stride] if t >= stride else final for t in self.timesteps])
        self._alpha, self._sigma = ab.sqrt().to(device), (1 - ab).sqrt().to(device)
        self._rescale = 1 / _x0_coefficient(ab, ab_prev).to(device)

    def step(
        self, model_output: torch.Tensor, index: int, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        self._check_index(index)
        return self.scheduler.step(model_output, self.timesteps[index], x, eta=0.0, return_dict=False)[0]


def _x0_coefficient(ab: torch.Tensor, ab_prev: torch.Tensor) -> torch.Tensor:
    """d x_prev / d x0 of the deterministic first-order update (DDIM eta=0, = DPM-Solver++ order 1).

    x_prev = sqrt(ab_prev) x0 + sqrt(1-ab_prev) eps with eps = (x - sqrt(ab) x0) / sqrt(1-ab). Dividing the
    guidance gradient by it moves x_prev by the guidance step itself, as 1/posterior_mean_coef1 does for DDPM.
    """
    return ab_prev.sqrt() - (1 - ab_prev).sqrt() * ab.sqrt() / (1 - ab).sqrt()
