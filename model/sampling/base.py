"""The one small face every sampler shows to the loop, so the loop never branches on the sampler kind.

`index` is the loop position (0 = first, noisiest step); each sampler maps it to its own schedule. Samplers
keep per-step coefficients as device tensors and index them with Python ints, so a step never syncs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from model.noise import Generators, draw_noise  # noqa: F401  (re-exported for the samplers)
from model.schedule import Diffusion


class Sampler(ABC):
    """diffusers-like: `set_timesteps(n)`, then per step `step(model_output, index, x, noise) -> x_prev`.

    `predict_x0` / `model_output_from_x0` convert between the model's output (eps or v) and x0 at a step;
    guidance edits x0 and hands the converted output back to `step`, so it wraps every sampler the same way.
    """

    #: True when `step` consumes a fresh N(0, I) draw (the loop draws it, in the reference's order).
    needs_noise: bool = False

    def __init__(self, diffusion: Diffusion) -> None:
        self.diffusion = diffusion
        self.parameterization = diffusion.parameterization
        self.timesteps: list[int] = []  # ORIGINAL training timesteps, descending: what the model gets

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @abstractmethod
    def set_timesteps(self, num_steps: int, device: torch.device | str | None = None) -> None:
        """Choose the `num_steps` timesteps and put the step coefficients on `device`."""

    @abstractmethod
    def alpha_sigma(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(alphas_cumprod), sqrt(1 - alphas_cumprod)) of the sample at step `index`, as `step` uses."""

    @abstractmethod
    def x0_grad_rescale(self, index: int) -> torch.Tensor:
        """1 / (d x_prev / d x0) at step `index`: guidance multiplies its x0 gradient by it (paper Alg. 1)."""

    @abstractmethod
    def step(
        self, model_output: torch.Tensor, index: int, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One denoising step: x_t -> x_{t-1}."""

    def predict_x0(self, model_output: torch.Tensor, index: int, x: torch.Tensor) -> torch.Tensor:
        a, s = self.alpha_sigma(index)
        if self.parameterization == "v":
            return a * x - s * model_output
        return (x - s * model_output) / a

    def model_output_from_x0(self, x0: torch.Tensor, index: int, x: torch.Tensor) -> torch.Tensor:
        """The eps or v that `predict_x0` maps back to `x0` (same x): how a guided x0 re-enters `step`."""
        a, s = self.alpha_sigma(index)
        if self.parameterization == "v":
            return (a * x - x0) / s
        return (x - a * x0) / s

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.num_steps:
            raise IndexError(f"step index {index} outside [0, {self.num_steps}); call set_timesteps first")


class TabulatedSampler(Sampler):
    """A sampler whose per-step alpha, sigma and guidance rescale are gathered once in `set_timesteps`.

    The diffusers-backed samplers fill `_alpha`, `_sigma` and `_rescale` (device tensors, one entry per loop
    index), so reading a step's coefficients is an index, never a sync.
    """

    _alpha: torch.Tensor
    _sigma: torch.Tensor
    _rescale: torch.Tensor

    def alpha_sigma(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_index(index)
        return self._alpha[index], self._sigma[index]

    def x0_grad_rescale(self, index: int) -> torch.Tensor:
        self._check_index(index)
        return self._rescale[index]
