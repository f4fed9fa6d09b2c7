"""The eleven k-diffusion solvers upstream's `EDMSampler` offers, one step at a time.

Hand-written from k-diffusion's `sampling.py` (Crowson; the copy vendored by DiffBIR at 3f8b530) rather than
depending on the `k-diffusion` package: that package pulls in wandb, accelerate, clip, kornia and more for a
few hundred lines of solver code, and its solvers own the loop, while ours must hand it back after every step
(progress, cancel, guidance, CUDA graphs). The arithmetic and the order of random draws are k-diffusion's, so
a run replays upstream's. One difference, on purpose: where k-diffusion draws SDE noise from a torchsde
Brownian tree (whose every query returns a standard normal tensor), we draw N(0, I) from the job's seeded
generator (`ctx.noise`): the same distribution, reproducible per seed, and no torchsde dependency.

Guidance pulls the x0 estimate each step actually steps with, once per step. For the one-call solvers that is
the model's D. The two-call ones (Heun, DPM-2, DPM-2 ancestral, DPM++ 2S ancestral, DPM++ SDE) step with a
combination of two estimates: guiding each would pull the second one twice (it is evaluated at a point built
from the guided first one), and the first step from sigma 1e4 multiplies their difference by about 850 (Heun).
So those solvers guide the combined estimate, e.g. Heun's x - sigma * (d + d_2) / 2, which keeps the pull per
step what `x0_grad_rescale` says.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np
import torch
from numpy.polynomial import polynomial as P

from model.sampling.base import StepContext
from model.sampling.edm import EDMSampler, ancestral_step, to_d

_SQRT2_MINUS_1 = 2**0.5 - 1


def _t(sigma: torch.Tensor) -> torch.Tensor:
    """DPM-Solver's time: -log(sigma)."""
    return sigma.log().neg()


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


