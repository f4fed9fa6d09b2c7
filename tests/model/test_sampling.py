"""The reference DDPM sampler, CFG, start point, noise augmentation and tiling against the fixtures."""

from __future__ import annotations

import pytest
import torch

from model.cldm import Condition, ControlLDM
from model.errors import CanceledError, InvalidInputError
from model.sampling import SpacedSampler, Tiling, augment_condition, sample, start_latent
from model.sampling.cfg import cfg_scale_at, guided_output
from model.sampling.tiled import tiled_denoiser
from model.schedule import make_diffusion
from model.tiling import tile_coords
from tests.model.reference import assert_forward_close, assert_run_close, load_fixture, replay_noise

RUNS, RUNS_META = load_fixture("sampler_runs")
UTILS, UTILS_META = load_fixture("utils")


def _conditions(tensors: dict[str, torch.Tensor], prefix: str) -> tuple[Condition, Condition]:
    cond = Condition(tensors[prefix + "cond.c_txt"], tensors[prefix + "cond.c_img"])
    uncond = Condition(tensors[prefix + "uncond.c_txt"], tensors[prefix + "uncond.c_img"])
    return cond, uncond


@pytest.mark.parametrize("run", RUNS_META["runs"], ids=lambda run: run["name"])
def test_sampler_run_matches_reference(run: dict, tiny_cldm: ControlLDM, tiny_cldm_v21: ControlLDM) -> None:
    prefix = run["name"] + "."
    zero_snr = run["beta"] == "zsnr"
    model = tiny_cldm_v21 if zero_snr else tiny_cldm
    assert model.parameterization == ("v" if zero_snr else "eps")
    sampler = SpacedSampler(make_diffusion(zero_snr=zero_snr, parameterization=model.parameterization))
    cond, uncond = _conditions(RUNS, prefix)
    tiling = Tiling(run["tile_size"], run["tile_stride"]) if run["tiled"] else None
    calls: list[tuple[str, int, int]] = []
    with replay_noise(list(RUNS[prefix + "noise"])) as unused:
        z = sample(
            model,
            sampler,
            RUNS[prefix + "x_T"],
            cond,
            uncond,
            run["steps"],
            run["cfg"],
            run["strength"],
            tiling=tiling,
            rescale_cfg=run["rescale_cfg"],
            progress=lambda *a: calls.append(a),
        )
    assert not unused, "the reference drew noise at every step, the last one included"
    assert sampler.timesteps == RUNS[prefix + "timesteps_desc"].tolist()
    assert calls == [("sampler", i + 1, run["steps"]) for i in range(run["steps"])]
    assert_run_close(z, RUNS[prefix + "z_final"], run["name"])


def test_batched_cfg_equals_two_forwards(tiny_cldm: ControlLDM) -> None:
    cond, uncond = _conditions(RUNS, "eps_cfg4.")
    x, t = RUNS["eps_cfg4.x_T"], torch.tensor([500])
    with torch.no_grad():
        batched = guided_output(tiny_cldm, x, t, cond, uncond, 4.0, 1.0)
        c, u = tiny_cldm(x, t, cond, 1.0), tiny_cldm(x, t, uncond, 1.0)
        assert_forward_close(batched, u + 4.0 * (c - u), "batched CFG")
        assert torch.equal(guided_output(tiny_cldm, x, t, cond, uncond, 1.0, 1.0), c)


def test_rescaled_cfg_schedule() -> None:
    assert cfg_scale_at(4.0, 999, rescale=False) == 4.0
    assert cfg_scale_at(4.0, 0, rescale=True) == pytest.approx(5.0)  # 1 + s*(1-cos(pi))/2
    assert cfg_scale_at(4.0, 999, rescale=True) == pytest.approx(1.0, abs=1e-9)
    assert cfg_scale_at(1.0, 0, rescale=True) == 1.0  # only for s > 1


