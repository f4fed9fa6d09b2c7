"""Build a `ControlLDM`: from a preset (meta / default init / tiny random), from the official files, or from
the converted safetensors cache.

The official route is: read (unwrap like the reference) -> convert the key layout (`model/convert.py`) ->
strict load. Modules are built on the meta device and the checkpoint tensors are assigned, so a full-size load
does not spend time on random init first. `save_converted` writes the diffusers-layout weights plus the config
as safetensors metadata, so a worker's second start skips the pickle and the conversion.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from model import convert
from model.checkpoints import check_state_dict, load_state_dict, load_strict
from model.cldm import ControlLDM, make_controlnet
from model.config import DiffusionConfig, Stage2Config, get_diffusion, get_preset
from model.errors import CheckpointMismatchError, ModelError
from model.text import TextEncoder
from model.vae import VAE

CONVERTED_FORMAT = "diffbir-controlldm"
CONVERTED_FORMAT_VERSION = "1"

# The reference fixtures' tiny weights (official layouts), see the reference README "tiny/".
TINY_SD_FILES = ("weights_sd_unet.safetensors", "weights_sd_vae.safetensors", "weights_sd_clip.safetensors")
TINY_CONTROLNET_FILE = "weights_controlnet.safetensors"

StateDict = dict[str, torch.Tensor]


def _resolve(
    preset: str | Stage2Config, diffusion: str | DiffusionConfig
) -> tuple[Stage2Config, DiffusionConfig]:
    cfg = get_preset(preset) if isinstance(preset, str) else preset
    diff = get_diffusion(diffusion) if isinstance(diffusion, str) else diffusion
    return cfg, diff


def build_cldm(
    preset: str | Stage2Config = "tiny",
    diffusion: str | DiffusionConfig = "sd",
    device: str | torch.device | None = None,
) -> ControlLDM:
    """An untrained `ControlLDM` with the libraries' default init; `device="meta"` allocates nothing."""
    cfg, diff = _resolve(preset, diffusion)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        unet = UNet2DConditionModel(**convert.unet_diffusers_config(cfg))
        controlnet = make_controlnet(convert.controlnet_diffusers_config(cfg))
        vae = VAE(AutoencoderKL(**convert.vae_diffusers_config(cfg)), cfg.latent_scale_factor)
        text = TextEncoder(cfg.text)
    return ControlLDM(cfg, diff, unet, controlnet, vae, text).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------
# deterministic random weights (tiny preset)


def redraw_parameters_(module: nn.Module, seed: int) -> nn.Module:
    """Redraw EVERY parameter like the reference's fixtures: weights ~ N(0, 1/fan_in), norm scales U(0.75,
    1.25), biases N(0, 0.05^2). Zero-initialised convs get weights too, so outputs are non-trivial.

    Drawn on a CPU generator in `named_parameters` order, so a seed gives the same weights on every device.
    """
    gen = torch.Generator().manual_seed(seed)
    norm_params = {
        id(p)
        for m in module.modules()
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm))
        for p in m.parameters(recurse=False)
    }
    with torch.no_grad():
        for name, param in module.named_parameters():
            shape = param.shape
            if name.endswith("bias") and param.ndim == 1:
                value = torch.randn(shape, generator=gen) * 0.05
            elif id(param) in norm_params:
                value = torch.rand(shape, generator=gen) * 0.5 + 0.75
            else:
                fan_in = math.prod(shape[1:]) if param.ndim > 1 else max(param.numel(), 1)
                value = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
            param.copy_(value.to(param.dtype))
    return module


def init_tiny_random(seed: int = 0, diffusion: str | DiffusionConfig = "sd") -> ControlLDM:
    """The `tiny` preset with deterministic random weights -- NOT a restoration model (smoke runs, tests)."""
    ldm = build_cldm("tiny", diffusion)
    redraw_parameters_(ldm, seed)
    ldm.text.clear_cache()
    return ldm


# ----------------------------------------------------------------------------------------------------
# official checkpoints


def _load_part(module: nn.Module, conversion: convert.Conversion, what: str) -> None:
    """Strict load of a converted part; errors name unexpected/mismatched keys as they are in the file.

    Source keys the converter did not use are reported together with the module keys left missing, so a
    RENAMED key shows up as both (its name in the file, and the module key it should have filled) instead
    of only one of them. Missing keys carry the module's (diffusers) names: the file lacks the official key
    that converts to them.
    """
    try:
        check_state_dict(module, conversion.state_dict, what)
    except CheckpointMismatchError as err:

        def name(key: str) -> str:
            src = conversion.origin.get(key)
            return f"{src} (-> {key})" if src and src != key else key

        raise CheckpointMismatchError(
            what,
            err.missing,
            [*conversion.unused, *(name(k) for k in err.unexpected)],
            [(name(k), a, b) for k, a, b in err.shape_mismatches],
        ) from None
    if conversion.unused:
        raise CheckpointMismatchError(what, unexpected=conversion.unused)
    load_strict(module, conversion.state_dict, what, assign=True)