class _ChurnSolver(EDMSampler):
    """Euler, Heun and DPM-2 start every step with Karras' churn: raise sigma by gamma, add matching noise."""

    hparams = ("s_churn", "s_tmin", "s_tmax", "s_noise")

    def churn(self, index: int, x: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        sigma = self.sigmas[index]
        gamma = min(p.s_churn / self.num_steps, _SQRT2_MINUS_1) if p.s_tmin <= sigma <= p.s_tmax else 0.0
        eps = ctx.noise(x) * p.s_noise  # drawn at every step, also when gamma is 0 (upstream's draw order)
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
        return x, sigma_hat


def _guided_slope(
    solver: EDMSampler, x: torch.Tensor, sigma: torch.Tensor, d: torch.Tensor, ctx: StepContext, index: int
) -> torch.Tensor:
    """A step's slope from (x, sigma), re-derived from its guided implied x0 = x - sigma * d (unchanged, bit
    for bit, when guidance is off)."""
    x0 = x - sigma * d
    guided = solver.guide(x0, ctx, index)
    return d if guided is x0 else to_d(x, sigma, guided)


class EulerSolver(_ChurnSolver):
    """`edm_euler`: Karras Alg. 2 with Euler steps."""

    def solve(self, index: int, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        x, sigma_hat = self.churn(index, x, ctx)
        denoised = self.guide(self.denoise(x, sigma_hat, ctx), ctx, index)
        return x + to_d(x, sigma_hat, denoised) * (self.sigmas[index + 1] - sigma_hat)


class HeunSolver(_ChurnSolver):
    """`edm_heun`: Karras Alg. 2 (trapezoid correction; Euler into sigma 0)."""

    def solve(self, index: int, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        x, sigma_hat = self.churn(index, x, ctx)
        sigma_next = self.sigmas[index + 1]
        d = to_d(x, sigma_hat, self.denoise(x, sigma_hat, ctx))
        dt = sigma_next - sigma_hat
        if sigma_next != 0:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, self.denoise(x_2, sigma_next, ctx))
            d = (d + d_2) / 2
        return x + _guided_slope(self, x, sigma_hat, d, ctx, index) * dt


class DPM2Solver(_ChurnSolver):
    """`edm_dpm_2`: DPM-Solver-2 (midpoint in log sigma) inside Karras Alg. 2."""

    def solve(self, index: int, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        x, sigma_hat = self.churn(index, x, ctx)
        sigma_next = self.sigmas[index + 1]
        d = to_d(x, sigma_hat, self.denoise(x, sigma_hat, ctx))
        if sigma_next != 0:
            sigma_mid = sigma_hat.log().lerp(sigma_next.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d = to_d(x_2, sigma_mid, self.denoise(x_2, sigma_mid, ctx))
        return x + _guided_slope(self, x, sigma_hat, d, ctx, index) * (sigma_next - sigma_hat)


class _AncestralSolver(EDMSampler):
    hparams = ("eta", "s_noise")

    def add_noise(self, x: torch.Tensor, sigma_up: torch.Tensor | float, ctx: StepContext) -> torch.Tensor:
        return x + ctx.noise(x) * self.params.s_noise * sigma_up


class EulerAncestralSolver(_AncestralSolver):
    """`edm_euler_a`: Euler to sigma_down, then fresh noise up to sigma_next."""

    def solve(self, index: int, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        denoised = self.guide(self.denoise(x, sigma, ctx), ctx, index)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, self.params.eta)
        x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        return self.add_noise(x, sigma_up, ctx) if sigma_next > 0 else x


class DPM2AncestralSolver(_AncestralSolver):
    """`edm_dpm_2_a`: DPM-Solver-2 to sigma_down, then fresh noise."""

    def solve(self, index: int, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        d = to_d(x, sigma, self.denoise(x, sigma, ctx))
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, self.params.eta)
        if sigma_down == 0:
            return x + _guided_slope(self, x, sigma, d, ctx, index) * (sigma_down - sigma)
        sigma_mid = sigma.log().lerp(torch.as_tensor(sigma_down).log(), 0.5).exp()
        x_2 = x + d * (sigma_mid - sigma)
        d_2 = to_d(x_2, sigma_mid, self.denoise(x_2, sigma_mid, ctx))
        x = x + _guided_slope(self, x, sigma, d_2, ctx, index) * (sigma_down - sigma)
        return self.add_noise(x, sigma_up, ctx)


class DPMPP2SAncestralSolver(_AncestralSolver):
    """`edm_dpm++_2s_a`: DPM-Solver++(2S) (singlestep, r = 1/2) to sigma_down, then fresh noise."""

    def solve(self, index: int, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        denoised = self.denoise(x, sigma, ctx)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, self.params.eta)
        if sigma_down == 0:
            x = x + to_d(x, sigma, self.guide(denoised, ctx, index)) * (sigma_down - sigma)
        else:
            t, t_next = _t(sigma), _t(torch.as_tensor(sigma_down))
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h * 0.5).expm1() * denoised
            denoised_2 = self.guide(self.denoise(x_2, _sigma(s), ctx), ctx, index)
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        return self.add_noise(x, sigma_up, ctx) if sigma_next > 0 else x


class DPMPPSDESolver(_AncestralSolver):
    """`edm_dpm++_sde`: stochastic DPM-Solver++ (r = 1/2), two noise draws per step."""

    r = 0.5

    def solve(self, index: int, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        eta = self.params.eta
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        denoised = self.denoise(x, sigma, ctx)
        if sigma_next == 0:
            return x + to_d(x, sigma, self.guide(denoised, ctx, index)) * (sigma_next - sigma)
        t, t_next = _t(sigma), _t(sigma_next)
        h = t_next - t
        s = t + h * self.r
        fac = 1 / (2 * self.r)
        # First half: to the midpoint s, with its share of fresh noise.
        sigma_down, sigma_up = ancestral_step(_sigma(t), _sigma(s), eta)
        s_ = _t(torch.as_tensor(sigma_down))
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = self.add_noise(x_2, sigma_up, ctx)
        denoised_2 = self.denoise(x_2, _sigma(s), ctx)
        # Second half: the full step with the combined estimate.
        sigma_down, sigma_up = ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = _t(torch.as_tensor(sigma_down))
        denoised_d = self.guide((1 - fac) * denoised + fac * denoised_2, ctx, index)
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * denoised_d
        return self.add_noise(x, sigma_up, ctx)


class LMSSolver(EDMSampler):
    """`edm_lms`: linear multistep on the last `order` derivatives (order 1, upstream's default, is Euler)."""

    hparams = ("order",)

    def reset(self) -> None:
        self._ds: list[torch.Tensor] = []
        self._sigmas64 = self.sigmas.double().numpy()  # k-diffusion integrates on the host, in float64

    def solve(self, index: int, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        order = int(self.params.order)
        sigma = self.sigmas[index]
        self._ds.append(to_d(x, sigma, self.guide(self.denoise(x, sigma, ctx), ctx, index)))
        if len(self._ds) > order:
            self._ds.pop(0)
        cur_order = min(index + 1, order)
        coefficients = [lms_coefficient(cur_order, self._sigmas64, index, j) for j in range(cur_order)]
        return x + sum(c * d for c, d in zip(coefficients, reversed(self._ds), strict=False))


def lms_coefficient(order: int, sigmas: np.ndarray, i: int, j: int) -> float:
    """Integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial of node sigma_{i-j} (nodes
    sigma_i ... sigma_{i-order+1}). Exact (polynomial antiderivative) where k-diffusion uses scipy's quad."""
    nodes = [sigmas[i - k] for k in range(order) if k != j]
    scale = math.prod(sigmas[i - j] - node for node in nodes)
    antiderivative = P.polyint(P.polyfromroots(nodes) if nodes else np.ones(1))
    return float((P.polyval(sigmas[i + 1], antiderivative) - P.polyval(sigmas[i], antiderivative)) / scale)


class DPMPP2MSolver(EDMSampler):
    """`edm_dpm++_2m`: DPM-Solver++(2M), first order on the first and last steps."""

    def reset(self) -> None:
        self._old: torch.Tensor | None = None

    def solve(self, index: int, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        denoised = self.guide(self.denoise(x, sigma, ctx), ctx, index)
        t, t_next = _t(sigma), _t(sigma_next)
        h = t_next - t
        if self._old is None or sigma_next == 0:
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t(self.sigmas[index - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * self._old
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        self._old = denoised
        return x


class _MultistepSDESolver(_AncestralSolver):
    """DPM-Solver++ (2M / 3M) SDE: a multistep update on the last denoised values plus fresh noise; the last
    step returns the denoised value."""

    def reset(self) -> None:
        self._denoised: list[torch.Tensor] = []  # newest first, at most 2
        self._h: list[torch.Tensor] = []

    def solve(self, index: int, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        eta = self.params.eta
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        denoised = self.guide(self.denoise(x, sigma, ctx), ctx, index)
        if sigma_next == 0:
            x = denoised
        else:
            h = _t(sigma_next) - _t(sigma)
            x = self.update(x, sigma, sigma_next, h, denoised)
            if eta:
                x = x + ctx.noise(x) * sigma_next * (-2 * h * eta).expm1().neg().sqrt() * self.params.s_noise
            self._h = [h, *self._h][:2]
        self._denoised = [denoised, *self._denoised][:2]
        return x

    @abstractmethod
    def update(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
        h: torch.Tensor,
        denoised: torch.Tensor,
    ) -> torch.Tensor:
        """The deterministic part of the step, h = log(sigma / sigma_next)."""


class DPMPP2MSDESolver(_MultistepSDESolver):
    """`edm_dpm++_2m_sde`: DPM-Solver++(2M) SDE, midpoint form."""

    def update(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
        h: torch.Tensor,
        denoised: torch.Tensor,
    ) -> torch.Tensor:
        eta_h = self.params.eta * h
        x = sigma_next / sigma * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
        if self._h:
            r = self._h[0] / h
            x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - self._denoised[0])
        return x


class DPMPP3MSDESolver(_MultistepSDESolver):
    """`edm_dpm++_3m_sde` (v2.1's default): DPM-Solver++(3M) SDE."""

    def update(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
        h: torch.Tensor,
        denoised: torch.Tensor,
    ) -> torch.Tensor:
        h_eta = h * (self.params.eta + 1)
        x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
        phi_2 = h_eta.neg().expm1() / h_eta + 1
        if len(self._h) >= 2:
            (d_1, d_2), (h_1, h_2) = self._denoised, self._h
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (denoised - d_1) / r0
            d1_1 = (d_1 - d_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + phi_2 * d1 - phi_3 * d2
        elif self._h:
            x = x + phi_2 * ((denoised - self._denoised[0]) / (self._h[0] / h))
        return x
