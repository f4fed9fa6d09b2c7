"""Full-size layouts: the converters map every official key (manifests) onto the full-size modules, exactly.

Everything is built on the meta device, so no memory is allocated for the ~1.7B parameters.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from torch import nn

from model import convert
from model.cldm import ControlLDM
from model.config import get_preset
from model.loading import build_cldm
from tests.model.reference import load_manifest

FULL = get_preset("full")
SD = load_manifest("sd21_ldm")
CONTROLNET = load_manifest("controlnet_v2")
COUNTS = load_manifest("param_counts")


def _meta_state_dict(manifest: Mapping) -> dict[str, torch.Tensor]:
    assert not manifest["key_dtypes_non_float32"]
    return {k: torch.empty(shape, device="meta") for k, shape in manifest["keys"].items()}


@pytest.fixture(scope="module")
def full_meta() -> ControlLDM:
    return build_cldm("full", device="meta")


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _assert_exact(conversion: convert.Conversion, module: nn.Module) -> None:
    assert conversion.unused == []
    expected = module.state_dict()
    got = conversion.state_dict
    assert set(got) == set(expected), (
        sorted(set(got) - set(expected))[:10],
        sorted(set(expected) - set(got))[:10],
    )
    wrong = [(k, tuple(got[k].shape), tuple(v.shape)) for k, v in expected.items() if got[k].shape != v.shape]
    assert wrong == []


def test_manifest_counts_are_consistent() -> None:
    assert SD["num_tensors"] == len(SD["keys"]) == 1228
    assert CONTROLNET["num_tensors"] == len(CONTROLNET["keys"]) == 324


def test_unet(full_meta: ControlLDM) -> None:
    _assert_exact(convert.convert_unet(_meta_state_dict(SD), FULL), full_meta.unet)
    assert _num_params(full_meta.unet) == COUNTS["sd21.unet (model.diffusion_model)"] == 865_910_724


def test_vae(full_meta: ControlLDM) -> None:
    _assert_exact(convert.convert_vae(_meta_state_dict(SD), FULL), full_meta.vae.autoencoder)
    assert _num_params(full_meta.vae) == COUNTS["sd21.vae (first_stage_model)"] == 83_653_863


def test_text(full_meta: ControlLDM) -> None:
    sd = _meta_state_dict(SD)
    conversion = convert.convert_text(sd)
    _assert_exact(conversion, full_meta.text.model)
    # The checkpoint's count includes text_projection [1024,1024] and logit_scale [], which are not used.
    unused = (
        sd["cond_stage_model.model.text_projection"].numel()
        + sd["cond_stage_model.model.logit_scale"].numel()
    )
    assert _num_params(full_meta.text) + unused == COUNTS["sd21.clip_text (cond_stage_model)"] == 354_032_641
    assert len(full_meta.text.model.transformer.resblocks) == 24


def test_controlnet(full_meta: ControlLDM) -> None:
    _assert_exact(convert.convert_controlnet(_meta_state_dict(CONTROLNET), FULL), full_meta.controlnet)
    assert _num_params(full_meta.controlnet) == COUNTS["controlnet"] == 363_153_280
    assert full_meta.num_control == 13
    assert full_meta.controlnet.conv_in.in_channels == 8


def test_every_sd_key_is_used_once() -> None:
    """Each official key lands in exactly one module (or is one of the text keys the reference ignores)."""
    sd = _meta_state_dict(SD)
    parts = [convert.convert_unet(sd, FULL), convert.convert_vae(sd, FULL)]
    used = sum(len(p.state_dict) for p in parts) + len(convert.convert_text(sd).state_dict)
    assert used + len(convert.TEXT_IGNORED_KEYS) == len(sd)


def test_full_sizes_follow_sd21_base(full_meta: ControlLDM) -> None:
    unet_cfg = full_meta.unet.config
    assert list(unet_cfg.block_out_channels) == [320, 640, 1280, 1280]
    assert list(unet_cfg.attention_head_dim) == [5, 10, 20, 20]  # heads per block (64-wide heads)
    assert unet_cfg.cross_attention_dim == 1024 and unet_cfg.use_linear_projection
    assert unet_cfg.flip_sin_to_cos and unet_cfg.freq_shift == 0
    assert full_meta.controlnet.config.flip_sin_to_cos and full_meta.controlnet.config.freq_shift == 0
    assert list(full_meta.vae.autoencoder.config.block_out_channels) == [128, 256, 512, 512]
    assert full_meta.text.width == 1024


def test_tiny_config_matches_reference_tiny_configs() -> None:
    """The tiny preset is written in code; it must agree with the fixtures' tiny_configs.json."""
    from tests.model.reference import tiny_configs

    ref = tiny_configs()
    tiny = get_preset("tiny")
    ldm_cfg = convert.ldm_original_config(tiny)["model"]["params"]
    for ours, theirs in [
        (ldm_cfg["unet_config"]["params"], ref["unet_cfg"]),
        (ldm_cfg["control_stage_config"]["params"], ref["controlnet_cfg"]),
    ]:
        for key, value in ours.items():
            if key in theirs:
                assert theirs[key] == value, key
    ddconfig = ldm_cfg["first_stage_config"]["params"]["ddconfig"]
    assert ddconfig == {k: ref["vae_cfg"]["ddconfig"][k] for k in ddconfig}
    assert ldm_cfg["first_stage_config"]["params"]["embed_dim"] == ref["vae_cfg"]["embed_dim"]
    text = ref["clip_cfg"]["text_cfg"]
    assert (tiny.text.width, tiny.text.heads, tiny.text.layers) == (
        text["width"],
        text["heads"],
        text["layers"],
    )
    assert (tiny.text.vocab_size, tiny.text.context_length) == (text["vocab_size"], text["context_length"])
    assert tiny.text.layer == ref["clip_cfg"]["layer"]
    assert tiny.latent_scale_factor == ref["latent_scale_factor"]