def load_sd_weights(
    ldm: ControlLDM, sd_checkpoint: Mapping[str, torch.Tensor], source: str = "SD checkpoint"
) -> None:
    """UNet, VAE and text tower from one SD checkpoint dict in the official layout (keys outside those three
    prefixes are ignored, as the reference does)."""
    cfg = ldm.cfg
    _load_part(
        ldm.unet, convert.convert_unet(sd_checkpoint, cfg), f"SD UNet ({convert.UNET_PREFIX}* of {source})"
    )
    _load_part(
        ldm.vae.autoencoder,
        convert.convert_vae(sd_checkpoint, cfg),
        f"SD VAE ({convert.VAE_PREFIX}* of {source})",
    )
    _load_part(
        ldm.text.model,
        convert.convert_text(sd_checkpoint),
        f"OpenCLIP text ({convert.TEXT_PREFIX}* of {source})",
    )


def load_controlnet_weights(
    ldm: ControlLDM, cn_checkpoint: Mapping[str, torch.Tensor], source: str = "ControlNet checkpoint"
) -> None:
    """IRControlNet weights (plain keys, like v2.pth) into `ldm.controlnet`, strictly."""
    what = f"IRControlNet ({source})"
    try:
        converted = convert.convert_controlnet(cn_checkpoint, ldm.cfg)
    except KeyError as exc:
        raise CheckpointMismatchError(what, missing=["time_embed.0.weight"]) from exc
    _load_part(ldm.controlnet, converted, what)


def from_official_state_dicts(
    sd_checkpoint: Mapping[str, torch.Tensor],
    cn_checkpoint: Mapping[str, torch.Tensor],
    preset: str | Stage2Config = "full",
    diffusion: str | DiffusionConfig = "sd",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    sources: tuple[str, str] = ("SD checkpoint", "ControlNet checkpoint"),
) -> ControlLDM:
    """A `ControlLDM` from already-read official state dicts (meta build, strict assign, device/dtype)."""
    ldm = build_cldm(preset, diffusion, device="meta")
    load_sd_weights(ldm, sd_checkpoint, sources[0])
    load_controlnet_weights(ldm, cn_checkpoint, sources[1])
    return _finish(ldm, device, dtype)


def load_official(
    sd_path: str | Path,
    controlnet_path: str | Path,
    preset: str | Stage2Config = "full",
    diffusion: str | DiffusionConfig = "sd",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ControlLDM:
    """A `ControlLDM` from the official SD 2.1 checkpoint and an IRControlNet file (v2.pth, ...)."""
    sd_checkpoint = load_state_dict(sd_path)
    cn_checkpoint = load_state_dict(controlnet_path)
    return from_official_state_dicts(
        sd_checkpoint, cn_checkpoint, preset, diffusion, device, dtype, (str(sd_path), str(controlnet_path))
    )


def load_reference_tiny(
    tiny_dir: str | Path,
    diffusion: str | DiffusionConfig = "sd",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ControlLDM:
    """The tiny `ControlLDM` from the reference fixture weights, through the SAME official-layout path."""
    tiny_dir = Path(tiny_dir)
    sd_checkpoint: StateDict = {}
    for name in TINY_SD_FILES:
        sd_checkpoint.update(load_state_dict(tiny_dir / name))
    cn_checkpoint = load_state_dict(tiny_dir / TINY_CONTROLNET_FILE)
    return from_official_state_dicts(
        sd_checkpoint,
        cn_checkpoint,
        "tiny",
        diffusion,
        device,
        dtype,
        (f"{tiny_dir}/weights_sd_*", str(tiny_dir / TINY_CONTROLNET_FILE)),
    )


def _finish(ldm: ControlLDM, device: str | torch.device, dtype: torch.dtype | None) -> ControlLDM:
    """Rebuild the buffers that checkpoints do not hold (still on meta after an assign-load), then move."""
    text = ldm.text.model
    text.attn_mask = text.build_causal_mask()
    left = [n for n, t in [*ldm.named_parameters(), *ldm.named_buffers()] if t.is_meta]
    if left:
        raise ModelError(f"tensors left uninitialised after loading: {left[:10]}")
    ldm.to(device=device, dtype=dtype)
    ldm.text.clear_cache()
    return ldm.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------
# converted cache


def save_converted(ldm: ControlLDM, path: str | Path) -> Path:
    """Write all weights (diffusers layout, as loaded) + config to one safetensors file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in ldm.state_dict().items()}
    metadata = {
        "format": CONVERTED_FORMAT,
        "format_version": CONVERTED_FORMAT_VERSION,
        "config": json.dumps(ldm.cfg.to_dict()),
        "diffusion": json.dumps(asdict(ldm.diffusion)),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)  # atomic: a crash never leaves a half-written cache that a later start would trust
    return path


def read_converted_metadata(path: str | Path) -> tuple[Stage2Config, DiffusionConfig]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != CONVERTED_FORMAT or meta.get("format_version") != CONVERTED_FORMAT_VERSION:
        raise ModelError(
            f"{path} is not a converted ControlLDM cache (format {meta.get('format')!r} "
            f"v{meta.get('format_version')!r}, expected {CONVERTED_FORMAT!r} v{CONVERTED_FORMAT_VERSION})"
        )
    cfg = Stage2Config.from_dict(json.loads(meta["config"]))
    diffusion = DiffusionConfig(**json.loads(meta["diffusion"]))
    return cfg, diffusion


def load_converted(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> ControlLDM:
    """The `ControlLDM` saved by `save_converted` (strict: the file must hold exactly the model's tensors)."""
    cfg, diffusion = read_converted_metadata(path)
    ldm = build_cldm(cfg, diffusion, device="meta")
    load_strict(ldm, load_file(str(path), device="cpu"), f"converted cache {path}", assign=True)
    return _finish(ldm, device, dtype)
