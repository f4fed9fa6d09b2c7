"""Every sampler by the name the API and CLI use: the single source of the sampler vocabulary.

The names are upstream DiffBIR v2.1's (`inference.py --sampler`); `dpmpp` is ours (diffusers' DPM-Solver++,
kept for the GPU benchmark's fast mode). `hparams` lists the `SamplerParams` a sampler reads; the rest are
accepted and ignored, as upstream does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from model.errors import InvalidInputError
from model.sampling import edm_solvers as edm
from model.sampling.base import Sampler
from model.sampling.ddim import DDIMSampler
from model.sampling.dpm_solver import DPMSolverSampler
from model.sampling.dpmpp import DiffusersDPMSolverSampler
from model.sampling.hparams import SamplerParams
from model.sampling.spaced import SpacedSampler
from model.schedule import Diffusion

SamplerFactory = Callable[[Diffusion, SamplerParams | None], Sampler]


@dataclass(frozen=True)
class SamplerSpec:
    factory: SamplerFactory
    summary: str
    hparams: tuple[str, ...] = ()  # the SamplerParams fields it reads
    upstream: bool = True  # one of upstream inference.py's names, with its numbers


def _edm(cls: type[edm.EDMSampler], summary: str) -> SamplerSpec:
    return SamplerSpec(cls, summary, cls.hparams)


SAMPLERS: dict[str, SamplerSpec] = {
    "spaced": SamplerSpec(SpacedSampler, "ancestral DDPM on respaced steps (upstream SpacedSampler)"),
    "ddim": SamplerSpec(DDIMSampler, "deterministic DDIM, eta 0 (upstream DDIMSampler)"),
    "dpm++_m2": SamplerSpec(DPMSolverSampler, "multistep DPM-Solver++ order 2 (upstream DPMSolverSampler)"),
    "edm_euler": _edm(edm.EulerSolver, "Euler (Karras Alg. 2, churn)"),
    "edm_euler_a": _edm(edm.EulerAncestralSolver, "Euler ancestral"),
    "edm_heun": _edm(edm.HeunSolver, "Heun, 2 model calls per step (Karras Alg. 2, churn)"),
    "edm_dpm_2": _edm(edm.DPM2Solver, "DPM-Solver-2, 2 model calls per step (churn)"),
    "edm_dpm_2_a": _edm(edm.DPM2AncestralSolver, "DPM-Solver-2 ancestral, 2 model calls per step"),
    "edm_lms": _edm(edm.LMSSolver, "linear multistep of `order`"),
    "edm_dpm++_2s_a": _edm(edm.DPMPP2SAncestralSolver, "DPM-Solver++(2S) ancestral, 2 calls per step"),
    "edm_dpm++_sde": _edm(edm.DPMPPSDESolver, "DPM-Solver++ SDE, 2 model calls per step"),
    "edm_dpm++_2m": _edm(edm.DPMPP2MSolver, "DPM-Solver++(2M)"),
    "edm_dpm++_2m_sde": _edm(edm.DPMPP2MSDESolver, "DPM-Solver++(2M) SDE"),
    "edm_dpm++_3m_sde": _edm(edm.DPMPP3MSDESolver, "DPM-Solver++(3M) SDE (v2.1's default)"),
    "dpmpp": SamplerSpec(
        DiffusersDPMSolverSampler,
        "diffusers' DPM-Solver++(2M), trailing spacing (not upstream's; the GPU benchmark's fast mode)",
        upstream=False,
    ),
}

#: The names upstream's inference.py accepts, in its order.
UPSTREAM_SAMPLERS = tuple(name for name, spec in SAMPLERS.items() if spec.upstream)


def make_sampler(name: str, diffusion: Diffusion, params: SamplerParams | None = None) -> Sampler:
    """The sampler `name` on `diffusion`'s schedule, with the EDM hyper-parameters `params` (upstream's
    defaults when None)."""
    try:
        spec = SAMPLERS[name]
    except KeyError:
        raise InvalidInputError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}") from None
    return spec.factory(diffusion, params)
