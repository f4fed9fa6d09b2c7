"""model/fidelity.py: the public knob maps monotonically to guidance, and with the tiny model a higher
fidelity pulls the result towards the stage-1 latent."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch

import model.pipeline as pipeline_mod
from model.cldm import ControlLDM
from model.errors import InvalidInputError
from model.fidelity import fidelity_to_guidance, guidance_scale
from model.guidance import INTERNAL_SCALE_FACTOR
from model.options import RestoreOptions
from model.pipeline import DiffBIRPipeline
from model.sampling import make_sampler, max_grad_rescale
from model.schedule import make_diffusion
from model.stage1 import build_stage1

SHAPE = (4, 64, 64)


def test_zero_fidelity_means_no_guidance() -> None:
    assert fidelity_to_guidance(0.0, SHAPE, 61.0) is None


def test_mapping_is_monotonic_and_linear() -> None:
    values = np.linspace(0, 1, 21)
    scales = [guidance_scale(f, SHAPE, 61.0) for f in values]
    assert all(b > a for a, b in itertools.pairwise(scales))
    np.testing.assert_allclose(scales, values * scales[-1], rtol=1e-12)


def test_strongest_step_moves_x0_by_the_fidelity() -> None:
    """lambda_max = 6000 * s * max_g / (C*H*W) must equal f (see the module docstring)."""
    for f in (0.1, 0.5, 1.0):
        for shape in ((4, 8, 8), (4, 64, 96)):
            s = guidance_scale(f, shape, 43.0)
            assert 2 * INTERNAL_SCALE_FACTOR * s * 43.0 / np.prod(shape) == pytest.approx(f)
    settings = fidelity_to_guidance(0.7, SHAPE, 10.0)
    assert settings is not None and settings.space == "latent" and settings.loss == "mse"
    assert (settings.t_start, settings.t_stop, settings.repeat) == (1001, -1, 1)


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan"), "high"])
def test_out_of_range_fidelity_is_refused(bad: Any) -> None:
    with pytest.raises(InvalidInputError, match="fidelity"):
        guidance_scale(bad, SHAPE, 10.0)


@pytest.mark.parametrize("sampler", ["spaced", "ddim", "dpmpp"])
def test_max_grad_rescale_is_finite_for_every_sampler(sampler: str) -> None:
    for diffusion in (make_diffusion(), make_diffusion(zero_snr=True, parameterization="v")):
        value = max_grad_rescale(make_sampler(sampler, diffusion), 10)
        assert np.isfinite(value) and value >= 1.0


def test_higher_fidelity_ends_closer_to_the_stage1_latent(
    tiny_cldm: ControlLDM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guidance pulls the LATENT towards the stage-1 latent, so that is where we measure: the random tiny VAE
    cannot reconstruct images, so pixel distances would measure the decoder, not the guidance."""
    pipe = DiffBIRPipeline(
        {"sr": tiny_cldm}, {"sr": build_stage1("swinir", preset="tiny")}, device="cpu", min_short_edge=0
    )
    captured: dict[str, torch.Tensor] = {}
    real_sample = pipeline_mod.sample

    def spy(
        model: Any, sampler: Any, x_T: torch.Tensor, cond: Any, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        z = real_sample(model, sampler, x_T, cond, *args, **kwargs)
        captured["distance"] = (z - cond.c_img).pow(2).mean()
        return z

    monkeypatch.setattr(pipeline_mod, "sample", spy)
    cond = torch.nn.functional.avg_pool2d(
        torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), 5, 1, 2, count_include_pad=False
    )
    means = []
    for fidelity in (0.0, 0.5, 1.0):
        distances = []
        for seed in range(3):
            options = RestoreOptions(steps=6, fidelity=fidelity, cfg_scale=1.0)
            pipe.stage2(cond, options, [torch.Generator().manual_seed(seed)])
            distances.append(captured["distance"].item())
        means.append(float(np.mean(distances)))
    assert means[0] > means[1] > means[2], means
    assert means[2] < 0.25 * means[0], means
