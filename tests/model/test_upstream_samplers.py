"""`ddim` and `dpm++_m2` against upstream's DDIMSampler / DPMSolverSampler runs (`upstream_ddim_dpms_runs`),
and the diffusers DPM-Solver++ kept as `dpmpp`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from model.cldm import Condition, ControlLDM
from model.sampling import DDIMSampler, DPMSolverSampler, make_sampler, sample
from model.schedule import make_diffusion
from tests.model.reference import load_fixture

RUNS, META = load_fixture("upstream_ddim_dpms_runs")


def _inputs(group: str) -> tuple[torch.Tensor, Condition, Condition]:
    p = f"inputs.{group}."
    cond = Condition(RUNS[p + "cond.c_txt"], RUNS[p + "cond.c_img"])
    uncond = Condition(RUNS[p + "uncond.c_txt"], RUNS[p + "uncond.c_img"])
    return RUNS[p + "x_T"], cond, uncond


@pytest.mark.parametrize("run", META["runs"], ids=lambda run: run["name"])
def test_run_matches_upstream(run: dict[str, Any], tiny_cldm: ControlLDM, tiny_cldm_v21: ControlLDM) -> None:
    prefix = run["name"] + "."
    v = run["parameterization"] == "v"
    model = tiny_cldm_v21 if v else tiny_cldm
    sampler = make_sampler(
        run["sampler"], make_diffusion(zero_snr=v, parameterization=run["parameterization"])
    )
    x_T, cond, uncond = _inputs(run["inputs"])
    calls: list[torch.Tensor] = []
    halves: list[torch.Tensor] = []
    scales: list[float] = []
    real_scale = sampler.cfg_scale

    def spy(x: torch.Tensor, t: torch.Tensor, c: Condition, strength: float) -> torch.Tensor:
        calls.append(t[0])
        halves.append(c.c_txt[:, 0, 0])
        return model(x, t, c, strength)

    def scale(cfg: float, t: float, rescale: bool) -> float:
        scales.append(real_scale(cfg, t, rescale))
        return scales[-1]

    sampler.cfg_scale = scale  # type: ignore[method-assign]
    z = sample(spy, sampler, x_T, cond, uncond, run["steps"], run["cfg"], 1.0, rescale_cfg=run["rescale_cfg"])
    assert len(calls) == run["n_model_calls"]
    # the model time each call got: int +1 timesteps (DDIM), float (t - 1/N) * 1000 (DPM-Solver)
    assert torch.equal(torch.stack(calls), RUNS[prefix + "calls.t"])
    np.testing.assert_allclose(scales, RUNS[prefix + "calls.cfg_scale"].numpy(), rtol=1e-6)
    first = cond if run["model_call_batch"] == "cond+uncond" else uncond
    assert torch.equal(halves[0][0], first.c_txt[0, 0, 0]), "CFG batch in upstream's order"
    ref = RUNS[prefix + "z_final"]
    err = (z - ref).abs().max().item()
    assert err <= run["suggested_rtol"] * ref.abs().max().item(), f"{run['name']}: {err:.3g}"


def test_ddim_schedule_matches_upstream() -> None:
    for run in (r for r in META["runs"] if r["sampler"] == "ddim"):
        prefix = run["name"] + "."
        v = run["parameterization"] == "v"
        sampler = make_sampler("ddim", make_diffusion(zero_snr=v, parameterization=run["parameterization"]))
        sampler.set_timesteps(run["steps"])
        assert sampler.timesteps == RUNS[prefix + "timesteps"].flip(0).tolist()
        assert sampler.num_steps == run["n_model_calls"]  # 6 steps take 7: range(0, 1000, 166)


def test_ddim_drops_the_step_past_the_schedule() -> None:
    """3, 9, 27, 37 or > 500 steps make upstream's last "+1" timestep 1000 (it raises IndexError there)."""
    sampler = make_sampler("ddim", make_diffusion())
    sampler.set_timesteps(3)
    assert sampler.timesteps == [667, 334, 1]
    sampler.set_timesteps(600)
    assert sampler.num_steps == 999 and sampler.timesteps[0] == 999


def test_ddim_v_is_finite_at_zero_snr() -> None:
    """At t=999 of a zero-SNR schedule alphas_cumprod is 0: upstream's x0 = (x - ...)/sqrt(ab) is NaN."""
    diffusion = make_diffusion(zero_snr=True, parameterization="v")
    sampler = make_sampler("ddim", diffusion)
    x_T = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = Condition(torch.zeros(1, 77, 8), torch.zeros(1, 4, 4, 4))

    def constant_v(x: torch.Tensor, t: torch.Tensor, c: Condition, strength: float) -> torch.Tensor:
        return torch.full_like(x, 0.5)

    z = sample(constant_v, sampler, x_T, cond, None, 400, 1.0, 1.0)
    assert sampler.timesteps[0] == 999
    assert torch.isfinite(z).all()


def test_dpm_solver_grid_matches_upstream() -> None:
    for run in (r for r in META["runs"] if r["sampler"] == "dpm++_m2"):
        v = run["parameterization"] == "v"
        sampler = make_sampler(
            "dpm++_m2", make_diffusion(zero_snr=v, parameterization=run["parameterization"])
        )
        assert isinstance(sampler, DPMSolverSampler)
        assert sampler.total_n == run["total_N"]  # zero-SNR: the last 14 steps (lambda < -5.1) are cut
        sampler.set_timesteps(run["steps"])
        assert torch.equal(sampler.grid, RUNS[run["name"] + ".timesteps"])
        assert torch.equal(torch.tensor(sampler.timesteps), RUNS[run["name"] + ".calls.t"])


def test_diffusers_dpmpp_starts_at_the_last_timestep() -> None:
    sampler = make_sampler("dpmpp", make_diffusion(zero_snr=True, parameterization="v"))
    sampler.set_timesteps(10)
    assert sampler.timesteps[0] == 999 and sampler.num_steps == 10
    assert sampler.timesteps == sorted(sampler.timesteps, reverse=True)
    assert torch.isfinite(sampler.x0_grad_rescale(0))


def test_upstream_samplers_are_classes_of_their_own() -> None:
    assert isinstance(make_sampler("ddim", make_diffusion()), DDIMSampler)
    assert not isinstance(make_sampler("dpmpp", make_diffusion()), DPMSolverSampler)
