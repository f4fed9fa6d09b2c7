"""The eleven `edm_*` solvers against upstream's EDMSampler runs (`edm_sampler_runs`), replaying its draws."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from model.cldm import Condition, ControlLDM
from model.errors import InvalidInputError
from model.sampling import SAMPLERS, EDMSampler, SamplerParams, make_sampler, sample
from model.sampling.edm_solvers import lms_coefficient
from model.schedule import make_diffusion
from tests.model.reference import load_fixture, replay_noise

RUNS, META = load_fixture("edm_sampler_runs")
EDM_NAMES = [name for name in SAMPLERS if name.startswith("edm_")]


def _conditions(group: str) -> tuple[torch.Tensor, Condition, Condition]:
    p = f"inputs.{group}."
    cond = Condition(RUNS[p + "cond.c_txt"], RUNS[p + "cond.c_img"])
    uncond = Condition(RUNS[p + "uncond.c_txt"], RUNS[p + "uncond.c_img"])
    return RUNS[p + "x_T"], cond, uncond


def _sampler(run: dict[str, Any]) -> EDMSampler:
    v = run["parameterization"] == "v"
    diffusion = make_diffusion(zero_snr=v, parameterization=run["parameterization"])
    sampler = make_sampler("edm_" + run["solver"], diffusion, SamplerParams(**run["hparams"]))
    assert isinstance(sampler, EDMSampler)
    return sampler


@pytest.mark.parametrize("run", META["runs"], ids=lambda run: run["name"])
def test_run_matches_upstream(run: dict[str, Any], tiny_cldm: ControlLDM, tiny_cldm_v21: ControlLDM) -> None:
    prefix = run["name"] + "."
    model = tiny_cldm_v21 if run["parameterization"] == "v" else tiny_cldm
    x_T, cond, uncond = _conditions(run["inputs"])
    sampler = _sampler(run)
    model_t: list[int] = []
    scales: list[float] = []
    real_scale = sampler.cfg_scale

    def spy(x: torch.Tensor, t: torch.Tensor, c: Condition, strength: float) -> torch.Tensor:
        model_t.append(int(t[0]))
        return model(x, t, c, strength)

    def scale(cfg: float, t: float, rescale: bool) -> float:
        scales.append(real_scale(cfg, t, rescale))
        return scales[-1]

    sampler.cfg_scale = scale  # type: ignore[method-assign]
    draws = list(RUNS[prefix + "noise"]) if prefix + "noise" in RUNS else []
    assert len(draws) == len(run["noise_draws"])
    with replay_noise(draws) as unused:
        z = sample(
            spy, sampler, x_T, cond, uncond, run["steps"], run["cfg"], 1.0, rescale_cfg=run["rescale_cfg"]
        )
    assert not unused, "every upstream draw (churn, ancestral, Brownian-tree stand-in) is made, in order"
    assert torch.equal(sampler.sigmas, RUNS[prefix + "sigmas"])
    assert torch.equal(sampler.sigma_timesteps, RUNS[prefix + "timesteps"])
    # one batched CFG forward per denoiser call, at the snapped timestep upstream's UNet got
    assert model_t == RUNS[prefix + "calls.t"].tolist()
    np.testing.assert_allclose(scales, RUNS[prefix + "calls.cfg_scale"].numpy(), rtol=1e-6)
    ref = RUNS[prefix + "z_final"]
    err = (z - ref).abs().max().item()
    assert err <= run["suggested_rtol"] * ref.abs().max().item(), f"{run['name']}: {err:.3g}"


def test_lms_coefficients_match_upstream() -> None:
    for run in META["runs"]:
        if run["lms_coeffs"] is None:
            continue
        sigmas = RUNS[run["name"] + ".sigmas"].double().numpy()
        for c in run["lms_coeffs"]:
            ours = lms_coefficient(c["order"], sigmas, c["step"], c["j"])
            assert ours == pytest.approx(c["coeff"], rel=1e-6), (run["name"], c)


def test_registry_passes_upstreams_hyper_parameters() -> None:
    assert len(EDM_NAMES) == 11
    for run in META["runs"]:
        assert SAMPLERS["edm_" + run["solver"]].hparams == tuple(run["hparams_passed_to_solver"])


def test_defaults_are_inference_py_defaults() -> None:
    defaults = SamplerParams()
    for run in META["runs"]:
        if run["name"].startswith("eps_"):
            assert SamplerParams(**run["hparams"]) == defaults


@pytest.mark.parametrize(
    "bad",
    [
        {"s_churn": -1.0},
        {"s_noise": -0.1},
        {"eta": float("nan")},
        {"s_tmin": 5.0, "s_tmax": 1.0},
        {"order": 0},
        {"order": 5},
        {"order": 1.5},
        {"eta": True},
    ],
)
def test_bad_hyper_parameters_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        SamplerParams(**bad)


def test_schedule_starts_at_sigma_1e4_for_every_schedule() -> None:
    for diffusion in (make_diffusion(), make_diffusion(zero_snr=True, parameterization="v")):
        sampler = make_sampler("edm_euler", diffusion)
        sampler.set_timesteps(7)
        assert isinstance(sampler, EDMSampler)
        assert sampler.timesteps == [999, 856, 713, 570, 428, 285, 142]
        assert sampler.sigmas[0] == pytest.approx(1e4) and sampler.sigmas[-1] == 0
        assert torch.isfinite(torch.stack([sampler.x0_grad_rescale(i) for i in range(7)])).all()


def test_steps_run_in_order() -> None:
    sampler = make_sampler("edm_dpm++_2m", make_diffusion())
    sampler.set_timesteps(4)
    with pytest.raises(RuntimeError, match="in order"):
        sampler.step(1, torch.zeros(1, 4, 2, 2), None)  # type: ignore[arg-type]
