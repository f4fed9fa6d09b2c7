"""Latent image guidance against the reference: single updates (`guidance_apply`) and guided runs."""

from __future__ import annotations

import pytest
import torch

from model.cldm import Condition, ControlLDM
from model.errors import InvalidInputError
from model.guidance import Guidance, edge_weight
from model.sampling import SpacedSampler, sample
from model.schedule import make_diffusion
from tests.model.reference import assert_run_close, load_fixture, replay_noise, stored_draws

APPLY, APPLY_META = load_fixture("guidance_apply")
RUNS, RUNS_META = load_fixture("guidance_sampler_runs")


def _guidance(vae, target: torch.Tensor, case: dict) -> Guidance:
    return Guidance(
        vae,
        target,
        case["scale"],
        loss=case["loss"],
        space=case["space"],
        t_start=case["t_start"],
        t_stop=case["t_stop"],
        repeat=case["repeat"],
    )


@pytest.fixture(scope="module")
def apply_step() -> tuple[SpacedSampler, int]:
    """The fixture's step: spaced index 30 of 50 (t=612) is loop position 19."""
    sampler = SpacedSampler(make_diffusion())
    sampler.set_timesteps(APPLY_META["sampler_steps"])
    index = sampler.num_steps - 1 - int(APPLY["index"])
    assert sampler.timesteps[index] == int(APPLY["t"])
    return sampler, index


def test_grad_rescale_is_inverse_posterior_coef1(apply_step: tuple[SpacedSampler, int]) -> None:
    sampler, index = apply_step
    assert torch.equal(sampler.x0_grad_rescale(index), APPLY["grad_rescale"])


APPLIED = [c for c in APPLY_META["cases"] if "raises" not in c]


@pytest.mark.parametrize("case", APPLIED, ids=lambda c: c["name"])
def test_guidance_update_matches_reference(
    case: dict, tiny_cldm: ControlLDM, apply_step: tuple[SpacedSampler, int]
) -> None:
    sampler, index = apply_step
    guidance = _guidance(tiny_cldm.vae, APPLY["target"], case)
    assert guidance.internal_scale == pytest.approx(case["internal_scale"])
    assert guidance.active(int(APPLY["t"]))
    draws = [APPLY[f"{case['name']}.target_posterior_noise.{j}"] for j in range(case["noise_draws"])]
    with replay_noise(draws) as unused:
        out = guidance(APPLY["pred_x0"], sampler.x0_grad_rescale(index))
    assert not unused, "latent guidance draws a fresh posterior sample per repeat"
    assert_run_close(out, APPLY[case["name"] + ".pred_x0_out"], case["name"])
    assert guidance.last_loss is not None
    g_loss = APPLY[case["name"] + ".g_loss"]
    torch.testing.assert_close(guidance.last_loss.double(), g_loss, rtol=1e-4, atol=0)


def test_weighted_mse_in_latent_space_is_rejected(tiny_cldm: ControlLDM) -> None:
    (case,) = [c for c in APPLY_META["cases"] if "raises" in c]
    with pytest.raises(InvalidInputError, match="rgb"):
        _guidance(tiny_cldm.vae, APPLY["target"], case)


def test_window_is_strict(tiny_cldm: ControlLDM) -> None:
    guidance = Guidance(tiny_cldm.vae, APPLY["target"], 0.1, space="rgb", t_start=800, t_stop=200)
    assert guidance.active(500) and guidance.active(798) and guidance.active(200)
    assert not guidance.active(799)  # t+1 == t_start
    assert not guidance.active(199)  # t+1 == t_stop
    assert not Guidance(tiny_cldm.vae, APPLY["target"], 0.0, space="rgb").active(500)


def test_guidance_runs_under_inference_mode(tiny_cldm: ControlLDM) -> None:
    """A caller may sample under torch.inference_mode; guidance still gets its gradient."""
    with torch.inference_mode():
        guidance = Guidance(tiny_cldm.vae, APPLY["target"], 0.5)
        out = guidance(APPLY["pred_x0"], torch.tensor(2.0))
    assert not torch.equal(out, APPLY["pred_x0"]) and torch.isfinite(out).all()


def test_edge_weight_is_low_on_edges() -> None:
    flat = torch.zeros(1, 3, 8, 8)
    step = flat.clone()
    step[..., 4:] = 1.0
    assert torch.equal(edge_weight(flat), torch.ones(1, 1, 8, 8))
    w = edge_weight(step)
    assert w[..., 3:5].max() < 0.01 and w[..., :2].min() == 1.0


@pytest.mark.parametrize("run", RUNS_META["runs"], ids=lambda run: run["name"])
def test_guided_run_matches_reference(run: dict, tiny_cldm: ControlLDM) -> None:
    prefix = run["name"] + "."
    assert torch.equal(RUNS[prefix + "guidance_target"], RUNS[prefix + "cond_img_01"] * 2 - 1)
    guidance = _guidance(tiny_cldm.vae, RUNS[prefix + "guidance_target"], run)
    cond = Condition(RUNS[prefix + "cond.c_txt"], RUNS[prefix + "cond.c_img"])
    uncond = Condition(RUNS[prefix + "uncond.c_txt"], RUNS[prefix + "uncond.c_img"])
    draws = stored_draws(RUNS, prefix)
    assert len(draws) == len(run["noise_draw_kinds"])
    with replay_noise(draws) as unused:
        z = sample(
            tiny_cldm,
            SpacedSampler(make_diffusion()),
            RUNS[prefix + "x_T"],
            cond,
            uncond,
            run["steps"],
            run["cfg"],
            run["strength"],
            guidance=guidance,
        )
    assert not unused
    assert_run_close(z, RUNS[prefix + "z_final"], run["name"])
