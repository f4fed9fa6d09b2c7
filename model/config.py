"""Dataclass configs and presets of the stage-2 networks (SD 2.1 UNet + VAE, OpenCLIP text tower,
LAControlNet).

Field names follow the original LDM/DiffBIR yaml files (`model_channels`, `channel_mult`, ...) because the
official checkpoints are laid out by them; `model/convert.py` turns them into diffusers configs. Two presets:
`full` (SD 2.1-base sizes, what the official weights need) and `tiny` (the reference's tiny configs, for tests
and for a service smoke run with random weights -- not a restoration model). The stage-1 configs live with the
stage-1 nets (`model/stage1.py`, `STAGE1_CONFIGS`); `stage1_configs` reads them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

LATENT_SCALE_FACTOR = 0.18215

Parameterization = Literal["eps", "v"]


@dataclass(frozen=True)
class UNetConfig:
    """The SD UNet (`model.diffusion_model`), LDM `UNetModel` parameters."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_res_blocks: int = 2
    num_head_channels: int = 64
    context_dim: int = 1024
    transformer_depth: int = 1
    use_linear_in_transformer: bool = True

    @property
    def num_input_blocks(self) -> int:
        """LDM input blocks (conv_in + res/attn blocks + downsamplers) = ControlNet residuals minus the middle
        one."""
        return 1 + len(self.channel_mult) * self.num_res_blocks + len(self.channel_mult) - 1


@dataclass(frozen=True)
class ControlNetConfig(UNetConfig):
    """DiffBIR's IRControlNet: a copy of the UNet encoder whose first conv also takes the condition latent.

    `hint_channels` are the extra input channels (the 4-channel condition latent c_img); there is no hint
    encoder.
    """

    hint_channels: int = 4


@dataclass(frozen=True)
class VAEConfig:
    """The SD KL autoencoder (`first_stage_model`), LDM `ddconfig`."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 256
    attn_resolutions: tuple[int, ...] = ()

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class TextConfig:
    """The OpenCLIP text tower (`cond_stage_model.model`); SD 2.x reads the penultimate layer."""

    width: int = 1024
    heads: int = 16
    layers: int = 24
    vocab_size: int = 49408
    context_length: int = 77
    layer: Literal["penultimate", "last"] = "penultimate"


@dataclass(frozen=True)
class DiffusionConfig:
    """Training noise schedule and what the UNet predicts (`model/schedule.py` derives the arrays)."""

    linear_start: float = 0.00085
    linear_end: float = 0.012
    timesteps: int = 1000
    parameterization: Parameterization = "eps"
    zero_snr: bool = False


@dataclass(frozen=True)
class Stage2Config:
    """Everything needed to build a `ControlLDM` (weights aside)."""

    name: str
    unet: UNetConfig
    controlnet: ControlNetConfig
    vae: VAEConfig
    text: TextConfig
    latent_scale_factor: float = LATENT_SCALE_FACTOR
    labels: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the converted cache's metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stage2Config:
        def tuples(d: dict[str, Any]) -> dict[str, Any]:
            return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}

        return cls(
            name=data["name"],
            unet=UNetConfig(**tuples(data["unet"])),
            controlnet=ControlNetConfig(**tuples(data["controlnet"])),
            vae=VAEConfig(**tuples(data["vae"])),
            text=TextConfig(**data["text"]),
            latent_scale_factor=data.get("latent_scale_factor", LATENT_SCALE_FACTOR),
            labels=tuple(data.get("labels", ())),
        )


DIFFUSION: dict[str, DiffusionConfig] = {
    # SD 2.1-base training schedule, eps prediction (DiffBIR v1 / v2).
    "sd": DiffusionConfig(),
    # DiffBIR v2.1: SD 2.1 fine-tuned with a zero-terminal-SNR schedule and v-prediction.
    "v2.1": DiffusionConfig(parameterization="v", zero_snr=True),
}

# Release -> diffusion settings of its stage-2 checkpoint.
VERSION_DIFFUSION: dict[str, str] = {"v1": "sd", "v2": "sd", "v2.1": "v2.1"}

_FULL_UNET = UNetConfig()

PRESETS: dict[str, Stage2Config] = {
    "full": Stage2Config(
        name="full",
        unet=_FULL_UNET,
        controlnet=ControlNetConfig(),
        vae=VAEConfig(),
        text=TextConfig(),
    ),
    # Values of the reference's tiny_configs.json (copied here so the code, not the test data, is the source).
    "tiny": Stage2Config(
        name="tiny",
        unet=UNetConfig(
            model_channels=32,
            channel_mult=(1, 2),
            attention_resolutions=(1,),
            num_res_blocks=2,
            num_head_channels=16,
            context_dim=32,
        ),
        controlnet=ControlNetConfig(
            model_channels=32,
            channel_mult=(1, 2),
            attention_resolutions=(1,),
            num_res_blocks=2,
            num_head_channels=16,
            context_dim=32,
        ),
        vae=VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1),
        text=TextConfig(width=32, heads=2, layers=3),
        labels=("not a restoration model",),
    ),
}


def get_preset(name: str) -> Stage2Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None


def get_diffusion(name: str) -> DiffusionConfig:
    """`name` is a diffusion key ("sd", "v2.1") or a release ("v1", "v2", "v2.1")."""
    key = VERSION_DIFFUSION.get(name, name)
    try:
        return DIFFUSION[key]
    except KeyError:
        raise ValueError(
            f"unknown diffusion {name!r}; known: {sorted(DIFFUSION)} or {sorted(VERSION_DIFFUSION)}"
        ) from None


def stage1_configs(preset: str) -> dict[str, dict[str, Any]]:
    """The stage-1 configs of a preset, owned by `model/stage1.py` (imported lazily: stage 2 needs no
    spandrel)."""
    from model.stage1 import STAGE1_CONFIGS

    if preset not in STAGE1_CONFIGS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(STAGE1_CONFIGS)}")
    return STAGE1_CONFIGS[preset]
