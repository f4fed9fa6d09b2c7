"""ControlLDM forward against the reference fixtures `cldm_eps` and `cldm_eps_scaled`."""

from __future__ import annotations

import pytest
import torch

from model.cldm import Condition, ControlLDM
from model.errors import InvalidInputError
from tests.model.reference import assert_forward_close, load_fixture

EPS, EPS_META = load_fixture("cldm_eps")
SCALED, _ = load_fixture("cldm_eps_scaled")
CASES = [c["case"] for c in EPS_META["cases"]]


def _inputs(
    prefix: str, tensors: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, Condition, float]:
    cond = Condition(tensors[prefix + "c_txt"], tensors[prefix + "c_img"])
    return tensors[prefix + "x_noisy"], tensors[prefix + "t"], cond, float(tensors[prefix + "control_scale"])


@pytest.mark.parametrize("case", CASES)
def test_eps_matches_reference(tiny_cldm: ControlLDM, case: int) -> None:
    x, t, cond, scale = _inputs(f"case{case}.", EPS)
    assert t.dtype == torch.int64
    with torch.no_grad():
        eps = tiny_cldm(x, t, cond, scale)
    assert_forward_close(eps, EPS[f"case{case}.eps"], f"case{case} (t={t.tolist()}, scale={scale})")


def test_per_residual_scales_equal_uniform_strength(tiny_cldm: ControlLDM) -> None:
    x, t, cond, scale = _inputs("case1.", EPS)
    with torch.no_grad():
        eps = tiny_cldm(x, t, cond, [scale] * 7)
    assert_forward_close(eps, EPS["case1.eps"], "list of 7 scales")
    with pytest.raises(InvalidInputError, match="7 control scales"):
        tiny_cldm(x, t, cond, [scale] * 13)


def test_controlnet_residuals_case0(tiny_cldm: ControlLDM) -> None:
    x, t, cond, _ = _inputs("case0.", EPS)
    with torch.no_grad():
        residuals = tiny_cldm.controlnet_residuals(x, t, cond)
    assert len(residuals) == EPS_META["n_control_outputs"] == tiny_cldm.num_control == 7
    for i, r in enumerate(residuals):
        assert_forward_close(r, EPS[f"case0.controlnet_out.{i:02d}"], f"controlnet_out.{i:02d}")


def test_unet_without_control(tiny_cldm: ControlLDM) -> None:
    x, t, cond, _ = _inputs("case0.", EPS)
    with torch.no_grad():
        out = tiny_cldm.unet_forward(x, t, cond.c_txt)
    assert_forward_close(out, EPS["case0.unet_no_control"], "unet_no_control")


def test_raw_and_scaled_residuals(tiny_cldm: ControlLDM) -> None:
    x, t, cond, scale = _inputs("", SCALED)
    assert scale == 0.5
    with torch.no_grad():
        raw = tiny_cldm.controlnet_residuals(x, t, cond)
        scaled = tiny_cldm.controlnet_residuals(x, t, cond, scale)
        eps = tiny_cldm(x, t, cond, residuals=scaled)
    for i in range(7):
        assert_forward_close(raw[i], SCALED[f"controlnet_raw.{i:02d}"], f"controlnet_raw.{i:02d}")
        assert_forward_close(scaled[i], SCALED[f"controlnet_scaled.{i:02d}"], f"controlnet_scaled.{i:02d}")
    assert_forward_close(eps, SCALED["eps"], "eps from scaled residuals")


def test_zero_strength_is_plain_unet(tiny_cldm: ControlLDM) -> None:
    x, t, cond, _ = _inputs("case0.", EPS)
    with torch.no_grad():
        eps = tiny_cldm(x, t, cond, 0.0)
    assert_forward_close(eps, EPS["case0.unet_no_control"], "strength 0")


def test_batched_cond_uncond_matches_separate(tiny_cldm: ControlLDM) -> None:
    """The sampler runs cond and uncond in one forward; rows must not leak into each other."""
    x, t, cond, scale = _inputs("case4.", EPS)
    with torch.no_grad():
        rows = [
            tiny_cldm(
                x[i : i + 1], t[i : i + 1], Condition(cond.c_txt[i : i + 1], cond.c_img[i : i + 1]), scale
            )
            for i in range(2)
        ]
        both = tiny_cldm(x, t, cond, scale)
    torch.testing.assert_close(both, torch.cat(rows), atol=1e-5, rtol=1e-5)


def test_scalar_timestep_broadcasts(tiny_cldm: ControlLDM) -> None:
    x, t, cond, scale = _inputs("case0.", EPS)
    with torch.no_grad():
        eps = tiny_cldm(x, t[0], cond, scale)
    assert_forward_close(eps, EPS["case0.eps"], "0-d t")


def test_controlnet_has_no_hint_encoder(tiny_cldm: ControlLDM) -> None:
    keys = tiny_cldm.controlnet.state_dict().keys()
    assert not any(k.startswith("controlnet_cond_embedding") for k in keys)
    assert tiny_cldm.controlnet.conv_in.in_channels == 8


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward(dtype: torch.dtype) -> None:
    """Weights and inputs in half precision: the output keeps the dtype and stays near the fp32 reference."""
    from model.loading import load_reference_tiny
    from tests.model.reference import TINY_DIR

    ldm = load_reference_tiny(TINY_DIR, dtype=dtype)
    x, t, cond, scale = _inputs("case4.", EPS)
    with torch.no_grad():
        eps = ldm(x, t, cond, scale)
    assert eps.dtype == dtype
    ref = EPS["case4.eps"]
    err = (eps.float() - ref).abs().max().item()
    assert err < 0.05 * (1 + ref.abs().max().item()), err
