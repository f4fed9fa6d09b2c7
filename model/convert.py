"""Official (CompVis LDM / DiffBIR) checkpoint key layouts -> the modules `ControlLDM` is built from.

UNet, VAE and ControlNet go through diffusers' own single-file converters (`loaders.single_file_utils`), so
the layout knowledge lives in the library that defines the target modules. Hand-written gaps, and why:
- `ldm_original_config`: the converters want the LDM yaml as a dict; we build it from our dataclasses.
- `controlnet_diffusers_config`: diffusers' `create_controlnet_diffusers_config_from_ldm` calls its UNet
  helper without the `checkpoint` argument (a TypeError in 0.42), and IRControlNet's first conv takes
  `in_channels + hint_channels` channels with no hint encoder, which that helper cannot express.
- `_traced`: the converters fill absent keys with `None` and skip unknown ones silently; tracing tells which
  source keys were used, so a strict load can name both missing and unused keys.
- Text: the OpenCLIP tower keeps open_clip's own key names, so only the prefix is stripped (`convert_text`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from diffusers.loaders.single_file_utils import (
    convert_controlnet_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)

from model.config import ControlNetConfig, Stage2Config, UNetConfig, VAEConfig

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."
# OpenCLIP checkpoint keys the penultimate-layer text encoder never reads (the reference ignores them too).
TEXT_IGNORED_KEYS = ("text_projection", "logit_scale")
TEXT_IGNORED_PREFIXES = ("visual.",)

StateDict = dict[str, torch.Tensor]


def _unet_params(cfg: UNetConfig) -> dict[str, Any]:
    return {
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "model_channels": cfg.model_channels,
        "attention_resolutions": list(cfg.attention_resolutions),
        "num_res_blocks": cfg.num_res_blocks,
        "channel_mult": list(cfg.channel_mult),
        "num_head_channels": cfg.num_head_channels,
        "use_spatial_transformer": True,
        "use_linear_in_transformer": cfg.use_linear_in_transformer,
        "transformer_depth": cfg.transformer_depth,
        "context_dim": cfg.context_dim,
        "legacy": False,
    }


def _vae_ddconfig(cfg: VAEConfig) -> dict[str, Any]:
    return {
        "double_z": True,
        "z_channels": cfg.z_channels,
        "resolution": cfg.resolution,
        "in_channels": cfg.in_channels,
        "out_ch": cfg.out_ch,
        "ch": cfg.ch,
        "ch_mult": list(cfg.ch_mult),
        "num_res_blocks": cfg.num_res_blocks,
        "attn_resolutions": list(cfg.attn_resolutions),
        "dropout": 0.0,
    }


def ldm_original_config(cfg: Stage2Config) -> dict[str, Any]:
    """The parts of DiffBIR's cldm.yaml that diffusers' config helpers read."""
    return {
        "model": {
            "params": {
                "scale_factor": cfg.latent_scale_factor,
                "unet_config": {"params": _unet_params(cfg.unet)},
                "control_stage_config": {
                    "params": {**_unet_params(cfg.controlnet), "hint_channels": cfg.controlnet.hint_channels}
                },
                "first_stage_config": {
                    "params": {"embed_dim": cfg.vae.embed_dim, "ddconfig": _vae_ddconfig(cfg.vae)}
                },
            }
        }
    }


def unet_diffusers_config(cfg: Stage2Config) -> dict[str, Any]:
    """`UNet2DConditionModel` kwargs. Note `attention_head_dim` there is the NUMBER of heads per block."""
    # An empty checkpoint makes diffusers fall back to its default sample size (only a default, never a
    # limit).
    return create_unet_diffusers_config_from_ldm(ldm_original_config(cfg), checkpoint={})


def controlnet_diffusers_config(cfg: Stage2Config) -> dict[str, Any]:
    """`ControlNetModel` kwargs for IRControlNet (see the module docstring for why this is not diffusers'
    helper)."""
    cn: ControlNetConfig = cfg.controlnet
    as_unet = {"model": {"params": {**ldm_original_config(cfg)["model"]["params"]}}}
    as_unet["model"]["params"]["unet_config"] = {"params": _unet_params(cn)}
    unet = create_unet_diffusers_config_from_ldm(as_unet, checkpoint={})
    return {
        "in_channels": cn.in_channels + cn.hint_channels,
        "conditioning_channels": cn.hint_channels,
        "down_block_types": unet["down_block_types"],
        "block_out_channels": unet["block_out_channels"],
        "layers_per_block": unet["layers_per_block"],
        "cross_attention_dim": unet["cross_attention_dim"],
        "attention_head_dim": unet["attention_head_dim"],
        "use_linear_projection": unet["use_linear_projection"],
        "transformer_layers_per_block": unet["transformer_layers_per_block"],
    }


def vae_diffusers_config(cfg: Stage2Config) -> dict[str, Any]:
    """`AutoencoderKL` kwargs."""
    return create_vae_diffusers_config_from_ldm(ldm_original_config(cfg), checkpoint={})


class Conversion(NamedTuple):
    """A converted state dict, the source keys the converter did not use (a strict load must reject those),
    and where each converted key came from (so errors can name keys as they are in the file)."""

    state_dict: StateDict
    unused: list[str]
    origin: dict[str, str]


def _traced(
    converter: Callable[[StateDict], Mapping[str, Any]], source: Mapping[str, torch.Tensor]
) -> Conversion:
    """Run a diffusers converter on shape-only meta probes and map the result back to the source tensors.

    diffusers' converters silently skip keys they do not know and fill absent ones with None; tracing which
    probe ends up under which new key tells us exactly which source keys were used, without copying any
    weights. The only value change the converters make is dropping the 1x1 spatial dims of the VAE attention
    convs (a reshape).
    """
    probes = {k: torch.empty(tuple(v.shape), device="meta") for k, v in source.items()}
    origin_of = {id(p): k for k, p in probes.items()}
    out: StateDict = {}
    origin: dict[str, str] = {}
    for new_key, probe in converter(probes).items():
        if probe is None:
            continue
        src = origin_of.get(id(probe)) or origin_of.get(id(probe._base))
        if src is None:  # a converter that computes new tensors would need a real (not traced) conversion
            raise RuntimeError(f"cannot trace converted key {new_key!r} back to a source key")
        value = source[src]
        out[new_key] = value if value.shape == probe.shape else value.reshape(probe.shape)
        origin[new_key] = src
    used = set(origin.values())
    return Conversion(out, [k for k in source if k not in used], origin)


def _with_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    return {k: v for k, v in sd.items() if k.startswith(prefix)}


def convert_unet(sd_checkpoint: Mapping[str, torch.Tensor], cfg: Stage2Config) -> Conversion:
    """`model.diffusion_model.*` of an SD checkpoint -> `UNet2DConditionModel` keys."""
    config = unet_diffusers_config(cfg)
    return _traced(
        lambda sd: convert_ldm_unet_checkpoint(sd, config), _with_prefix(sd_checkpoint, UNET_PREFIX)
    )


def convert_vae(sd_checkpoint: Mapping[str, torch.Tensor], cfg: Stage2Config) -> Conversion:
    """`first_stage_model.*` of an SD checkpoint -> `AutoencoderKL` keys (1x1 attention convs -> linears)."""
    config = vae_diffusers_config(cfg)
    return _traced(lambda sd: convert_ldm_vae_checkpoint(sd, config), _with_prefix(sd_checkpoint, VAE_PREFIX))


def convert_text(sd_checkpoint: Mapping[str, torch.Tensor]) -> Conversion:
    """`cond_stage_model.model.*` -> open_clip `TextTransformer` keys (same names, prefix stripped).

    `visual.*`, `text_projection` and `logit_scale` are dropped: the penultimate-layer context never reads
    them. Anything else under the prefix is kept, so a strict load still catches a wrong or truncated tower.
    """
    out: StateDict = {}
    origin: dict[str, str] = {}
    for key, value in sd_checkpoint.items():
        if not key.startswith(TEXT_PREFIX):
            continue
        name = key[len(TEXT_PREFIX) :]
        if name in TEXT_IGNORED_KEYS or name.startswith(TEXT_IGNORED_PREFIXES):
            continue
        out[name] = value
        origin[name] = key
    return Conversion(out, [], origin)


def convert_controlnet(cn_checkpoint: Mapping[str, torch.Tensor], cfg: Stage2Config) -> Conversion:
    """A plain IRControlNet state_dict (v1_general.pth, v2.pth, ...) -> `ControlNetModel` keys.

    The checkpoint has no `input_hint_block`, so no `controlnet_cond_embedding.*` keys come out; `ControlLDM`
    replaces that module by one without parameters.
    """
    if "time_embed.0.weight" not in cn_checkpoint:
        # diffusers' converter would then look for a `control_model.` prefix and silently find nothing.
        raise KeyError("not an IRControlNet state_dict: 'time_embed.0.weight' is missing")
    config = controlnet_diffusers_config(cfg)
    return _traced(lambda sd: convert_controlnet_checkpoint(sd, config), cn_checkpoint)
