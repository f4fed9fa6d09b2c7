"""Noise schedules: SD betas, zero-SNR rescale, timestep respacing and the DDPM posterior buffers.

All schedule arithmetic lives here and nowhere else (see guided-diffusion's `respace.py`). It is hand-written
in float64 numpy, not taken from diffusers' schedulers, because the reference's numbers depend on its exact
order of operations: diffusers builds betas in float32 (off by ~5e-7 in `alphas_cumprod`) and has no
Python-`round()` respacing.
Buffers a sampler multiplies with are then rounded ONCE to float32, as the reference registers them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as _diffusers_rescale

from model.errors import InvalidInputError

NUM_TRAIN_TIMESTEPS = 1000
SD_LINEAR_START = 0.00085
SD_LINEAR_END = 0.012
PARAMETERIZATIONS = ("eps", "v")


def sd_betas(
    linear_start: float = SD_LINEAR_START,
    linear_end: float = SD_LINEAR_END,
    num_timesteps: int = NUM_TRAIN_TIMESTEPS,
) -> np.ndarray:
    """Stable Diffusion's "scaled linear" betas (linear in sqrt(beta)), float64."""
    return np.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=np.float64) ** 2


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2023 (Alg. 1): shift/scale sqrt(alphas_cumprod) so the last step has zero SNR (v2.1 models).

    Uses diffusers' implementation on a float64 tensor: the reference runs these same torch ops, and torch's
    float64 sqrt differs from numpy's in the last bit, so a numpy port would not be bit-exact.
    """
    return _diffusers_rescale(torch.from_numpy(np.asarray(betas, dtype=np.float64))).numpy()


def space_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """The `steps` training timesteps kept by respacing, ascending int32 (guided-diffusion's rule).

    The float stride is accumulated by repeated addition and each position rounded with Python's `round()`
    (banker's rounding); both matter for bit-exact timesteps (e.g. 53, 105, 158 ... for 20 steps).
    """
    if not 1 <= steps <= num_timesteps:
        raise InvalidInputError(f"steps must be in [1, {num_timesteps}], got {steps}")
    stride = 1.0 if steps <= 1 else (num_timesteps - 1) / (steps - 1)
    taken: set[int] = set()
    position = 0.0
    for _ in range(steps):
        taken.add(round(position))
        position += stride
    return np.array(sorted(taken), dtype=np.int32)


@dataclass(frozen=True)
class Diffusion:
    """The training (1000-step) schedule: float64 betas/alphas_cumprod and the float32 q_sample factors."""

    betas: np.ndarray
    alphas_cumprod: np.ndarray
    parameterization: str
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    @property
    def zero_snr(self) -> bool:
        return bool(self.alphas_cumprod[-1] == 0.0)

    def q_sample(self, x_start: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """Diffuse `x_start` to training timestep `t` (the "cond" start point and noise augmentation)."""
        a = self.sqrt_alphas_cumprod[t].to(x_start.device)
        s = self.sqrt_one_minus_alphas_cumprod[t].to(x_start.device)
        return a * x_start + s * noise.to(x_start)

    def respace(self, steps: int) -> SpacedSchedule:
        return respace(self.alphas_cumprod, steps)


def make_diffusion(
    zero_snr: bool = False,
    parameterization: str = "eps",
    linear_start: float = SD_LINEAR_START,
    linear_end: float = SD_LINEAR_END,
    timesteps: int = NUM_TRAIN_TIMESTEPS,
) -> Diffusion:
    """SD 2.1 schedule (eps, v1/v2) or its zero-SNR rescale (v-prediction, v2.1).

    Takes the fields of `model.config.DiffusionConfig` by name: `make_diffusion(**asdict(ldm.diffusion))`.
    """
    if parameterization not in PARAMETERIZATIONS:
        raise InvalidInputError(
            f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}"
        )
    if zero_snr and parameterization == "eps":
        # x0 from eps divides by sqrt(alphas_cumprod[999]) = 0.
        raise InvalidInputError("a zero-SNR schedule needs v-prediction (eps has no x0 at the last timestep)")
    betas = sd_betas(linear_start, linear_end, timesteps)
    if zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    return Diffusion(
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        parameterization=parameterization,
        sqrt_alphas_cumprod=_f32(np.sqrt(alphas_cumprod)),
        sqrt_one_minus_alphas_cumprod=_f32(np.sqrt(1.0 - alphas_cumprod)),
    )


@dataclass(frozen=True)
class SpacedSchedule:
    """Buffers of the respaced DDPM, by spaced index (0 = least noisy); float32 except timesteps."""

    timesteps: np.ndarray  # int32, ascending: the ORIGINAL training timesteps the model is called with
    betas: np.ndarray  # float64, kept for derived quantities
    alphas_cumprod: np.ndarray  # float64
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    BUFFERS = (
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
    )

    def __len__(self) -> int:
        return len(self.timesteps)

    def to(self, device: torch.device | str) -> SpacedSchedule:
        moved = {name: getattr(self, name).to(device) for name in self.BUFFERS}
        return SpacedSchedule(
            timesteps=self.timesteps, betas=self.betas, alphas_cumprod=self.alphas_cumprod, **moved
        )


def respace(training_alphas_cumprod: np.ndarray, steps: int) -> SpacedSchedule:
    """Derive the `steps`-step DDPM from the float64 training `alphas_cumprod` (reference `make_schedule`)."""
    timesteps = space_timesteps(len(training_alphas_cumprod), steps)
    kept = training_alphas_cumprod[timesteps]
    previous = np.concatenate([[1.0], kept[:-1]])
    betas = 1.0 - kept / previous
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas, axis=0)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    with np.errstate(divide="ignore"):  # zero-SNR: alphas_cumprod[-1] == 0 gives inf, as in the reference
        sqrt_recip = np.sqrt(1.0 / alphas_cumprod)
        sqrt_recipm1 = np.sqrt(1.0 / alphas_cumprod - 1.0)
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # The variance at index 0 is 0; the reference clips the log by reusing entry [1]. A 1-step schedule
        # has no entry [1]: its only step is index 0, whose noise is masked off, so log(0) = -inf is harmless.
        first = posterior_variance[1] if len(posterior_variance) > 1 else posterior_variance[0]
        log_variance = np.log(np.append(first, posterior_variance[1:]))
    coef1 = betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)
    return SpacedSchedule(
        timesteps=timesteps,
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        sqrt_alphas_cumprod=_f32(np.sqrt(alphas_cumprod)),
        sqrt_one_minus_alphas_cumprod=_f32(np.sqrt(1.0 - alphas_cumprod)),
        sqrt_recip_alphas_cumprod=_f32(sqrt_recip),
        sqrt_recipm1_alphas_cumprod=_f32(sqrt_recipm1),
        posterior_variance=_f32(posterior_variance),
        posterior_log_variance_clipped=_f32(log_variance),
        posterior_mean_coef1=_f32(coef1),
        posterior_mean_coef2=_f32(coef2),
    )


def _f32(values: np.ndarray) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)
