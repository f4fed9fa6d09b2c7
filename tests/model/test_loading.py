"""Loading: official files (wrappers, prefixes, strict errors), the converted safetensors cache and the
tiny random init."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model.cldm import Condition, ControlLDM
from model.errors import CheckpointMismatchError, ModelError
from model.loading import (
    TINY_CONTROLNET_FILE,
    TINY_SD_FILES,
    init_tiny_random,
    load_converted,
    load_official,
    read_converted_metadata,
    save_converted,
)
from tests.model.reference import TINY_DIR, load_fixture

EPS, _ = load_fixture("cldm_eps")


def _official_tiny() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    sd: dict[str, torch.Tensor] = {}
    for name in TINY_SD_FILES:
        sd.update(load_file(TINY_DIR / name))
    return sd, load_file(TINY_DIR / TINY_CONTROLNET_FILE)


def _eps(ldm: ControlLDM, case: int = 4) -> torch.Tensor:
    p = f"case{case}."
    with torch.no_grad():
        return ldm(EPS[p + "x_noisy"], EPS[p + "t"], Condition(EPS[p + "c_txt"], EPS[p + "c_img"]), 0.5)


def _write(tmp_path: Path, sd: dict, cn: dict) -> tuple[Path, Path]:
    sd_path, cn_path = tmp_path / "sd.ckpt", tmp_path / "cn.pth"
    torch.save(sd, sd_path)
    torch.save(cn, cn_path)
    return sd_path, cn_path


def test_lightning_wrapper_and_module_prefix(tmp_path: Path, tiny_cldm: ControlLDM) -> None:
    sd, cn = _official_tiny()
    sd["model_ema.decay"] = torch.tensor(0.999)  # other keys of a real SD checkpoint are ignored
    sd_path, cn_path = _write(
        tmp_path, {"state_dict": sd, "epoch": 3}, {f"module.{k}": v for k, v in cn.items()}
    )
    ldm = load_official(sd_path, cn_path, preset="tiny", diffusion="sd")
    assert ldm.parameterization == "eps"
    assert torch.equal(_eps(ldm), _eps(tiny_cldm))
    state, ref_state = ldm.state_dict(), tiny_cldm.state_dict()
    assert state.keys() == ref_state.keys()
    assert all(torch.equal(state[k], ref_state[k]) for k in state)


def test_v21_diffusion_and_dtype(tmp_path: Path) -> None:
    sd, cn = _official_tiny()
    ldm = load_official(*_write(tmp_path, sd, cn), preset="tiny", diffusion="v2.1", dtype=torch.bfloat16)
    assert ldm.parameterization == "v" and ldm.diffusion.zero_snr
    assert {p.dtype for p in ldm.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in ldm.parameters())
    assert ldm.text.model.attn_mask.dtype == torch.bfloat16 and not ldm.text.model.attn_mask.is_meta


def test_missing_controlnet_key_is_named(tmp_path: Path) -> None:
    sd, cn = _official_tiny()
    del cn["zero_convs.3.0.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"controlnet_down_blocks\.3\.weight") as info:
        load_official(*_write(tmp_path, sd, cn), preset="tiny")
    assert info.value.missing == ["controlnet_down_blocks.3.weight"]
    assert "cn.pth" in str(info.value)


def test_unexpected_keys_are_named_in_the_official_layout(tmp_path: Path) -> None:
    sd, cn = _official_tiny()
    sd["model.diffusion_model.input_blocks.1.9.weight"] = torch.zeros(3)
    with pytest.raises(
        CheckpointMismatchError, match=r"model\.diffusion_model\.input_blocks\.1\.9\.weight"
    ) as info:
        load_official(*_write(tmp_path, sd, cn), preset="tiny")
    assert "SD UNet" in str(info.value) and "unexpected" in str(info.value)

    sd, cn = _official_tiny()
    cn["input_hint_block.0.weight"] = torch.zeros(16, 4, 3, 3)
    with pytest.raises(CheckpointMismatchError, match=r"input_hint_block\.0\.weight"):
        load_official(*_write(tmp_path, sd, cn), preset="tiny")


def test_text_tower_is_strict_except_ignored_keys(tmp_path: Path) -> None:
    sd, cn = _official_tiny()
    sd["cond_stage_model.model.visual.proj"] = torch.zeros(2, 2)  # ignored, like the reference
    load_official(*_write(tmp_path, sd, cn), preset="tiny")
    sd["cond_stage_model.model.transformer.resblocks.3.ln_1.weight"] = torch.zeros(32)
    with pytest.raises(CheckpointMismatchError, match=r"transformer\.resblocks\.3\.ln_1\.weight"):
        load_official(*_write(tmp_path, sd, cn), preset="tiny")


def test_shape_mismatch_is_reported(tmp_path: Path) -> None:
    sd, cn = _official_tiny()
    sd["first_stage_model.encoder.conv_in.weight"] = torch.zeros(32, 4, 3, 3)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"first_stage_model\.encoder\.conv_in\.weight .*: \[32, 4, 3, 3\] vs \[32, 3, 3, 3\]",
    ):
        load_official(*_write(tmp_path, sd, cn), preset="tiny")


def test_full_preset_rejects_tiny_weights(tmp_path: Path) -> None:
    sd, cn = _official_tiny()
    with pytest.raises(CheckpointMismatchError, match=r"SD UNet .*\n.*missing keys") as info:
        load_official(*_write(tmp_path, sd, cn), preset="full")
    assert "up_blocks.3.resnets.0.conv1.weight" in info.value.missing
    assert any(k.startswith("model.diffusion_model.") for k, _, _ in info.value.shape_mismatches)


def test_not_a_controlnet(tmp_path: Path) -> None:
    sd, _ = _official_tiny()
    with pytest.raises(CheckpointMismatchError, match=r"time_embed\.0\.weight"):
        load_official(*_write(tmp_path, sd, {"foo": torch.zeros(1)}), preset="tiny")


def test_safetensors_round_trip(tmp_path: Path, tiny_cldm: ControlLDM) -> None:
    path = save_converted(tiny_cldm, tmp_path / "cache" / "tiny.safetensors")
    cfg, diffusion = read_converted_metadata(path)
    assert cfg == tiny_cldm.cfg and diffusion == tiny_cldm.diffusion
    loaded = load_converted(path)
    assert torch.equal(_eps(loaded), _eps(tiny_cldm))
    assert torch.equal(loaded.text.encode("a photo"), tiny_cldm.text.encode("a photo"))
    with torch.no_grad():
        z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        assert torch.equal(loaded.vae.decode(z), tiny_cldm.vae.decode(z))
    half = load_converted(path, dtype=torch.float16)
    assert half.unet.dtype == torch.float16


def test_load_converted_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelError, match="not a converted ControlLDM cache"):
        load_converted(path)


def test_load_converted_is_strict(tmp_path: Path, tiny_cldm: ControlLDM) -> None:
    path = save_converted(tiny_cldm, tmp_path / "tiny.safetensors")
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    del tensors["unet.conv_out.bias"]
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointMismatchError, match=r"unet\.conv_out\.bias"):
        load_converted(path)


def test_missing_file() -> None:
    with pytest.raises(ModelError, match="not found"):
        load_official("/nonexistent/sd.ckpt", "/nonexistent/cn.pth", preset="tiny")


def test_tiny_random_is_deterministic_and_non_trivial(tiny_cldm_random: ControlLDM) -> None:
    again = init_tiny_random(seed=0)
    other = init_tiny_random(seed=1)
    a, b, c = tiny_cldm_random.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["unet.conv_in.weight"], c["unet.conv_in.weight"])
    assert "not a restoration model" in tiny_cldm_random.cfg.labels
    # zero convs are redrawn, norm scales are in [0.75, 1.25], biases are small
    zero_conv = a["controlnet.controlnet_down_blocks.0.weight"]
    assert zero_conv.abs().max() > 0
    fan_in = zero_conv[0].numel()
    assert 0.5 < zero_conv.std().item() * fan_in**0.5 < 1.5
    norm = a["unet.down_blocks.0.resnets.0.norm1.weight"]
    assert norm.min() >= 0.75 and norm.max() <= 1.25 and norm.std() > 0.05
    ln = a["text.model.ln_final.weight"]
    assert ln.min() >= 0.75 and ln.max() <= 1.25
    bias = a["unet.conv_in.bias"]
    assert bias.abs().max() < 0.3 and bias.std() > 0.01
    eps = _eps(tiny_cldm_random)
    assert torch.isfinite(eps).all() and eps.std() > 0.1
    assert torch.equal(eps, _eps(again))
