"""Classifier-free guidance: one batched forward for cond and uncond, then `uncond + s*(cond - uncond)`.

Upstream mixes at different points per sampler (raw outputs for DDPM/DDIM, eps for DPM-Solver, denoised values
from two separate forwards for the EDM solvers). Every preconditioning is affine in the model output with
shared coefficients, so mixing the raw outputs of one batched forward is the same up to rounding (the EDM
fixtures agree well inside their tolerances) and costs one launch sequence instead of two.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from model.cldm import Condition

# (x_noisy, t, cond, strength) -> eps or v; ControlLDM.forward and its tiled wrapper both fit.
Denoiser = Callable[[torch.Tensor, torch.Tensor, "Condition", float], torch.Tensor]
# How the one CFG forward stacks the two conditions: upstream's order per sampler (it only changes last bits).
CfgOrder = Literal["cond_uncond", "uncond_cond"]


def cfg_scale_at(cfg: float, t: float, rescale: bool = False) -> float:
    """The CFG scale at training timestep `t`; v2.1's rescale ramps it from ~1 at t=999 to 1+cfg at t=0."""
    if rescale and cfg > 1:
        return rescaled_cfg(cfg, t)
    return cfg


def rescaled_cfg(cfg: float, t: float) -> float:
    return 1 + cfg * (1 - math.cos(math.pi * ((1000 - t) / 1000) ** 5.0)) / 2.0


def cat_conditions(first: Condition, second: Condition) -> Condition:
    """Stack two conditions on the batch axis (any dataclass of tensors: `Condition` stays in cldm)."""
    fields: dict[str, Any] = {
        f.name: torch.cat([getattr(first, f.name), getattr(second, f.name)])
        for f in dataclasses.fields(first)
    }
    return dataclasses.replace(first, **fields)


def guided_output(
    model: Denoiser,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Condition,
    uncond: Condition | None,
    scale: float,
    strength: float,
    order: CfgOrder = "cond_uncond",
) -> torch.Tensor:
    """Model output with CFG; cond and uncond go through ONE forward of batch 2B (half the launches), stacked
    in `order`."""
    if uncond is None or scale == 1.0:
        return model(x, t, cond, strength)
    if order == "cond_uncond":
        out_cond, out_uncond = model(
            torch.cat([x, x]), torch.cat([t, t]), cat_conditions(cond, uncond), strength
        ).chunk(2)
    else:
        out_uncond, out_cond = model(
            torch.cat([x, x]), torch.cat([t, t]), cat_conditions(uncond, cond), strength
        ).chunk(2)
    return out_uncond + scale * (out_cond - out_uncond)
