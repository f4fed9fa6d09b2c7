"""The evaluation's only contact with the pipeline: build one per configuration, restore one image."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.acceleration import Acceleration
from model.pipeline import DiffBIRPipeline
from model.presets import default_options
from model.quality.configs import FAST_SAMPLER, FAST_STEPS, TILED_BUDGET_BYTES, RunConfig


@dataclass(frozen=True)
class PipelineSpec:
    """What stays the same across configurations: which model, on what, restoring how."""

    preset: str = "full"
    version: str = "v2"
    task: str = "sr"
    device: str | None = None
    weights_dir: Path | None = None
    upscale: float | None = None
    steps: int | None = None
    sampler: str | None = None
    fidelity: float = 0.5
    seed: int = 0
    cfg_scale: float | None = None
    color_fix: str = "wavelet"


@dataclass
class Restored:
    image: np.ndarray
    timings: dict[str, float]
    seed: int
    steps: int
    peak_memory_bytes: int | None


def build(spec: PipelineSpec, config: RunConfig) -> DiffBIRPipeline:
    return DiffBIRPipeline.from_preset(
        preset=spec.preset,
        version=spec.version,
        weights_dir=spec.weights_dir,
        device=spec.device,
        precision=config.precision,
        tasks=[spec.task],
        acceleration=Acceleration(compile=config.compile, cuda_graphs=config.cuda_graphs),
        memory_budget_bytes=TILED_BUDGET_BYTES if config.tiled else None,
    )


def options(spec: PipelineSpec, config: RunConfig, fidelity: float | None = None) -> Any:
    given: dict[str, Any] = {
        "upscale": spec.upscale,
        "steps": FAST_STEPS if config.fast else spec.steps,
        "sampler": FAST_SAMPLER if config.fast else spec.sampler,
        "cfg_scale": spec.cfg_scale,
    }
    return default_options(
        spec.version,
        spec.task,
        fidelity=spec.fidelity if fidelity is None else fidelity,
        seed=spec.seed,
        color_fix=spec.color_fix,
        **{k: v for k, v in given.items() if v is not None},
    )


def restore(
    pipe: DiffBIRPipeline,
    image: np.ndarray,
    spec: PipelineSpec,
    config: RunConfig,
    fidelity: float | None = None,
) -> Restored:
    result = pipe.restore(image, options(spec, config, fidelity))
    return Restored(
        result.image, dict(result.timings), result.seed, result.sampler_steps, result.peak_memory_bytes
    )


def describe(spec: PipelineSpec) -> dict[str, Any]:
    out = dataclasses.asdict(spec)
    out["weights_dir"] = str(spec.weights_dir) if spec.weights_dir else None
    return out
