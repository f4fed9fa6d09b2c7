"""The public `fidelity` knob in [0, 1] -> latent image guidance settings (paper Algorithm 1).

Why a knob: users should not need to know that the reference's guidance scale `s` is multiplied by 3000,
divided by the number of latent elements (the loss is a mean over C,H,W) and rescaled per step. They pick
"how closely must the result follow the stage-1 restoration" and get the same behaviour at any size, for
any sampler and step count.

The formula. The guidance step (model/guidance.py, as the reference) changes the predicted x0 at step i by
`-3000*s * dL/dx0 * g_i`, with `L = mean_{C,H,W}(x0 - target)^2` and `g_i` the sampler's `x0_grad_rescale`
(1/posterior_mean_coef1 for the reference DDPM). dL/dx0 = 2(x0 - target)/(C*H*W), so

    x0 <- x0 - lambda_i * (x0 - target),   lambda_i = 6000 * s * g_i / (C*H*W)

i.e. each guided step moves x0 a fraction lambda_i of the way to the stage-1 latent. We set the largest
fraction of the run, at the step with the largest g (the noisiest one), to the fidelity itself:

    max_i lambda_i = f    =>    s(f) = f * C*H*W / (6000 * max_i g_i)

- f = 0: no guidance at all (None: the step is skipped, so it costs nothing).
- f = 1: the noisiest step puts x0 exactly on the stage-1 latent and later steps pull by g_i/max g < 1 of
  the way -- the strongest pull that never overshoots (lambda > 1 would mirror x0 around the target).
- Linear in f: equal steps of the knob give equal steps of pull; monotonic by construction.
- Dividing by C*H*W undoes the reference's mean, so the same fidelity pulls equally hard on a 256 px and a
  4096 px image (with a fixed s the pull would shrink with the pixel count). When sampling is tiled the
  mean is over a window, so the window's shape is used.
- space "latent", loss "mse": the cheapest variant (no VAE decode/backward per step); window = every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from model.errors import InvalidInputError
from model.guidance import INTERNAL_SCALE_FACTOR, WINDOW_START, WINDOW_STOP


@dataclass(frozen=True)
class GuidanceSettings:
    """What model/guidance.py needs: where and how hard to pull x0 towards the stage-1 result."""

    scale: float
    space: str = "latent"  # "latent" | "rgb"
    loss: str = "mse"  # "mse" | "w_mse"
    t_start: int = WINDOW_START  # guidance applies when t_stop < t+1 < t_start (reference, strict)
    t_stop: int = WINDOW_STOP
    repeat: int = 1


FIDELITY_RANGE = (0.0, 1.0)  # 0 = no guidance .. 1 = the strongest pull that never overshoots (see above)


def check_fidelity(fidelity: float) -> float:
    """Validate the user value (a NaN or out-of-range value is a client error, not a crash later)."""
    try:
        value = float(fidelity)
    except (TypeError, ValueError):
        raise InvalidInputError(f"fidelity must be a number in [0, 1], got {fidelity!r}") from None
    low, high = FIDELITY_RANGE
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidInputError(f"fidelity must be in [0, 1], got {fidelity!r}")
    return value


def guidance_scale(fidelity: float, latent_shape: tuple[int, int, int], max_grad_rescale: float) -> float:
    """The reference's `s` for which the strongest guided step moves x0 a fraction `fidelity` of the way to
    the target, on a latent (or tiled window) of shape (C, H, W); `max_grad_rescale` = max over the run of
    the sampler's `x0_grad_rescale`."""
    f = check_fidelity(fidelity)
    if not math.isfinite(max_grad_rescale) or max_grad_rescale <= 0:
        raise InvalidInputError(f"max_grad_rescale must be positive and finite, got {max_grad_rescale!r}")
    c, h, w = latent_shape
    return f * c * h * w / (2.0 * INTERNAL_SCALE_FACTOR * max_grad_rescale)


def fidelity_to_guidance(
    fidelity: float, latent_shape: tuple[int, int, int], max_grad_rescale: float
) -> GuidanceSettings | None:
    """Guidance for `fidelity` (see the module docstring); None = no guidance (fidelity 0)."""
    scale = guidance_scale(fidelity, latent_shape, max_grad_rescale)
    if scale == 0.0:
        return None
    return GuidanceSettings(scale=scale)
