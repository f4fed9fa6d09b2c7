"""Upstream DiffBIR's `dpm++_m2`: multistep DPM-Solver++ of order 2 (Lu et al. 2022) on its continuous-time
grid.

Hand-written rather than diffusers' `DPMSolverMultistepScheduler`, which works on discrete timesteps: upstream
(`dpm_solver_pytorch.py`, "dpmsolver" form) interpolates log(alpha) piecewise-linearly over t in (0, 1], steps
on `linspace(1, 1/N_total, n+1)` and calls the UNet at FLOAT times `(t - 1/N_total) * 1000` (999, 832.5, ...;
998.986 for zero-SNR, whose last 14 steps are cut where lambda < -5.1). All schedule arithmetic is float32
from float32 betas, as there, and runs once per run on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.sampling.base import Sampler, StepContext, check_steps
from model.sampling.cfg import rescaled_cfg
from model.sampling.hparams import SamplerParams
from model.schedule import Diffusion

#: Upstream drops the trailing training steps whose half-log-SNR is below this (its `numerical_clip_alpha`).
CLIPPED_LAMBDA = -5.1


class DPMSolverSampler(Sampler):
    """DPM-Solver++(2M): first-order first step (and last step when n < 10), second order between."""

    cfg_order = "uncond_cond"

    def __init__(self, diffusion: Diffusion, params: SamplerParams | None = None) -> None:
        super().__init__(diffusion, params)
        betas = torch.tensor(diffusion.betas, dtype=torch.float32)
        log_alpha = 0.5 * torch.log(1 - betas).cumsum(dim=0)
        lam = log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))
        cut = int(torch.searchsorted(torch.flip(lam, [0]), CLIPPED_LAMBDA))
        self._log_alpha = log_alpha[: len(log_alpha) - cut]
        self.total_n = len(self._log_alpha)
        self._t_array = torch.linspace(0.0, 1.0, self.total_n + 1)[1:]
        self.grid = torch.empty(0)
        self._coefficients: list[_StepCoefficients] = []
        self._history: tuple[int, torch.Tensor] | None = None

    def set_timesteps(self, num_steps: int, device: torch.device | str | None = None) -> None:
        n = check_steps(num_steps)
        grid = torch.linspace(1.0, 1.0 / self.total_n, n + 1)
        self.grid = grid  # continuous times in (0, 1], float32, n+1 values
        log_alpha = torch.stack([self._interp(t) for t in grid])
        alpha = torch.exp(log_alpha)
        sigma = torch.sqrt(1.0 - torch.exp(2.0 * log_alpha))
        lam = log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))
        self.timesteps = [float((t - 1.0 / self.total_n) * 1000.0) for t in grid[:-1]]
        coefficients = []
        for i in range(n):
            h = lam[i + 1] - lam[i]
            alpha_phi = alpha[i + 1] * torch.expm1(-h)
            # Second order except the first step and, for short runs, the last ("lower_order_final").
            second = i > 0 and not (n < 10 and i == n - 1)
            inv_r = (1.0 / ((lam[i] - lam[i - 1]) / h)) if second else None
            x0_coef = -alpha_phi * (1 + 0.5 * inv_r) if inv_r is not None else -alpha_phi
            coefficients.append(
                _StepCoefficients(
                    alpha=float(alpha[i]),
                    sigma=float(sigma[i]),
                    x_ratio=float(sigma[i + 1] / sigma[i]),
                    alpha_phi=float(alpha_phi),
                    half_alpha_phi=float(0.5 * alpha_phi),
                    inv_r=float(inv_r) if inv_r is not None else None,
                    rescale=float(1 / x0_coef),
                )
            )
        self._coefficients = coefficients
        self._history = None

    def cfg_scale(self, cfg: float, t: float, rescale: bool) -> float:
        # Upstream's DPM wrapper rescales at the float model time, also for cfg < 1 (but cfg 1 is plain).
        if cfg == 1.0 or not rescale:
            return cfg
        return rescaled_cfg(cfg, t)

    def x0_grad_rescale(self, index: int) -> torch.Tensor:
        self._check_index(index)
        return torch.tensor(self._coefficients[index].rescale)

    def step(self, index: int, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        self._check_index(index)
        if index != (0 if self._history is None else self._history[0] + 1):
            raise RuntimeError(f"DPM-Solver++ steps run in order; got step {index}")
        c = self._coefficients[index]
        t = self.timesteps[index]
        out = ctx.model(x, t)
        eps = c.alpha * out + c.sigma * x if self.parameterization == "v" else out
        x0 = ctx.guide((x - c.sigma * eps) / c.alpha, t, index)
        x_next = c.x_ratio * x - c.alpha_phi * x0
        if c.inv_r is not None:
            assert self._history is not None
            x_next = x_next - c.half_alpha_phi * (c.inv_r * (x0 - self._history[1]))
        self._history = (index, x0)
        return x_next

    def _interp(self, t: torch.Tensor) -> torch.Tensor:
        """log(alpha) at continuous time t: piecewise linear over t_array, extrapolated past its ends."""
        xp, yp = self._t_array, self._log_alpha
        j = int(torch.searchsorted(xp, t))
        j = min(max(j, 1), len(xp) - 1)
        return yp[j - 1] + (t - xp[j - 1]) * (yp[j] - yp[j - 1]) / (xp[j] - xp[j - 1])


@dataclass(frozen=True, slots=True)
class _StepCoefficients:
    """Host floats of one step s -> t (float32 values, computed as upstream computes them)."""

    alpha: float  # alpha_s, sigma_s: eps/v -> x0 at s
    sigma: float
    x_ratio: float  # sigma_t / sigma_s
    alpha_phi: float  # alpha_t * expm1(-h)
    half_alpha_phi: float
    inv_r: float | None  # 1 / r0 = h / h_prev for second-order steps, None for first-order ones
    rescale: float  # 1 / (d x_t / d x0_s)
