"""Every sampler in the registry through the pipeline's loop: fidelity (latent image guidance) pulls the
result towards the condition, tiled sampling works, hooks run per step, and seeds make runs reproducible."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from model.cldm import Condition, ControlLDM
from model.errors import CanceledError
from model.fidelity import fidelity_to_guidance
from model.guidance import Guidance
from model.sampling import SAMPLERS, Sampler, Tiling, make_sampler, max_grad_rescale, sample
from model.schedule import make_diffusion
from tests.model.reference import load_fixture

TENSORS, _ = load_fixture("guidance_sampler_runs")
PREFIX = "guided_latent_mse."
TARGET_IMAGE = TENSORS[PREFIX + "guidance_target"]
NAMES = list(SAMPLERS)
STEPS = 3
# Samplers whose result depends on the generator beyond x_T at the default hyper-parameters (the SDE solvers
# draw from the job's generator where upstream uses a Brownian tree).
STOCHASTIC = {
    "spaced",
    "edm_euler_a",
    "edm_dpm_2_a",
    "edm_dpm++_2s_a",
    "edm_dpm++_sde",
    "edm_dpm++_2m_sde",
    "edm_dpm++_3m_sde",
}
Runner = Callable[..., torch.Tensor]


def _conditions(batch: int = 1) -> tuple[Condition, Condition]:
    def condition(kind: str) -> Condition:
        c_txt, c_img = TENSORS[PREFIX + kind + ".c_txt"], TENSORS[PREFIX + kind + ".c_img"]
        return Condition(c_txt.repeat(batch, 1, 1), c_img.repeat(batch, 1, 1, 1))

    return condition("cond"), condition("uncond")


def _sampler(model: ControlLDM, name: str) -> Sampler:
    v = model.parameterization == "v"
    return make_sampler(name, make_diffusion(zero_snr=v, parameterization=model.parameterization))


def _guidance(model: ControlLDM, name: str, fidelity: float, tiling: Tiling | None = None) -> Guidance | None:
    """The pipeline's fidelity -> guidance mapping, normalised by this sampler's own step response."""
    c, h, w = TENSORS[PREFIX + "cond.c_img"].shape[1:]
    if tiling is not None:
        h, w = min(h, tiling.tile), min(w, tiling.tile)
    settings = fidelity_to_guidance(fidelity, (c, h, w), max_grad_rescale(_sampler(model, name), STEPS))
    return None if settings is None else Guidance(model.vae, TARGET_IMAGE, settings.scale)


def _run(
    model: ControlLDM, name: str, seed: int = 0, cfg: float = 1.0, x_seed: int = 0, **kwargs
) -> torch.Tensor:
    x_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(x_seed))
    cond, uncond = _conditions()
    generator = torch.Generator().manual_seed(seed)
    return sample(
        model, _sampler(model, name), x_T, cond, uncond, STEPS, cfg, 1.0, generator=generator, **kwargs
    )


def _distance(model: ControlLDM, z: torch.Tensor) -> float:
    with torch.no_grad():
        target = model.vae.encode(TARGET_IMAGE)
    return (z - target).pow(2).mean().item()


@pytest.fixture(params=["sd", "v2.1"])
def model(request: pytest.FixtureRequest) -> ControlLDM:
    return request.getfixturevalue("tiny_cldm" if request.param == "sd" else "tiny_cldm_v21")


@pytest.mark.parametrize("name", NAMES)
def test_higher_fidelity_ends_closer_to_the_condition(name: str, model: ControlLDM) -> None:
    distances = [
        _distance(model, _run(model, name, guidance=_guidance(model, name, fidelity)))
        for fidelity in (0.0, 0.5, 1.0)
    ]
    assert distances[0] > distances[1] > distances[2], distances
    assert distances[2] < 0.7 * distances[0], distances


@pytest.mark.parametrize("name", NAMES)
def test_tiled_sampling_with_guidance(name: str, tiny_cldm_v21: ControlLDM) -> None:
    model = tiny_cldm_v21
    # one window covering the latent: the tiled path is the untiled one
    whole = Tiling(tile=8, stride=8)
    plain = _run(model, name, guidance=_guidance(model, name, 0.5))
    tiled = _run(model, name, guidance=_guidance(model, name, 0.5, whole), tiling=whole)
    torch.testing.assert_close(tiled, plain, rtol=1e-4, atol=1e-4 * plain.abs().max().item())
    # four overlapping 6x6 windows, each guided towards its own slice of the target
    windows = Tiling(tile=6, stride=2)
    free = _run(model, name, tiling=windows)
    guided = _run(model, name, guidance=_guidance(model, name, 1.0, windows), tiling=windows)
    assert torch.isfinite(guided).all()
    assert _distance(model, guided) < 0.8 * _distance(model, free)


@pytest.mark.parametrize("name", NAMES)
def test_progress_per_step_and_cancel(name: str, tiny_cldm_v21: ControlLDM) -> None:
    calls: list[tuple[str, int, int]] = []
    _run(tiny_cldm_v21, name, progress=lambda *a: calls.append(a))
    sampler = _sampler(tiny_cldm_v21, name)
    sampler.set_timesteps(STEPS)
    n = sampler.num_steps
    assert calls == [("sampler", i + 1, n) for i in range(n)]
    calls.clear()
    with pytest.raises(CanceledError):
        _run(tiny_cldm_v21, name, progress=lambda *a: calls.append(a), should_cancel=lambda: len(calls) >= 1)
    assert calls == [("sampler", 1, n)]


@pytest.mark.parametrize("name", NAMES)
def test_seeded_and_reproducible(name: str, tiny_cldm_v21: ControlLDM) -> None:
    """Same seed, same result; another seed for the in-loop draws (same x_T) changes only stochastic ones."""
    first = _run(tiny_cldm_v21, name, seed=0)
    assert torch.isfinite(first).all()
    assert torch.equal(first, _run(tiny_cldm_v21, name, seed=0))
    other = _run(tiny_cldm_v21, name, seed=1)
    assert torch.equal(first, other) == (name not in STOCHASTIC)


@pytest.mark.parametrize("name", ["spaced", "dpm++_m2", "edm_euler_a", "edm_dpm++_3m_sde"])
def test_batch_with_per_sample_generators_matches_single_runs(name: str, tiny_cldm_v21: ControlLDM) -> None:
    """A micro-batch of two jobs gives each job what it would get alone with its own seed."""
    model = tiny_cldm_v21
    seeds = (0, 1)
    singles = [_run(model, name, seed=s, x_seed=s, cfg=4.0) for s in seeds]
    x_T = torch.cat([torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    cond, uncond = _conditions(batch=2)
    batch = sample(model, _sampler(model, name), x_T, cond, uncond, STEPS, 4.0, 1.0, generator=generators)
    expected = torch.cat(singles)
    torch.testing.assert_close(batch, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
