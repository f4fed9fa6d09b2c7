"""Presets and diffusion settings: values that decide the numbers, and the JSON round trip of the cache."""

from __future__ import annotations

import json

import pytest

from model.config import (
    LATENT_SCALE_FACTOR,
    PRESETS,
    Stage2Config,
    get_diffusion,
    get_preset,
    stage1_configs,
)
from tests.model.reference import tiny_configs


def test_diffusion_settings_match_reference() -> None:
    ref = tiny_configs()
    sd, v21 = get_diffusion("sd"), get_diffusion("v2.1")
    assert (sd.linear_start, sd.linear_end, sd.timesteps) == (0.00085, 0.012, 1000)
    assert sd.parameterization == "eps" and not sd.zero_snr
    for ours, key in ((sd, "diffusion_sd"), (v21, "diffusion_v2.1")):
        theirs = ref[key]
        assert (ours.linear_start, ours.linear_end, ours.timesteps) == (
            theirs["linear_start"],
            theirs["linear_end"],
            theirs["timesteps"],
        )
    assert v21.zero_snr is True and v21.parameterization == ref["diffusion_v2.1"]["parameterization"] == "v"


@pytest.mark.parametrize(("version", "parameterization"), [("v1", "eps"), ("v2", "eps"), ("v2.1", "v")])
def test_release_names_select_the_diffusion(version: str, parameterization: str) -> None:
    assert get_diffusion(version).parameterization == parameterization


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown diffusion"):
        get_diffusion("v3")


def test_full_preset_is_sd21_base() -> None:
    full = get_preset("full")
    assert full.unet.model_channels == 320 and full.unet.channel_mult == (1, 2, 4, 4)
    assert full.unet.attention_resolutions == (4, 2, 1) and full.unet.num_head_channels == 64
    assert full.unet.context_dim == 1024 and full.unet.use_linear_in_transformer
    assert full.unet.num_input_blocks == 12 and get_preset("tiny").unet.num_input_blocks == 6
    assert (full.vae.ch, full.vae.ch_mult, full.vae.num_res_blocks) == (128, (1, 2, 4, 4), 2)
    assert (full.text.width, full.text.heads, full.text.layers, full.text.layer) == (
        1024,
        16,
        24,
        "penultimate",
    )
    assert full.latent_scale_factor == LATENT_SCALE_FACTOR == 0.18215
    assert "not a restoration model" in get_preset("tiny").labels


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name: str) -> None:
    cfg = get_preset(name)
    assert Stage2Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_stage1_configs_come_from_stage1_module() -> None:
    from model.stage1 import STAGE1_CONFIGS

    assert stage1_configs("tiny") is STAGE1_CONFIGS["tiny"]
    with pytest.raises(ValueError, match="unknown preset"):
        stage1_configs("huge")
