"""DDIM and DPM-Solver++ (diffusers schedulers behind our sampler face): no reference numbers exist for them,
so these pin the properties the service relies on: determinism, guidance, tiling, hooks and batching."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from model.cldm import Condition, ControlLDM
from model.errors import CanceledError
from model.guidance import Guidance
from model.sampling import DDIMSampler, DPMSolverSampler, Tiling, make_sampler, sample
from model.schedule import make_diffusion
from tests.model.reference import load_fixture

TENSORS, _ = load_fixture("guidance_sampler_runs")
PREFIX = "guided_latent_mse."
STEPS = 3
FAST = ["ddim", "dpmpp"]
CFG = 1.0  # one forward per step: CFG itself is pinned in test_sampling.py (the batch test uses 4.0)


def _conditions(batch: int = 1) -> tuple[Condition, Condition]:
    def condition(kind: str) -> Condition:
        c_txt, c_img = TENSORS[PREFIX + kind + ".c_txt"], TENSORS[PREFIX + kind + ".c_img"]
        return Condition(c_txt.repeat(batch, 1, 1), c_img.repeat(batch, 1, 1, 1))

    return condition("cond"), condition("uncond")


def _run(model: ControlLDM, name: str, seed: int = 0, cfg: float = CFG, **kwargs) -> torch.Tensor:
    sampler = make_sampler(
        name, make_diffusion(parameterization=model.parameterization, zero_snr=model.parameterization == "v")
    )
    cond, uncond = _conditions()
    generator = torch.Generator().manual_seed(seed)
    x_t = torch.randn(1, 4, 8, 8, generator=generator)
    return sample(model, sampler, x_t, cond, uncond, STEPS, cfg, 1.0, generator=generator, **kwargs)


def _target_latent(model: ControlLDM) -> torch.Tensor:
    with torch.no_grad():
        return model.vae.encode(TENSORS[PREFIX + "guidance_target"])


@pytest.fixture(scope="module")
def free_run(tiny_cldm: ControlLDM) -> Callable[..., torch.Tensor]:
    """Unguided, untiled runs by (sampler, seed, cfg), computed once: several tests compare against them."""
    cache: dict[tuple[str, int, float], torch.Tensor] = {}

    def get(name: str, seed: int, cfg: float = CFG) -> torch.Tensor:
        if (name, seed, cfg) not in cache:
            cache[name, seed, cfg] = _run(tiny_cldm, name, seed, cfg)
        return cache[name, seed, cfg]

    return get


@pytest.mark.parametrize("name", FAST)
def test_deterministic_given_seed_and_hooks_called(
    name: str, tiny_cldm: ControlLDM, free_run: Callable[..., torch.Tensor]
) -> None:
    calls: list[tuple[str, int, int]] = []
    again = _run(tiny_cldm, name, 0, progress=lambda *a: calls.append(a))
    assert calls == [("sampler", i + 1, STEPS) for i in range(STEPS)]
    assert torch.isfinite(again).all()
    assert torch.equal(again, free_run(name, 0))
    assert not torch.allclose(free_run(name, 0), free_run(name, 1))


@pytest.mark.parametrize("name", FAST)
def test_cancel_hook(name: str, tiny_cldm: ControlLDM) -> None:
    calls: list[tuple[str, int, int]] = []
    with pytest.raises(CanceledError):
        _run(tiny_cldm, name, progress=lambda *a: calls.append(a), should_cancel=lambda: len(calls) >= 1)
    assert calls == [("sampler", 1, STEPS)]


@pytest.mark.parametrize("name", FAST)
def test_v_prediction_zero_snr_is_finite(name: str, tiny_cldm_v21: ControlLDM) -> None:
    z = _run(tiny_cldm_v21, name)
    assert torch.isfinite(z).all() and z.abs().max() < 1e3


@pytest.mark.parametrize("name", FAST)
def test_guidance_pulls_towards_target_as_scale_grows(
    name: str, tiny_cldm: ControlLDM, free_run: Callable[..., torch.Tensor]
) -> None:
    target = _target_latent(tiny_cldm)
    distances = [(free_run(name, 0) - target).pow(2).mean().item()]
    for scale in (0.002, 0.02):
        guidance = Guidance(tiny_cldm.vae, TENSORS[PREFIX + "guidance_target"], scale)
        z = _run(tiny_cldm, name, guidance=guidance)
        distances.append((z - target).pow(2).mean().item())
    assert distances[0] > distances[1] > distances[2], distances
    assert distances[2] < 0.05 * distances[0]


@pytest.mark.parametrize("name", FAST)
def test_whole_latent_tile_equals_untiled(name: str, tiny_cldm: ControlLDM) -> None:
    # rgb guidance (decoder in the loop) on the middle step only (t=666), to keep the test short
    target = TENSORS[PREFIX + "guidance_target"]
    guidance = Guidance(tiny_cldm.vae, target, 0.002, space="rgb", t_stop=400, t_start=700)
    plain = _run(tiny_cldm, name, guidance=guidance)
    tiled = _run(tiny_cldm, name, guidance=guidance, tiling=Tiling(tile=8, stride=8))
    torch.testing.assert_close(tiled, plain, rtol=1e-4, atol=1e-4 * plain.abs().max().item())


def test_tiled_guidance_per_window_reduces_distance(
    tiny_cldm: ControlLDM, free_run: Callable[..., torch.Tensor]
) -> None:
    """Four overlapping 6x6 windows over the 8x8 latent, each guided towards its own slice of the target."""
    target = _target_latent(tiny_cldm)
    tiling = Tiling(tile=6, stride=2)
    free = free_run("ddim", 0)
    guidance = Guidance(tiny_cldm.vae, TENSORS[PREFIX + "guidance_target"], 0.005)
    guided = _run(tiny_cldm, "ddim", tiling=tiling, guidance=guidance)
    assert guidance.last_loss is not None and guidance.last_loss.ndim == 0
    assert (guided - target).pow(2).mean() < 0.1 * (free - target).pow(2).mean()


@pytest.mark.parametrize("name", ["spaced", "dpmpp"])
def test_batch_with_per_sample_generators_matches_single_runs(
    name: str, tiny_cldm: ControlLDM, free_run: Callable[..., torch.Tensor]
) -> None:
    """A micro-batch of two jobs gives each job what it would get alone with its own seed."""
    diffusion = make_diffusion()
    seeds = (0, 1)
    singles = [free_run(name, seed, 4.0) for seed in seeds]  # same x_T draw and generator use as below
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    x_t = torch.cat([torch.randn(1, 4, 8, 8, generator=g) for g in generators])
    cond, uncond = _conditions(batch=2)
    batch = sample(
        tiny_cldm, make_sampler(name, diffusion), x_t, cond, uncond, STEPS, 4.0, 1.0, generator=generators
    )
    expected = torch.cat(singles)
    torch.testing.assert_close(batch, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_fast_samplers_start_at_the_last_timestep() -> None:
    for cls in (DDIMSampler, DPMSolverSampler):
        sampler = cls(make_diffusion(zero_snr=True, parameterization="v"))
        sampler.set_timesteps(10)
        assert sampler.timesteps[0] == 999 and sampler.num_steps == 10
        assert sampler.timesteps == sorted(sampler.timesteps, reverse=True)
        a, s = sampler.alpha_sigma(0)
        assert a < 1e-3 and s == pytest.approx(1.0)
        assert torch.isfinite(sampler.x0_grad_rescale(0))
