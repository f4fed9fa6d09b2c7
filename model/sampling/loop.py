"""The sampling loop (paper Alg. 1), the start point and noise augmentation.

Per step the sampler calls the model (CFG) one or more times, turns each output into x0, lets guidance pull
x0 (`StepContext.guide`) and steps on. The loop only lends the pieces; the maths lives in the sampler, `cfg`,
`tiled` and `model/guidance.py`. Random draws come in the reference's order: start noise, noise augmentation,
then per step whatever the sampler draws (guidance target samples come before the DDPM step noise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from model.errors import CanceledError, InvalidInputError
from model.sampling.base import Generators, ModelTime, Sampler, draw_noise
from model.sampling.cfg import Denoiser, guided_output
from model.sampling.tiled import Tiling, blend_windows, tiled_denoiser
from model.schedule import Diffusion

if TYPE_CHECKING:
    from model.cldm import Condition
    from model.guidance import Guidance

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]
START_POINTS = ("noise", "cond")


def start_latent(
    diffusion: Diffusion, c_img: torch.Tensor, start: str = "noise", generator: Generators = None
) -> torch.Tensor:
    """x_T: pure noise, or ("cond") the condition latent diffused to the last training step."""
    if start not in START_POINTS:
        raise InvalidInputError(f"start point must be one of {START_POINTS}, got {start!r}")
    noise = draw_noise(c_img.float(), generator)
    if start == "noise":
        return noise
    return diffusion.q_sample(c_img.float(), diffusion.num_timesteps - 1, noise)


def augment_condition(
    diffusion: Diffusion, c_img: torch.Tensor, level: int, generator: Generators = None
) -> torch.Tensor:
    """Noise augmentation: c_img diffused to training step `level` (0 = unchanged, no draw); use it for
    cond AND uncond (one shared draw, as the reference)."""
    if level == 0:
        return c_img
    if not 0 < level < diffusion.num_timesteps:
        raise InvalidInputError(
            f"noise augmentation level must be in [0, {diffusion.num_timesteps}), got {level}"
        )
    return diffusion.q_sample(c_img, level, draw_noise(c_img, generator))


@torch.no_grad()
def sample(
    model: Denoiser,
    sampler: Sampler,
    x_T: torch.Tensor,
    cond: Condition,
    uncond: Condition | None,
    steps: int,
    cfg: float,
    strength: float,
    guidance: Guidance | None = None,
    tiling: Tiling | None = None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    generator: Generators = None,
    rescale_cfg: bool = False,
) -> torch.Tensor:
    """Denoise `x_T` [B,4,h,w] with a `steps`-step schedule and return z_0 (float32, scaled latent).

    `rescale_cfg` is v2.1's timestep-dependent CFG. `progress("sampler", i, n)` runs after each of the
    sampler's `n` steps (upstream DDIM may take one more than `steps`) and `should_cancel()` before each one
    (raising CanceledError); nothing in the loop syncs with the device.
    """
    sampler.set_timesteps(steps, device=x_T.device)
    ctx = _LoopContext(
        model if tiling is None else tiled_denoiser(model, tiling),
        sampler,
        cond,
        uncond,
        cfg,
        strength,
        rescale_cfg,
        guidance,
        tiling,
        generator,
    )
    x = sampler.start(x_T.float())
    total = sampler.num_steps
    for i in range(total):
        if should_cancel is not None and should_cancel():
            raise CanceledError(f"canceled before sampler step {i + 1}/{total}")
        x = sampler.step(i, x, ctx)
        if progress is not None:
            progress("sampler", i + 1, total)
    return x


@dataclass(frozen=True)
class _LoopContext:
    """The `StepContext` the loop lends its sampler: model calls with CFG (and tiling), guidance, noise."""

    denoiser: Denoiser
    sampler: Sampler
    cond: Condition
    uncond: Condition | None
    cfg: float
    strength: float
    rescale_cfg: bool
    guidance: Guidance | None
    tiling: Tiling | None
    generator: Generators

    def model(self, x: torch.Tensor, t: ModelTime) -> torch.Tensor:
        dtype = torch.float32 if isinstance(t, float) else torch.long
        model_t = torch.full((x.shape[0],), t, dtype=dtype, device=x.device)
        scale = self.sampler.cfg_scale(self.cfg, t, self.rescale_cfg)
        out = guided_output(
            self.denoiser, x, model_t, self.cond, self.uncond, scale, self.strength, self.sampler.cfg_order
        )
        return out.to(x.dtype)

    def guide(self, x0: torch.Tensor, t: ModelTime, index: int) -> torch.Tensor:
        if self.guidance is None or not self.guidance.active(t):
            return x0
        targets = self.guidance.draw_targets(self.generator)
        return guide(self.guidance, x0, self.sampler.x0_grad_rescale(index), self.tiling, targets)

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        return draw_noise(like, self.generator)


def guide(
    guidance: Guidance,
    x0: torch.Tensor,
    grad_rescale: torch.Tensor,
    tiling: Tiling | None,
    targets: list[torch.Tensor],
) -> torch.Tensor:
    """Guidance on the whole x0, or per window (each on its target slice, gaussian-blended) when tiled.

    Per-window guidance keeps "rgb" guidance's decoder pass at window size, so it fits wherever tiled
    denoising does; the per-repeat `targets` (`Guidance.draw_targets`) are shared by the windows. Each
    window's loss is a mean over that window, so the pull per latent cell does not shrink as images grow
    (untiled, it scales with 1/(h*w) as in the reference).
    """
    if tiling is None:
        out, losses = guidance.apply(x0, grad_rescale, targets)
    else:
        losses = []

        def window(coords: tuple[int, int, int, int]) -> torch.Tensor:
            hi, hi_end, wi, wi_end = coords
            guided, window_losses = guidance.apply(
                x0[..., hi:hi_end, wi:wi_end], grad_rescale, targets, coords
            )
            losses.extend(window_losses)
            return guided

        out = blend_windows(window, x0.shape, tiling, x0.device).to(x0.dtype)
    guidance.last_loss = torch.stack(losses).mean()
    return out
