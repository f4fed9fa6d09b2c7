"""`ControlLDM`: SD 2.1 UNet steered by DiffBIR's IRControlNet (a.k.a. LAControlNet), plus its VAE and text
tower.

The ControlNet sees cat(x_noisy, c_img) (8 channels) and has no hint encoder; its 13 residuals (7 in `tiny`)
are scaled by the control strength and added to the UNet skips (reverse order) and after the middle block,
which is exactly what diffusers' `down_block_additional_residuals` / `mid_block_additional_residual` do.
Timesteps are the ORIGINAL training timesteps (e.g. 999), embedded as [cos, sin] (flip_sin_to_cos, shift 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn

from model.config import DiffusionConfig, Stage2Config
from model.errors import InvalidInputError
from model.text import TextEncoder
from model.vae import VAE


@dataclass
class Condition:
    """What the denoiser is conditioned on: text context and the (scaled) condition latent."""

    c_txt: torch.Tensor  # [B, 77, D]
    c_img: torch.Tensor  # [B, 4, h, w]

    def __post_init__(self) -> None:
        if self.c_txt.shape[0] != self.c_img.shape[0]:
            raise InvalidInputError(
                f"batch of c_txt {self.c_txt.shape[0]} != batch of c_img {self.c_img.shape[0]}"
            )

    @staticmethod
    def cat(conds: Sequence[Condition]) -> Condition:
        """Stack conditions on the batch axis (e.g. cond + uncond in one forward for CFG)."""
        return Condition(torch.cat([c.c_txt for c in conds]), torch.cat([c.c_img for c in conds]))


class NoHintEmbedding(nn.Module):
    """Stands in for diffusers' `controlnet_cond_embedding`: IRControlNet has no hint encoder.

    The condition latent enters through the 8-channel `conv_in` instead, so this contributes exactly 0 and
    costs nothing (no parameters, no convs run).
    """

    def forward(self, cond: torch.Tensor) -> int:
        return 0


def make_controlnet(config: dict) -> ControlNetModel:
    """diffusers `ControlNetModel` with IRControlNet's input (see
    `model.convert.controlnet_diffusers_config`)."""
    controlnet = ControlNetModel(**config)
    controlnet.controlnet_cond_embedding = NoHintEmbedding()
    return controlnet


class ControlLDM(nn.Module):
    """The stage-2 denoiser: `forward` returns the raw model output (eps or v, see
    `diffusion.parameterization`)."""

    def __init__(
        self,
        cfg: Stage2Config,
        diffusion: DiffusionConfig,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        vae: VAE,
        text: TextEncoder,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.diffusion = diffusion
        self.unet = unet
        self.controlnet = controlnet
        self.vae = vae
        self.text = text
        self.num_control = cfg.controlnet.num_input_blocks + 1

    @property
    def parameterization(self) -> str:
        return self.diffusion.parameterization

    @property
    def latent_scale_factor(self) -> float:
        return self.cfg.latent_scale_factor

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def control_scales(self, strength: float | Sequence[float]) -> list[float]:
        """One scale per ControlNet residual (input blocks in order, middle last)."""
        if isinstance(strength, (int, float)):
            return [float(strength)] * self.num_control
        scales = [float(s) for s in strength]
        if len(scales) != self.num_control:
            raise InvalidInputError(f"expected {self.num_control} control scales, got {len(scales)}")
        return scales

    def controlnet_residuals(
        self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Condition, scale: float = 1.0
    ) -> list[torch.Tensor]:
        """The ControlNet outputs (input blocks in order, middle block last), multiplied by `scale`."""
        dtype = self.dtype
        down, mid = self.controlnet(
            torch.cat([x_noisy, cond.c_img], dim=1).to(dtype),
            t,
            encoder_hidden_states=cond.c_txt.to(dtype),
            controlnet_cond=cond.c_img,  # ignored by NoHintEmbedding; the latent goes in through conv_in
            conditioning_scale=scale,
            return_dict=False,
        )
        return [*down, mid]

    def forward(
        self,
        x_noisy: torch.Tensor,
        t: torch.Tensor,
        cond: Condition,
        strength: float | Sequence[float] = 1.0,
        residuals: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Raw model output for x_noisy [B,4,h,w] at original timesteps t [B] (int64).

        `residuals` (already scaled) skips the ControlNet, e.g. to reuse or edit them.
        """
        if t.ndim == 0:
            t = t.expand(x_noisy.shape[0])
        if residuals is None:
            scales = self.control_scales(strength)
            if len(set(scales)) == 1:  # one multiply inside diffusers instead of a list here
                residuals = self.controlnet_residuals(x_noisy, t, cond, scales[0])
            else:
                residuals = [
                    r * s for r, s in zip(self.controlnet_residuals(x_noisy, t, cond), scales, strict=True)
                ]
        return self.unet_forward(x_noisy, t, cond.c_txt, residuals)

    def unet_forward(
        self,
        x_noisy: torch.Tensor,
        t: torch.Tensor,
        c_txt: torch.Tensor,
        residuals: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The UNet alone; `residuals` (input blocks in order, middle last) are added like the reference."""
        dtype = self.dtype
        extra = {}
        if residuals is not None:
            if len(residuals) != self.num_control:
                raise InvalidInputError(
                    f"expected {self.num_control} control residuals, got {len(residuals)}"
                )
            extra = {
                "down_block_additional_residuals": tuple(r.to(dtype) for r in residuals[:-1]),
                "mid_block_additional_residual": residuals[-1].to(dtype),
            }
        out = self.unet(
            x_noisy.to(dtype), t, encoder_hidden_states=c_txt.to(dtype), return_dict=False, **extra
        )
        return out[0]
