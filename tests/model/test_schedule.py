"""The schedule must reproduce the reference's stored buffers bit for bit (they decide every sampler run)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.errors import InvalidInputError
from model.schedule import SpacedSchedule, make_diffusion, space_timesteps
from tests.model.reference import load_fixture

TENSORS, META = load_fixture("schedule")
KINDS = {"sd": False, "zsnr": True}


def _diffusion(kind: str):
    return make_diffusion(zero_snr=KINDS[kind], parameterization="v" if KINDS[kind] else "eps")


def test_meta_matches_our_constants() -> None:
    assert META["sd"] == {"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000}
    assert META["zsnr"]["zero_snr"] is True and META["zsnr"]["parameterization"] == "v"


@pytest.mark.parametrize("kind", ["sd", "zsnr"])
def test_training_schedule_bit_exact(kind: str) -> None:
    """Bit for bit, but for the zero-SNR rescale's float64 arrays: its sqrt runs in MKL's vector maths, whose
    last bits follow the CPU's code path (AVX-512 and AVX2 paths each move a few of the 1000 entries by an
    ulp, and `1 - alpha` near alpha = 0 magnifies that in the betas). The float32 buffers every sampler
    reads from stay bit-exact."""
    diffusion = _diffusion(kind)
    prefix = f"diffusion_{kind}."
    ref_betas = TENSORS[prefix + "betas"].numpy()
    ref_cumprod = TENSORS[prefix + "alphas_cumprod"].numpy()
    if KINDS[kind]:
        np.testing.assert_allclose(diffusion.betas, ref_betas, rtol=1e-12, atol=0)
        np.testing.assert_array_max_ulp(diffusion.alphas_cumprod, ref_cumprod, maxulp=16)
    else:
        assert np.array_equal(diffusion.betas, ref_betas)
        assert np.array_equal(diffusion.alphas_cumprod, ref_cumprod)
    assert torch.equal(diffusion.sqrt_alphas_cumprod, TENSORS[prefix + "sqrt_alphas_cumprod"])
    ref_sqrt_1m = TENSORS[prefix + "sqrt_one_minus_alphas_cumprod"]
    assert torch.equal(diffusion.sqrt_one_minus_alphas_cumprod, ref_sqrt_1m)
    assert diffusion.zero_snr == KINDS[kind]


@pytest.mark.parametrize("kind", ["sd", "zsnr"])
@pytest.mark.parametrize("steps", [50, 20, 10])
def test_spaced_buffers_bit_exact(kind: str, steps: int) -> None:
    spaced = _diffusion(kind).respace(steps)
    prefix = f"spaced_{kind}_{steps}."
    stored = {k[len(prefix) :] for k in TENSORS if k.startswith(prefix)}
    assert stored == {"timesteps", *SpacedSchedule.BUFFERS}
    assert spaced.timesteps.dtype == np.int32
    assert np.array_equal(spaced.timesteps, TENSORS[prefix + "timesteps"].numpy())
    for name in SpacedSchedule.BUFFERS:
        ours, ref = getattr(spaced, name), TENSORS[prefix + name]
        assert ours.dtype == torch.float32, name
        assert torch.equal(ours, ref), f"{prefix}{name}: max diff {(ours - ref).abs().max()}"
    log_var = spaced.posterior_log_variance_clipped
    assert log_var[0] == log_var[1]


def test_zero_snr_end_points() -> None:
    spaced = _diffusion("zsnr").respace(10)
    assert spaced.sqrt_alphas_cumprod[-1] == 0 and torch.isinf(spaced.sqrt_recip_alphas_cumprod[-1])
    assert spaced.sqrt_one_minus_alphas_cumprod[-1] == 1


def test_space_timesteps_rule() -> None:
    assert space_timesteps(1000, 5).tolist() == [0, 250, 500, 749, 999]  # round(749.25), round(999.0)
    assert space_timesteps(1000, 1).tolist() == [0]
    assert space_timesteps(1000, 1000).tolist() == list(range(1000))
    with pytest.raises(InvalidInputError):
        space_timesteps(1000, 0)


def test_q_sample() -> None:
    diffusion = _diffusion("sd")
    x0, noise = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 2.0)
    out = diffusion.q_sample(x0, 999, noise)
    expected = diffusion.sqrt_alphas_cumprod[999] + 2 * diffusion.sqrt_one_minus_alphas_cumprod[999]
    assert torch.allclose(out, expected.expand_as(out))


def test_zero_snr_requires_v() -> None:
    with pytest.raises(InvalidInputError):
        make_diffusion(zero_snr=True, parameterization="eps")


def test_one_step_schedule_is_usable() -> None:
    # The API accepts steps=1; its only step is index 0, whose noise is masked, so no entry [1] is needed.
    spaced = make_diffusion().respace(1)
    assert len(spaced.timesteps) == 1
    assert np.isfinite(np.asarray(spaced.posterior_mean_coef1)).all()
    assert np.isfinite(np.asarray(spaced.posterior_mean_coef2)).all()