def test_tile_coords_match_reference() -> None:
    h, w = UTILS_META["tile_latent"]
    coords = tile_coords(h, w, UTILS_META["tile_size"], UTILS_META["tile_stride"])
    assert coords == [tuple(c) for c in UTILS["tiled.coords"].tolist()]


def test_tiled_denoiser_blends_like_reference() -> None:
    """The fixture's tile-dependent function (per-window statistics), blended over the 12x16 latent."""

    def fn(z: torch.Tensor, t: torch.Tensor, cond: Condition, strength: float) -> torch.Tensor:
        return z * z.mean(dim=(2, 3), keepdim=True) + z.std()

    x = UTILS["tiled.x"]
    cond = Condition(torch.zeros(1, 77, 4), torch.zeros_like(x))
    tiling = Tiling(UTILS_META["tile_size"], UTILS_META["tile_stride"])
    out = tiled_denoiser(fn, tiling)(x, torch.tensor([0]), cond, 1.0)
    assert_forward_close(out, UTILS["tiled.simple_out"], "tiled simple fn")


def test_tiled_cldm_eps_slices_condition(tiny_cldm: ControlLDM) -> None:
    cond = Condition(UTILS["tiled.cldm_c_txt"], UTILS["tiled.cldm_c_img"])
    x, t = UTILS["tiled.x"], UTILS["tiled.cldm_t"]
    tiling = Tiling(UTILS_META["tile_size"], UTILS_META["tile_stride"])
    with torch.no_grad():
        tiled = tiled_denoiser(tiny_cldm, tiling)(x, t, cond, 1.0)
        assert_forward_close(tiled, UTILS["tiled.cldm_eps"], "tiled")
        assert_forward_close(tiny_cldm(x, t, cond, 1.0), UTILS["tiled.cldm_eps_untiled"], "untiled")


def test_start_point_and_noise_augmentation_draw_order() -> None:
    """x_T is drawn first (from the condition BEFORE augmentation), then one draw for cond and uncond."""
    diffusion = make_diffusion()
    c_img = torch.randn(1, 4, 8, 8)
    first, second = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    with replay_noise([first, second]) as unused:
        x_t = start_latent(diffusion, c_img, "cond")
        aug = augment_condition(diffusion, c_img, 100)
    assert not unused
    torch.testing.assert_close(x_t, diffusion.q_sample(c_img, 999, first))
    torch.testing.assert_close(aug, diffusion.q_sample(c_img, 100, second))
    with replay_noise([first]) as unused:
        assert torch.equal(start_latent(diffusion, c_img, "noise"), first)
        assert augment_condition(diffusion, c_img, 0) is c_img  # no augmentation, no draw
    assert not unused
    with pytest.raises(InvalidInputError):
        start_latent(diffusion, c_img, "image")


def test_cancel_between_steps(tiny_cldm: ControlLDM) -> None:
    cond, uncond = _conditions(RUNS, "eps_cfg4.")
    steps_done: list[int] = []
    with pytest.raises(CanceledError):
        sample(
            tiny_cldm,
            SpacedSampler(make_diffusion()),
            RUNS["eps_cfg4.x_T"],
            cond,
            uncond,
            10,
            4.0,
            1.0,
            progress=lambda stage, i, n: steps_done.append(i),
            should_cancel=lambda: len(steps_done) >= 2,
        )
    assert steps_done == [1, 2]


def test_guidance_roundtrip_through_model_output() -> None:
    """x0 -> model output -> x0 is the identity in both parameterizations (guided x0 re-enters `step`)."""
    x, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for zero_snr, param in [(False, "eps"), (True, "v"), (False, "v")]:
        sampler = SpacedSampler(make_diffusion(zero_snr=zero_snr, parameterization=param))
        sampler.set_timesteps(10)
        for index in (0, 5, 9):
            x0 = sampler.predict_x0(out, index, x)
            back = sampler.predict_x0(sampler.model_output_from_x0(x0, index, x), index, x)
            torch.testing.assert_close(back, x0, rtol=1e-5, atol=1e-4)
