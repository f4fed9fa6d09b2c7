"""The sampling loop (paper Alg. 1), the start point and noise augmentation.

Per step: model output (CFG) -> x0 -> optional guidance on x0 -> back to a model output -> sampler step.
The loop only calls the pieces; the maths lives in the sampler, `cfg`, `tiled` and `model/guidance.py`.
Random draws come in the reference's order: start noise, noise augmentation, then per step the guidance
target sample(s) followed by the step noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from model.errors import CanceledError, InvalidInputError
from model.sampling.base import Generators, Sampler, draw_noise
from model.sampling.cfg import Denoiser, cfg_scale_at, guided_output
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
    """Denoise `x_T` [B,4,h,w] in `steps` steps and return z_0 (float32, scaled latent).

    `rescale_cfg` is v2.1's timestep-dependent CFG. `progress("sampler", i, steps)` runs after each step and
    `should_cancel()` before each one (raising CanceledError); nothing in the loop syncs with the device.
    """
    sampler.set_timesteps(steps, device=x_T.device)
    denoiser = model if tiling is None else tiled_denoiser(model, tiling)
    x = x_T.float()
    batch = x.shape[0]
    for i, t in enumerate(sampler.timesteps):
        if should_cancel is not None and should_cancel():
            raise CanceledError(f"canceled before sampler step {i + 1}/{steps}")
        model_t = torch.full((batch,), t, dtype=torch.long, device=x.device)
        scale = cfg_scale_at(cfg, t, rescale_cfg)
        output = guided_output(denoiser, x, model_t, cond, uncond, scale, strength).to(x.dtype)
        if guidance is not None and guidance.active(t):
            x0 = sampler.predict_x0(output, i, x)
            x0 = guide(guidance, x0, sampler.x0_grad_rescale(i), tiling, generator)
            output = sampler.model_output_from_x0(x0, i, x)
        noise = draw_noise(x, generator) if sampler.needs_noise else None
        x = sampler.step(output, i, x, noise)
        if progress is not None:
            progress("sampler", i + 1, steps)
    return x


def guide(
    guidance: Guidance,
    x0: torch.Tensor,
    grad_rescale: torch.Tensor,
    tiling: Tiling | None,
    generator: Generators = None,
) -> torch.Tensor:
    """Guidance on the whole x0, or per window (each on its target slice, gaussian-blended) when tiled.

    Per-window guidance keeps "rgb" guidance's decoder pass at window size, so it fits wherever tiled
    denoising does; the per-repeat target samples are drawn once per step and shared by the windows. Each
    window's loss is a mean over that window, so the pull per latent cell does not shrink as images grow
    (untiled, it scales with 1/(h*w) as in the reference).
    """
    if tiling is None:
        return guidance(x0, grad_rescale, generator)
    targets = guidance.draw_targets(generator)
    losses: list[torch.Tensor] = []

    def window(coords: tuple[int, int, int, int]) -> torch.Tensor:
        hi, hi_end, wi, wi_end = coords
        guided, window_losses = guidance.apply(x0[..., hi:hi_end, wi:wi_end], grad_rescale, targets, coords)
        losses.extend(window_losses)
        return guided

    out = blend_windows(window, x0.shape, tiling, x0.device).to(x0.dtype)
    guidance.last_loss = torch.stack(losses).mean()
    return out
